"""Retrieval re-ranked by an image-text matching (ITM) head, as ALBEF evaluates retrieval.

ITC ranks every candidate with one dot product, but it compares an image and a text only
through two vectors made apart. The fusion encoder + ITM head reads the two together and
judges the pair better, at the cost of a forward pass per pair. So: ITC picks each query's
top-k candidates (for each text its k images, for each image its k texts), ITM reorders
those k, and everything below the top k keeps its ITC order.

Ranks follow vislm.metrics.retrieval: 1-based, ties pessimistic, an image found as soon
as any of its texts is. With k=1 nothing can move, so the metrics are ITC's; with an ITM
that always prefers the true pair, R@1 becomes ITC's R@k.

    metrics = rerank_metrics(image_emb, text_emb, owners, itm_pair_scorer(model, features), k=16)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from vislm.data.datasets import ImageSet
from vislm.errors import ConfigError
from vislm.metrics.retrieval import RECALL_AT, retrieval_metrics_from_embeddings
from vislm.tasks.base import model_device, stack_images

# (image_index, text_index) -> one score per pair, higher = more likely a match.
PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# recalls()'s keys, unprefixed.
RECALL_KEYS = tuple(f"{d}_R@{k}" for d in ("i2t", "t2i") for k in RECALL_AT) + ("rsum",)

# Similarities per block of queries: 4M floats, as in vislm.metrics.retrieval.
_BLOCK_ELEMENTS = 4 * 1024 * 1024


def has_itm_head(model: torch.nn.Module) -> bool:
    """Whether `model` scores pairs like ALBEFPretrain: a fusion encoder and an ITM head."""
    return hasattr(model, "itm_head") and hasattr(model, "fusion") and hasattr(model, "text")


@dataclass
class PairFeatures:
    """What the fusion encoder reads for any pair: every image's tokens and every text's
    hidden states (one padded width for the whole split, so any rows can be stacked)."""

    image_tokens: torch.Tensor  # (n_images, N, Dv)
    text_hidden: torch.Tensor  # (n_texts, T, D)
    text_mask: torch.Tensor  # (n_texts, T)


@torch.no_grad()
def pair_features(task, model: torch.nn.Module, split: str) -> PairFeatures:
    """The towers' outputs over `split`, in the order of task.embed (images, then texts)."""
    device = model_device(model)
    records = task.splits[split].captions
    tokens = [model.vision(b["pixel_values"].to(device))
              for b in task.batches(ImageSet(records, task.transform, task.cache), stack_images)]
    texts, _ = task.captions(split)
    ids, mask = task.tokenizer(texts, task.cfg.data.max_text_len)
    size = task.cfg.eval.batch_size
    hidden = [model.text.encode(ids[s:s + size].to(device), mask[s:s + size].to(device))
              for s in range(0, len(texts), size)]
    return PairFeatures(torch.cat(tokens), torch.cat(hidden), mask.to(device))


