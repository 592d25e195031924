"""Batched greedy decoding, generic over a step function.

A model plugs in by providing

    model_step(input_ids (B, t), past, use_cache) -> (logits (B, t, V), new_past)

With use_cache=True decoding feeds the prompt once and then one token per step,
reusing `past`; with use_cache=False it recomputes the whole prefix every step (slow,
but a reference the cached path must match token for token).
"""

from __future__ import annotations

from typing import Callable

import torch

StepFn = Callable[[torch.Tensor, object, bool], tuple]


@torch.no_grad()
def greedy_decode(model_step: StepFn, prompt_ids: torch.Tensor, max_new_tokens: int,
                  eos_id: int, pad_id: int, use_cache: bool = True,
                  return_logits: bool = False):
    """Greedily extend `prompt_ids` (B, P), all prompts of equal length.

    Returns the generated ids (B, S) with S <= max_new_tokens, prompt excluded. A
    sequence stops at its first EOS (which is kept); positions after it hold pad_id.
    Decoding ends early once every sequence has stopped. With return_logits, also
    returns the logits each step chose from, (B, S, V).
    """
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
        next_ids = logits.argmax(dim=-1)
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
