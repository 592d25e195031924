"""Wall-clock helpers shared by the benchmark (vislm.bench) and by choices of kernel made
at run time (vislm.models.onednn_linear)."""

from __future__ import annotations

import time
from typing import Callable


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` calls, in seconds: for a kernel's peak, the least disturbed run."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
