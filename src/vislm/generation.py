"""Batched decoding (greedy, beam search, sampling), generic over a step function.

A model plugs in by providing

    model_step(input_ids (B, t), past, use_cache) -> (logits (B, t, V), new_past)

With use_cache=True decoding feeds the prompt once and then one token per step,
reusing `past`; with use_cache=False it recomputes the whole prefix every step (slow,
but a reference the cached path must match token for token).

Every strategy returns the same format: generated ids (B, S), S <= max_new_tokens, the
prompt excluded, each sequence cut after its first EOS (which is kept) and padded with
pad_id. `decode(model_step, prompt_ids, strategy, **options)` is the one front door.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

StepFn = Callable[[torch.Tensor, object, bool], tuple]


def _extend(model_step: StepFn, prompt_ids: torch.Tensor, max_new_tokens: int, eos_id: int,
            pad_id: int, use_cache: bool, choose: Callable, return_logits: bool = False):
    """The loop greedy decoding and sampling share: one token per row per step, picked
    by `choose(last_logits (B, V)) -> (B,)`."""
    B = prompt_ids.size(0)
    finished = torch.zeros(B, dtype=torch.bool, device=prompt_ids.device)
    sequence, past, new_ids = prompt_ids, None, prompt_ids
    generated, step_logits = [], []
    for _ in range(max_new_tokens):
        if use_cache:
            logits, past = model_step(new_ids, past, True)
        else:
            logits, _ = model_step(sequence, None, False)
        logits = logits[:, -1]
        next_ids = choose(logits)
        # Finished sequences keep running (batched), but their output is padding.
        next_ids = next_ids.masked_fill(finished, pad_id)
        finished = finished | (next_ids == eos_id)
        generated.append(next_ids)
        if return_logits:
            step_logits.append(logits)
        if finished.all():
            break
        new_ids = next_ids[:, None]
        if not use_cache:
            sequence = torch.cat([sequence, new_ids], dim=1)
    empty = prompt_ids.new_empty(B, 0)
    ids = torch.stack(generated, dim=1) if generated else empty
    if return_logits:
        return ids, (torch.stack(step_logits, dim=1) if step_logits else None)
    return ids


@torch.no_grad()
def greedy_decode(model_step: StepFn, prompt_ids: torch.Tensor, max_new_tokens: int,
                  eos_id: int, pad_id: int, use_cache: bool = True,
                  return_logits: bool = False, choose: Optional[Callable] = None):
    """Greedily extend `prompt_ids` (B, P), all prompts of equal length.

    Returns the generated ids (B, S) with S <= max_new_tokens, prompt excluded. A
    sequence stops at its first EOS (which is kept); positions after it hold pad_id.
    Decoding ends early once every sequence has stopped. With return_logits, also
    returns the logits each step chose from, (B, S, V).

    `choose(last output (B, ...)) -> (B,)` replaces the argmax over logits: a model whose
    step returns hidden states instead passes its own exact argmax of the LM head
    (vislm.models.argmax_head).
    """
    if choose is not None and return_logits:
        raise ValueError("return_logits needs a step that returns logits, not a custom choose")
    return _extend(model_step, prompt_ids, max_new_tokens, eos_id, pad_id, use_cache,
                   choose or (lambda logits: logits.argmax(dim=-1)), return_logits)


# -----------------------------------------------------------------------------
# Sampling

def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf the logits (..., V) that top-k and then nucleus (top-p) filtering drop.

    top_k keeps the k largest (ties with the k-th are kept too); top_p keeps the smallest
    set of most likely tokens whose probability adds up to at least p (Holtzman et al.
    2020). top_k=0 and top_p=1.0 switch them off.
    """
    if top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got {top_k} and {top_p}")
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token once the tokens ranked above it already reach p: what survives is
        # the smallest prefix of the ranking with mass >= p, and never empty.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def sample_decode(model_step: StepFn, prompt_ids: torch.Tensor, max_new_tokens: int,
                  eos_id: int, pad_id: int, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, generator: Optional[torch.Generator] = None,
                  use_cache: bool = True):
    """Sample each next token from softmax(logits / temperature), after top-k and top-p
    filtering. Output format as greedy_decode. Pass a torch.Generator (on the logits'
    device) to make the samples reproducible; every row draws at every step, finished
    ones included, so the draws depend only on the seed and the batch shape."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use greedy decoding "
                         f"for the temperature -> 0 limit")

    def choose(logits):
        # float32 at least: low-precision softmax would distort small probabilities.
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
        probs = filter_logits(logits, top_k, top_p).softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return _extend(model_step, prompt_ids, max_new_tokens, eos_id, pad_id, use_cache, choose)


# -----------------------------------------------------------------------------
# Beam search

def reorder_cache(past, beam_idx: torch.Tensor):
    """The cache rows in the order of `beam_idx`: index_select on dim 0 of every tensor
    in a nested tuple/list (None and other leaves pass through). Generic, so it also
    copies per-image entries (cross-attention keys/values) that a model knowing its
    cache layout could leave alone; see beam_search's reorder_past argument."""
    if isinstance(past, torch.Tensor):
        return past.index_select(0, beam_idx)
    if isinstance(past, (tuple, list)):
        return type(past)(reorder_cache(p, beam_idx) for p in past)
    return past


