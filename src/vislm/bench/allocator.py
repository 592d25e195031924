"""Training throughput with glibc's allocator keeping freed memory, for both libraries.

By default glibc gives large freed blocks back to the kernel: every block over its mmap
threshold (which adapts up to 32 MB) and the top of its heap beyond its trim threshold.
The next allocation of that size then starts on fresh pages, which the kernel zero-fills
on first touch. A training step allocates and frees the same large tensors every step,
so it pays those page faults every step (the train section reports them as fresh MB per
step). vislm's trainer raises both thresholds (`vislm.train.allocator.keep_freed_memory`,
`train.allocator: keep`); the setting is process-wide, so this section reruns the training
pairs in a subprocess that applies it first, for vislm and the peer alike: the ratio still
compares the models, and each side's gain over the default allocator shows what the
setting is worth. Skipped where the C library is not glibc.

    python -m vislm.bench.allocator '{"sizes": {...}, "rounds": 5, "warmup": 2, ...}'
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from typing import Dict

from vislm.bench.models import PAIRS, Sizes

PRECISIONS = ("fp32", "bf16")


def _child(spec: dict) -> dict:
    import torch

    from vislm.bench import train
    from vislm.train.allocator import keep_freed_memory, reason_not_applied

    if keep_freed_memory() is None:
        raise RuntimeError(f"the allocator setting was not applied: {reason_not_applied()}")

    torch.set_num_threads(spec["threads"])
    sizes = Sizes(**spec["sizes"])
    return {f"{pair}_{precision}": train.run_pair(pair, precision, sizes, spec["rounds"],
                                                  spec["warmup"], spec["peaks"])
            for precision in PRECISIONS for pair in PAIRS}


def run(sizes: Sizes, rounds: int, warmup: int, peaks: Dict[str, float], threads: int,
        log=print) -> dict:
    from vislm.train.allocator import reason_not_applied

    reason = reason_not_applied()
    if reason is not None:
        log(f"allocator: skipped ({reason})")
        return {"skipped": reason}
    spec = {"sizes": asdict(sizes), "rounds": rounds, "warmup": warmup, "peaks": peaks,
            "threads": threads}
    done = subprocess.run([sys.executable, "-m", "vislm.bench.allocator", json.dumps(spec)],
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        error = (done.stderr.strip().splitlines() or ["failed"])[-1]
        log(f"allocator: failed: {error}")
        return {"error": error}
    pairs = json.loads(done.stdout.strip().splitlines()[-1])
    for key, r in pairs.items():
        log(f"allocator {key}: vislm {r['vislm_samples_per_s']:.1f}/s, peer "
            f"{r['peer_samples_per_s']:.1f}/s, ratio {r['ratio']:.2f}, fresh MB/step "
            f"{r['vislm_fresh_mb_per_step']:.0f} / {r['peer_fresh_mb_per_step']:.0f}")
    return {"setting": "vislm.train.allocator.keep_freed_memory()", "pairs": pairs}


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
