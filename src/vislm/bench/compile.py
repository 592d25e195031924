"""Does torch.compile pay on this machine? The dual encoder's bf16 training step, eager
against compiled (Inductor, default mode), from the same weights.

It pays when the compile time is won back by faster steps within a run: break-even =
compile seconds / (eager - compiled seconds per step). Not used by the trainer unless
this says it pays (see BENCHMARKS.md); recompiles on every new caption length would add
to the cost, which this measurement leaves out (fixed shapes).
"""

from __future__ import annotations

import time

import torch

from vislm.bench import models as M
from vislm.bench.timing import interleaved
from vislm.train.precision import attention_for_precision


def run(sizes: M.Sizes, rounds: int, precision: str = "bf16", log=print) -> dict:
    torch.manual_seed(0)
    eager = M.vislm_model("dual", sizes)
    compiled = M.vislm_model("dual", sizes)
    compiled.load_state_dict(eager.state_dict())
    data = M.batch(sizes)
    with attention_for_precision(eager, precision), attention_for_precision(compiled, precision):
        eager_step = M.train_step("vislm", "dual", eager, data, precision)
        compiled_step = M.train_step("vislm", "dual", torch.compile(compiled), data, precision)
        start = time.perf_counter()
        compiled_step()  # compiles the forward and, through AOTAutograd, the backward
        first = time.perf_counter() - start
        seconds = interleaved({"eager": eager_step, "compiled": compiled_step}, rounds, 1)
    saved = seconds["eager"] - seconds["compiled"]
    result = {
        "precision": precision,
        "first_step_seconds": first,
        "compile_seconds": first - seconds["compiled"],
        "eager_samples_per_s": sizes.batch_size / seconds["eager"],
        "compiled_samples_per_s": sizes.batch_size / seconds["compiled"],
        "speedup": seconds["eager"] / seconds["compiled"],
        "break_even_steps": (first - seconds["compiled"]) / saved if saved > 0 else None,
    }
    log(f"compile: {result['compile_seconds']:.0f} s to compile, "
        f"{result['speedup']:.2f}x per step, break-even after "
        f"{result['break_even_steps'] or float('inf'):.0f} steps")
    return result