def _banned_by_ngrams(sequence: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """(R, V) bool: tokens that would complete an n-gram already present in each row."""
    R, T = sequence.shape
    if T < n:
        return torch.zeros(R, vocab_size, dtype=torch.bool, device=sequence.device)
    grams = sequence.unfold(1, n, 1)                       # (R, T-n+1, n), every n-gram
    prefix = sequence[:, T - n + 1:]                       # the last n-1 tokens
    match = (grams[..., :-1] == prefix[:, None]).all(-1)   # n-grams that start like it
    # scatter_add, not scatter: the same token may be both banned and not by different
    # n-grams, and scatter would keep an arbitrary one of the duplicates.
    hits = torch.zeros(R, vocab_size, device=sequence.device)
    hits.scatter_add_(1, grams[..., -1], match.float())
    return hits > 0


def _add_hypothesis(hyps: list, score: float, tokens: torch.Tensor, keep: int):
    """Insert into a best-first list of (score, tokens) and keep the best `keep`."""
    hyps.append((score, tokens))
    hyps.sort(key=lambda h: -h[0])  # stable: the earlier of equal scores stays ahead
    del hyps[keep:]


@torch.no_grad()
def beam_search(model_step: StepFn, prompt_ids: torch.Tensor, max_new_tokens: int,
                eos_id: int, pad_id: int, num_beams: int, length_penalty: float = 1.0,
                no_repeat_ngram_size: int = 0, use_cache: bool = True,
                reorder_past: Optional[Callable] = None, return_scores: bool = False):
    """Beam search over B prompts (B, P) x num_beams beams, one forward per step for all.

    model_step sees B * num_beams rows, row b * num_beams + j being beam j of prompt b:
    a step function that closes over per-prompt inputs (image tokens) must repeat them
    with repeat_interleave(num_beams, dim=0). After each step the cache is reordered by
    beam origin with `reorder_past(past, beam_idx)` (default reorder_cache: index_select
    every tensor in it, cross-attention keys/values included).

    Each step every beam proposes every token; of the 2 * num_beams best candidates per
    prompt, EOS-ending ones ranked within the top num_beams become finished hypotheses
    and the best num_beams others live on (2K candidates always hold K that do not end
    in EOS, since each beam has one EOS). A hypothesis scores

        sum of token log-probs / length ** length_penalty

    with length = generated tokens, EOS included, prompt excluded (the Hugging Face
    convention): length_penalty > 0 favours longer captions, < 0 shorter ones,
    0 ranks by plain log-probability. no_repeat_ngram_size=n > 0 bans any token that
    would repeat an n-gram of the beam, prompt included.

    Stopping is exact, not a heuristic: a prompt is done once it has num_beams finished
    hypotheses and no live beam can still beat the worst of them. Log-probs only add
    negative terms, so a live beam with sum s < 0 can at best score s / L ** length_penalty
    with L the longest length left (length_penalty > 0) or the shortest (otherwise).
    Hence with one beam and length_penalty <= 0 this is greedy decoding, but with
    length_penalty > 0 even one beam may search on past a greedy EOS. Beams still live
    at max_new_tokens are scored as they are, without EOS.

    Returns the best hypothesis per prompt in greedy_decode's format (B, S), and with
    return_scores also its score (B,) (-inf for a prompt left without any hypothesis,
    which only a no_repeat_ngram_size that bans every token can cause).
    """
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    B, P = prompt_ids.shape
    if max_new_tokens <= 0:
        ids = prompt_ids.new_empty(B, 0)
        return (ids, torch.zeros(B, device=prompt_ids.device)) if return_scores else ids
    reorder = reorder_past if reorder_past is not None else reorder_cache
    K, device = num_beams, prompt_ids.device
    hyps = [[] for _ in range(B)]   # per prompt: finished (score, tokens), best first
    done = [False] * B
    sequence = prompt_ids.repeat_interleave(K, dim=0)  # (B*K, P + t), prompt + generated
    # Only beam 0 starts alive: K copies of the prompt would fill the beam with duplicates.
    beam_scores = torch.full((B, K), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0
    offsets = torch.arange(B, device=device)[:, None] * K
    past, new_ids = None, sequence
    for step in range(max_new_tokens):
        if use_cache:
            logits, past = model_step(new_ids, past, True)
        else:
            logits, _ = model_step(sequence, None, False)
        logits = logits[:, -1]
        # Sums of log-probs over many steps: at least float32, float64 models keep theirs.
        logprobs = torch.log_softmax(
            logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        V = logprobs.size(-1)
        if no_repeat_ngram_size > 0:
            banned = _banned_by_ngrams(sequence, no_repeat_ngram_size, V)
            logprobs = logprobs.masked_fill(banned, float("-inf"))
        beam_scores = beam_scores.to(logprobs.dtype)
        candidates = (beam_scores.view(B * K, 1) + logprobs).view(B, K * V)
        top_scores, top_idx = candidates.topk(min(2 * K, K * V), dim=1)  # best first
        origin, token = top_idx // V, top_idx % V
        is_eos = token == eos_id
        length = step + 1  # tokens each candidate has generated, its last one included

        # Finished hypotheses: few per step, so a Python loop over them is cheap.
        ends = is_eos[:, :K] & top_scores[:, :K].isfinite()
        for b, r in ends.nonzero().tolist():
            if not done[b]:
                row = b * K + int(origin[b, r])
                tokens = torch.cat([sequence[row, P:], token[b, r:r + 1]])
                _add_hypothesis(hyps[b], top_scores[b, r].item() / length ** length_penalty,
                                tokens, K)

        # Live beams: the best K candidates not ending in EOS (a stable sort moves the
        # EOS ones behind without changing the order of the rest).
        keep = is_eos.long().argsort(dim=1, stable=True)[:, :K]
        beam_scores = top_scores.gather(1, keep).masked_fill(is_eos.gather(1, keep),
                                                             float("-inf"))
        beam_idx = (offsets + origin.gather(1, keep)).view(-1)
        new_ids = token.gather(1, keep).view(B * K, 1)
        sequence = torch.cat([sequence.index_select(0, beam_idx), new_ids], dim=1)
        if use_cache:
            past = reorder(past, beam_idx)

        if step + 1 == max_new_tokens:
            break
        # Exact early stopping; the best a live beam can still finish at (see docstring).
        best_live = beam_scores.max(dim=1).values.tolist()
        final_len = max_new_tokens if length_penalty > 0 else length + 1
        for b in range(B):
            if not done[b] and len(hyps[b]) == K:
                bound = best_live[b] / final_len ** length_penalty
                done[b] = hyps[b][-1][0] >= bound  # also when no beam is alive (-inf)
        if all(done):
            break

    # Prompts still searching at max_new_tokens: their live beams compete as they are.
    for b in range(B):
        if not done[b]:
            for j in range(K):
                score = beam_scores[b, j].item()
                if score > float("-inf"):
                    _add_hypothesis(hyps[b], score / (sequence.size(1) - P) ** length_penalty,
                                    sequence[b * K + j, P:], K)

    best = [h[0] if h else (float("-inf"), prompt_ids.new_empty(0)) for h in hyps]
    S = max((len(tokens) for _, tokens in best), default=0)
    ids = prompt_ids.new_full((B, S), pad_id)
    for b, (_, tokens) in enumerate(best):
        ids[b, :len(tokens)] = tokens
    if return_scores:
        return ids, torch.tensor([score for score, _ in best], device=device)
    return ids


# -----------------------------------------------------------------------------
# The front door

STRATEGIES = {"greedy": greedy_decode, "beam": beam_search, "sample": sample_decode}


def decode(model_step: StepFn, prompt_ids: torch.Tensor, strategy: str = "greedy", **options):
    """Decode with `strategy` ("greedy" | "beam" | "sample"); options are that function's
    keyword arguments (max_new_tokens, eos_id, pad_id, ...)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown decoding strategy '{strategy}'; "
                         f"choose from {sorted(STRATEGIES)}")
    return STRATEGIES[strategy](model_step, prompt_ids, **options)


def plan_decoding(max_new_tokens: int, eos_id: int, pad_id: int, use_cache: bool = True,
                  return_logits: bool = False, num_beams: int = 1, length_penalty: float = 1.0,
                  no_repeat_ngram_size: int = 0, do_sample: bool = False, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0,
                  generator: Optional[torch.Generator] = None) -> tuple[str, dict]:
    """The strategy and `decode` options that a model's `generate` arguments ask for:
    sampling with do_sample, beam search with num_beams > 1 or an n-gram ban, else greedy."""
    if do_sample and (num_beams > 1 or no_repeat_ngram_size > 0):
        raise ValueError("do_sample cannot be combined with num_beams > 1 or "
                         "no_repeat_ngram_size: beam sampling is not implemented")
    options = dict(max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id, use_cache=use_cache)
    if do_sample:
        strategy = "sample"
        options.update(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    elif num_beams > 1 or no_repeat_ngram_size > 0:
        strategy = "beam"
        options.update(num_beams=num_beams, length_penalty=length_penalty,
                       no_repeat_ngram_size=no_repeat_ngram_size)
    else:
        strategy = "greedy"
        options.update(return_logits=return_logits)
    if return_logits and strategy != "greedy":
        raise ValueError(f"return_logits is only supported by greedy decoding, not {strategy}")
    return strategy, options
