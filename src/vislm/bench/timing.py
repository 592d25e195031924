"""Timing that survives a shared machine: contenders run interleaved, one call each per
round, so a burst of load from another process slows every contender of that round
instead of skewing one of them; each reports the median of its timed rounds.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict

from vislm.timing import best_of  # noqa: F401  (the bench's timings live here)


def interleaved(contenders: Dict[str, Callable[[], object]], rounds: int,
                warmup: int = 1) -> Dict[str, float]:
    """Median seconds per call of each contender over `rounds` timed rounds (see
    `interleaved_rounds`)."""
    return medians(interleaved_rounds(contenders, rounds, warmup))


def medians(per_round: Dict[str, list]) -> Dict[str, float]:
    """The median of each contender's timed rounds."""
    return {name: statistics.median(values) for name, values in per_round.items()}


def interleaved_rounds(contenders: Dict[str, Callable[[], object]], rounds: int,
                       warmup: int = 1) -> Dict[str, list]:
    """Seconds of each contender's call in each of `rounds` timed rounds, in round order.

    The first `warmup` rounds are not timed (allocator, oneDNN kernel selection, lazy
    optimizer state). The order rotates every round, so nobody always runs right after
    the same neighbour (caches, memory freed by the previous one).
    """
    names = list(contenders)
    times: Dict[str, list] = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            contenders[name]()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def ratio_quartiles(ours: list, theirs: list) -> tuple:
    """First and third quartiles of the per-round speed ratios theirs[i] / ours[i]: how
    far the ratio of one round strays from the median ratio."""
    ratios = [t / o for o, t in zip(ours, theirs)]
    if len(ratios) < 2:
        return ratios[0], ratios[0]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return q1, q3


def median_of(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` calls (after one untimed call)."""
    fn()
    values = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        values.append(time.perf_counter() - start)
    return statistics.median(values)


def fresh_pages_mb(fn: Callable[[], object], calls: int = 2) -> float | None:
    """Megabytes of fresh memory pages (minor page faults x page size) per call of `fn`:
    memory the allocator had returned to the kernel and took back, each page zero-filled
    by the kernel on first touch. None where getrusage is missing."""
    try:
        import resource
    except ImportError:
        return None
    page = resource.getpagesize()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return faults * page / calls / 1e6
