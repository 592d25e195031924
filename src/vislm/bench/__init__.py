"""`vislm bench`: vislm against Hugging Face transformers, side by side in one process.

    from vislm.bench import run_bench
    results = run_bench("runs/bench", quick=False, only=None)   # writes bench.json + report

Modules: models (the contenders and their training step), timing (interleaved medians),
machine (CPU description and GEMM peak), one module per section (train, memory,
generate, retrieval, data, compile), report and notes (bench.json keys, BENCHMARKS.md),
runner (the order of it all), cli (the sub-command).
"""

from vislm.bench.runner import SECTIONS, run_bench

__all__ = ["SECTIONS", "run_bench"]