def itm_pair_scorer(model: torch.nn.Module, features: PairFeatures, batch_size: int = 128) -> PairScorer:
    """Match logit minus no-match logit of the ITM head, as ALBEFPretrain.forward scores
    pairs in training (the difference ranks like softmax's match probability, without
    saturating to ties at 1.0)."""
    if not has_itm_head(model):
        raise ConfigError(f"eval.rerank_k: {type(model).__name__} has no ITM head to re-rank with")

    @torch.no_grad()
    def score(image_index: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
        device = features.image_tokens.device
        out = []
        for s in range(0, image_index.numel(), batch_size):
            i = image_index[s:s + batch_size].to(device)
            t = text_index[s:s + batch_size].to(device)
            fused = model.fusion(features.text_hidden[t], features.text_mask[t], features.image_tokens[i])
            logits = model.itm_head(fused[:, 0]).float()
            out.append((logits[:, 1] - logits[:, 0]).cpu())
        return torch.cat(out) if out else torch.empty(0)

    return score


@dataclass
class _Candidates:
    """One direction's ITC results: per query, its top-k candidates, which of them match,
    and the ITC rank of its best match."""

    top: torch.Tensor  # (n_queries, k) candidate indices
    top_match: torch.Tensor  # (n_queries, k) bool
    itc_rank: torch.Tensor  # (n_queries,)


def _candidates(queries: torch.Tensor, candidates: torch.Tensor,
                matches: Callable[[int, int], torch.Tensor], k: int) -> _Candidates:
    """`matches(q0, q1)` is the (q1 - q0, n_candidates) bool matrix of true pairs."""
    k = min(k, candidates.shape[0])
    rows = max(1, _BLOCK_ELEMENTS // max(1, candidates.shape[0]))
    cand_t = candidates.t().contiguous()
    tops, top_matches, ranks = [], [], []
    for q0 in range(0, queries.shape[0], rows):
        q1 = min(q0 + rows, queries.shape[0])
        scores = queries[q0:q1] @ cand_t
        match = matches(q0, q1)
        best = scores.masked_fill(~match, float("-inf")).amax(dim=1)
        ranks.append(1 + ((scores >= best[:, None]) & ~match).sum(dim=1))
        # Ties pessimistic here too: a true pair tied with a wrong one sorts below it, so
        # a tie at the k-th place leaves the true pair out, and k=1 stays exactly ITC.
        top = torch.where(match, torch.nextafter(scores, scores.new_tensor(float("-inf"))),
                          scores).topk(k, dim=1).indices
        tops.append(top)
        top_matches.append(match.gather(1, top))
    return _Candidates(torch.cat(tops), torch.cat(top_matches), torch.cat(ranks))


def _reranked(c: _Candidates, itm: torch.Tensor) -> torch.Tensor:
    """Ranks after ITM reorders each query's top k. A query with no match among its k
    keeps its ITC rank, which is then > k (all k score at least as high as its match)."""
    best = itm.masked_fill(~c.top_match, float("-inf")).amax(dim=1)
    inside = 1 + ((itm >= best[:, None]) & ~c.top_match).sum(dim=1)
    return torch.where(c.top_match.any(dim=1), inside, c.itc_rank)


def reranked_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor, owners: torch.Tensor,
                   score_pairs: PairScorer, k: int) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """(i2t ranks [n_images], t2i ranks [n_texts], pairs scored) with ITM over ITC's top k.

    Embeddings are L2-normalised (cosine similarity), as RetrievalTask scores ITC.
    """
    if k < 1:
        raise ConfigError(f"eval.rerank_k: must be >= 1 to re-rank, got {k}")
    image_emb = F.normalize(image_emb.float(), dim=1)
    text_emb = F.normalize(text_emb.float(), dim=1)
    owners = owners.long().to(image_emb.device)
    image_ids = torch.arange(image_emb.shape[0], device=image_emb.device)
    i2t = _candidates(image_emb, text_emb, lambda a, b: image_ids[a:b, None] == owners[None, :], k)
    t2i = _candidates(text_emb, image_emb, lambda a, b: owners[a:b, None] == image_ids[None, :], k)

    # A pair often appears in both directions (image i's top texts, text j's top images):
    # score each distinct pair once.
    n_texts = text_emb.shape[0]
    i2t_keys = image_ids[:, None] * n_texts + i2t.top
    t2i_keys = t2i.top * n_texts + torch.arange(n_texts, device=image_emb.device)[:, None]
    keys = torch.cat([i2t_keys.flatten(), t2i_keys.flatten()])
    unique, inverse = torch.unique(keys, return_inverse=True)
    scores = score_pairs(unique // n_texts, unique % n_texts).float().to(keys.device)[inverse]
    i2t_itm = scores[:i2t_keys.numel()].view_as(i2t_keys)
    t2i_itm = scores[i2t_keys.numel():].view_as(t2i_keys)
    return _reranked(i2t, i2t_itm).cpu(), _reranked(t2i, t2i_itm).cpu(), unique.numel()


def recalls(i2t: torch.Tensor, t2i: torch.Tensor, prefix: str = "") -> Dict[str, float]:
    """R@1/5/10 both ways (fractions) and their sum, keys as retrieval_metrics names them."""
    metrics = {f"{prefix}{name}_R@{k}": (ranks <= k).double().mean().item()
               for name, ranks in (("i2t", i2t), ("t2i", t2i)) for k in RECALL_AT}
    metrics[f"{prefix}rsum"] = sum(metrics.values())
    return metrics


def rerank_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, owners: torch.Tensor,
                   score_pairs: PairScorer, k: int, prefix: str = "itm_") -> Dict[str, float]:
    """recalls() after re-ranking, keys prefixed (itm_i2t_R@1, ...), and the pairs scored."""
    i2t, t2i, pairs = reranked_ranks(image_emb, text_emb, owners, score_pairs, k)
    return {**recalls(i2t, t2i, prefix), f"{prefix}pairs": float(pairs)}


def rerank_split(task, model: torch.nn.Module, split: str, image_emb: torch.Tensor,
                 text_emb: torch.Tensor, owners: torch.Tensor, k: int) -> Dict[str, float]:
    """RetrievalTask's re-ranked metrics; itm_seconds includes the towers' second pass."""
    start = time.perf_counter()
    scorer = itm_pair_scorer(model, pair_features(task, model, split), task.cfg.eval.batch_size)
    metrics = rerank_metrics(image_emb, text_emb, owners, scorer, k)
    metrics["itm_seconds"] = time.perf_counter() - start
    return metrics


def rerank_tradeoff(task, model: torch.nn.Module, split: str,
                    ks: Sequence[int] = (0, 4, 16, 64)) -> List[Dict[str, float]]:
    """Accuracy against time for each k (0 = ITC alone), for a report.

    One row per k: {"k", "i2t_R@1", ..., "rsum", "seconds"}, where seconds is the whole
    time to that ranking: ITC, plus (k > 0) the towers' features and the ITM passes.
    """
    model.eval()
    start = time.perf_counter()
    image_emb, text_emb, owners = task.embed(model, split)
    itc = retrieval_metrics_from_embeddings(image_emb, text_emb, owners)
    itc_seconds = time.perf_counter() - start
    rows: List[Dict[str, float]] = []
    scorer, feature_seconds = None, 0.0
    for k in ks:
        if k == 0:
            rows.append({"k": 0, **{key: itc[key] for key in RECALL_KEYS}, "pairs": 0.0,
                         "seconds": itc_seconds})
            continue
        if scorer is None:
            start = time.perf_counter()
            scorer = itm_pair_scorer(model, pair_features(task, model, split), task.cfg.eval.batch_size)
            feature_seconds = time.perf_counter() - start
        start = time.perf_counter()
        metrics = rerank_metrics(image_emb, text_emb, owners, scorer, k, prefix="")
        seconds = itc_seconds + feature_seconds + time.perf_counter() - start
        rows.append({"k": k, **metrics, "seconds": seconds})
    return rows
