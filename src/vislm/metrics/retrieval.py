"""Image-text retrieval metrics under the multi-caption protocol (COCO, Flickr30k).

Each text belongs to exactly one image (`text_image_index[j]` is the image of text j);
an image may have any number of texts, at least one.

* image-to-text (i2t): an image's rank is the rank of the best-ranked of its texts, so
  it counts as found at K if any of its texts is among the top K.
* text-to-image (t2i): a text's rank is the rank of its image.

Recalls are fractions on a 0-1 scale, like every other vislm metric.

Ties are pessimistic: a wrong candidate that scores *equal* to the right one is ranked
ahead of it, so rank = 1 + #(wrong candidates scoring >= the right one). A degenerate
model that gives every pair the same score therefore gets the worst rank, not the best.

The similarity matrix is never handled whole: it is walked in blocks of image rows
(`chunk_rows`), which bounds the temporaries, and `retrieval_metrics_from_embeddings`
computes each block with one matmul so the full matrix never exists. COCO 5k test
(5,000 x 25,000, D=256) takes about 1 s on 2 idle CPU cores, with 100-200 MB of
temporaries (the full fp32 matrix would be 500 MB).
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, Tuple

import torch

from vislm.errors import DataError

RECALL_AT = (1, 5, 10)
# Scores per block of image rows: 4M float32 = 16 MB (plus a 4 MB bool mask). Larger
# blocks were no faster on CPU (measured up to 64 MB) and only cost memory.
_BLOCK_ELEMENTS = 4 * 1024 * 1024

RowBlocks = Callable[[], Iterator[Tuple[int, torch.Tensor]]]


def _check_index(text_image_index: torch.Tensor, n_images: int, n_texts: int) -> torch.Tensor:
    if text_image_index.dim() != 1 or text_image_index.numel() != n_texts:
        raise DataError(f"text_image_index: expected shape [{n_texts}] (one image per "
                        f"text), got {list(text_image_index.shape)}")
    if text_image_index.dtype.is_floating_point or text_image_index.dtype == torch.bool:
        raise DataError(f"text_image_index: expected integer image indices, "
                        f"got {text_image_index.dtype}")
    index = text_image_index.long()
    if n_texts and (index.min() < 0 or index.max() >= n_images):
        raise DataError(f"text_image_index: values must lie in [0, {n_images}), "
                        f"got {index.min().item()}..{index.max().item()}")
    captions_per_image = torch.bincount(index.cpu(), minlength=n_images)
    without = torch.nonzero(captions_per_image == 0).flatten().tolist()
    if without:
        raise DataError(f"text_image_index: image {without[:5]} has no text; every image "
                        "needs at least one for image-to-text retrieval")
    return index


def _rows_per_block(n_texts: int, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        return chunk_rows
    return max(1, _BLOCK_ELEMENTS // max(1, n_texts))


def _ranks(row_blocks: RowBlocks, index: torch.Tensor, n_images: int,
           dtype: torch.dtype, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """1-based i2t ranks [n_images] and t2i ranks [n_texts], in two passes over blocks.

    Pass 1 ranks images and records each text's own score *from the same block values*
    (recomputing it elsewhere, e.g. as a dot product, could differ in the last bit and
    break ties). Pass 2 counts, for each text, the other images scoring >= its own.
    """
    index = index.to(device)
    n_texts = index.numel()
    # Texts grouped by image, so the texts of images [r0, r1) are one slice of `order`.
    order = torch.argsort(index, stable=True)
    starts = torch.zeros(n_images + 1, dtype=torch.long, device=device)
    starts[1:] = torch.cumsum(torch.bincount(index, minlength=n_images), 0)

    i2t = torch.empty(n_images, dtype=torch.long, device=device)
    own_score = torch.empty(n_texts, dtype=dtype, device=device)
    for r0, block in row_blocks():
        r1 = r0 + block.shape[0]
        texts = order[starts[r0]:starts[r1]]
        rows = index[texts] - r0
        scores = block[rows, texts]
        own_score[texts] = scores
        best = torch.full((r1 - r0,), float("-inf"), dtype=dtype, device=device)
        best = best.scatter_reduce(0, rows, scores, reduce="amax")
        at_least_best = (block >= best[:, None]).sum(1)
        # An image's own texts are not competitors: take back those scoring >= best.
        own_at_least = torch.zeros_like(at_least_best).scatter_add_(
            0, rows, (scores >= best[rows]).long())
        i2t[r0:r1] = at_least_best - own_at_least + 1

    t2i = torch.ones(n_texts, dtype=torch.long, device=device)
    for r0, block in row_blocks():
        r1 = r0 + block.shape[0]
        t2i += (block >= own_score[None, :]).sum(0)
        # The text's own image is in this block: it is not a competitor.
        texts = order[starts[r0]:starts[r1]]
        t2i[texts] -= (block[index[texts] - r0, texts] >= own_score[texts]).long()
    return i2t.cpu(), t2i.cpu()


def _summary(i2t: torch.Tensor, t2i: torch.Tensor) -> Dict[str, float]:
    metrics: Dict[str, float] = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in RECALL_AT:
            metrics[f"{name}_R@{k}"] = (ranks <= k).double().mean().item()
    recalls = [metrics[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in RECALL_AT]
    metrics["rsum"] = sum(recalls)
    metrics["mean_R"] = metrics["rsum"] / len(recalls)
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        # numpy's median: the mean of the two middle ranks when their count is even.
        metrics[f"{name}_median_rank"] = torch.quantile(ranks.double(), 0.5).item()
        metrics[f"{name}_mean_rank"] = ranks.double().mean().item()
    return metrics


def retrieval_metrics(similarity: torch.Tensor, text_image_index: torch.Tensor,
                      chunk_rows: int | None = None) -> Dict[str, float]:
    """Recall@{1,5,10} as fractions (both directions), their sum "rsum" and mean "mean_R",
    and 1-based median and mean ranks, from a [n_images, n_texts] similarity matrix."""
    if similarity.dim() != 2:
        raise DataError(f"similarity: expected [n_images, n_texts], got {list(similarity.shape)}")
    n_images, n_texts = similarity.shape
    index = _check_index(text_image_index, n_images, n_texts)
    if torch.isnan(similarity).any():
        raise DataError("similarity: contains NaN")
    if not similarity.is_floating_point():
        similarity = similarity.float()
    rows = _rows_per_block(n_texts, chunk_rows)

    def row_blocks() -> Iterator[Tuple[int, torch.Tensor]]:
        for r0 in range(0, n_images, rows):
            yield r0, similarity[r0:r0 + rows]

    return _summary(*_ranks(row_blocks, index, n_images, similarity.dtype, similarity.device))


def retrieval_metrics_from_embeddings(image_emb: torch.Tensor, text_emb: torch.Tensor,
                                      text_image_index: torch.Tensor, normalize: bool = True,
                                      chunk_rows: int | None = None) -> Dict[str, float]:
    """`retrieval_metrics` on image_emb @ text_emb.T, computed block by block.

    With `normalize` (the default) embeddings are L2-normalised first, i.e. cosine
    similarity, as CLIP-style models are evaluated; with False, raw dot products.
    """
    if image_emb.dim() != 2 or text_emb.dim() != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise DataError(f"embeddings: expected image [N, D] and text [M, D], got "
                        f"{list(image_emb.shape)} and {list(text_emb.shape)}")
    for name, emb in (("image_emb", image_emb), ("text_emb", text_emb)):
        if not torch.isfinite(emb).all():
            raise DataError(f"{name}: contains NaN or infinite values")
    n_images, n_texts = image_emb.shape[0], text_emb.shape[0]
    index = _check_index(text_image_index, n_images, n_texts)
    # Half precision is slow and lossy for matmuls on CPU; score in float32 at least.
    dtype = torch.promote_types(torch.promote_types(image_emb.dtype, text_emb.dtype),
                                torch.float32)
    image_emb, text_emb = image_emb.to(dtype), text_emb.to(dtype)
    if normalize:
        image_emb = torch.nn.functional.normalize(image_emb, dim=1)
        text_emb = torch.nn.functional.normalize(text_emb, dim=1)
    text_t = text_emb.t().contiguous()
    rows = _rows_per_block(n_texts, chunk_rows)

    def row_blocks() -> Iterator[Tuple[int, torch.Tensor]]:
        # Both passes build identical blocks, so a text's own score is bit-identical.
        for r0 in range(0, n_images, rows):
            yield r0, image_emb[r0:r0 + rows] @ text_t

    with torch.no_grad():
        return _summary(*_ranks(row_blocks, index, n_images, dtype, image_emb.device))
