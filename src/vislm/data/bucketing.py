"""Length bucketing: micro-batches of similar caption lengths.

The collators pad each batch to its longest caption, so a batch mixing a 6-token and a
30-token caption spends most of its text compute on padding. Here an epoch's random
order is cut into pools of `pool_steps` optimizer steps; each pool is sorted by length and
cut into steps, and the steps are shuffled, so every step holds neighbours in length
while the epoch as a whole stays random. The padding saved is pure waste: padded
positions are masked out of attention and of every loss, so the model computes the same
thing for each example either way (tests/test_bucketing.py checks both properties).

Like `vislm.train.trainer.epoch_batches`, the result is a pure function of the lengths,
the seed and the sizes (exact resume), each process takes its slice of every global
micro-batch, and the tail that does not fill a whole step is dropped.
"""

from __future__ import annotations

from typing import List, Sequence

import torch

# Sorting within pools of 50 steps: wide enough to find similar lengths, narrow enough
# that one step does not always hold the epoch's shortest captions.
POOL_STEPS = 50


def bucketed_batches(lengths: Sequence[int], batch_size: int, accum: int, seed: int,
                     process_index: int = 0, num_processes: int = 1,
                     pool_steps: int = POOL_STEPS) -> List[List[int]]:
    """This process's micro-batches (lists of example indices) for one epoch, grouped by
    length. `seed` fixes the epoch's order (the trainer passes its per-epoch seed)."""
    generator = torch.Generator().manual_seed(seed)
    global_batch = batch_size * num_processes
    per_step = global_batch * accum
    steps = len(lengths) // per_step
    order = torch.randperm(len(lengths), generator=generator).tolist()[:steps * per_step]
    pool = per_step * pool_steps
    grouped: List[int] = []
    for start in range(0, len(order), pool):
        # Stable: equal lengths keep their random order.
        grouped += sorted(order[start:start + pool], key=lambda i: lengths[i])
    step_order = torch.randperm(steps, generator=generator).tolist()
    start_in_batch = process_index * batch_size
    batches = []
    for step in step_order:
        for micro in range(accum):
            first = step * per_step + micro * global_batch + start_in_batch
            batches.append(grouped[first:first + batch_size])
    return batches


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Fraction of the padded token slots that are padding, when each batch is padded to
    its longest example."""
    slots = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches if batch)
    real = sum(lengths[i] for batch in batches for i in batch)
    return 1.0 - real / slots if slots else 0.0
