"""Does torch.compile pay on this machine? Each pair's bf16 training step (vislm's dual
encoder and captioner), eager against compiled (Inductor, default mode; what
`train.compile=inductor` does), from the same weights.

Compile time is measured twice, in a fresh Inductor cache directory: cold (the first run
on a machine, everything generated and built) and warm (a later run, which finds the
compiled kernels in Inductor's on-disk cache). Compiling pays when a run wins its compile
time back through faster steps: break-even = compile seconds / seconds saved per step.
Fixed shapes here; the trainer's batches are padded per batch, so a run meets a few
caption lengths (after the second, torch.compile makes the length dynamic).
"""

from __future__ import annotations

import contextlib
import tempfile
import time

import torch

from vislm.bench import models as M
from vislm.bench.timing import interleaved
from vislm.train.precision import attention_for_precision


def _fresh_cache(directory: str):
    """Inductor's caches pointed at an empty directory (private API: skipped if absent)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir
    except ImportError:
        return contextlib.nullcontext()
    return temporary_cache_dir(directory)


def _forget_compiled() -> None:
    """Drop what this process remembers of compiled code, so only the disk cache helps."""
    torch._dynamo.reset()
    try:
        from torch._inductor.utils import clear_caches
    except ImportError:
        return
    clear_caches()


def _first_step(pair: str, model: torch.nn.Module, data: dict, precision: str):
    step = M.train_step("vislm", pair, torch.compile(model), data, precision)
    start = time.perf_counter()
    step()  # compiles the forward and, through AOTAutograd, the backward
    return step, time.perf_counter() - start


def run(sizes: M.Sizes, rounds: int, precision: str = "bf16", log=print,
        pairs=M.PAIRS) -> dict:
    return {pair: run_pair(pair, sizes, rounds, precision, log) for pair in pairs}


def run_pair(pair: str, sizes: M.Sizes, rounds: int, precision: str, log=print) -> dict:
    torch._dynamo.reset()
    torch.manual_seed(0)
    models = [M.vislm_model(pair, sizes) for _ in range(3)]  # eager, cold, warm
    for model in models[1:]:
        model.load_state_dict(models[0].state_dict())
    data = M.batch(sizes)
    with contextlib.ExitStack() as stack:
        for model in models:
            stack.enter_context(attention_for_precision(model, precision))
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="vislm-inductor-"))
        stack.enter_context(_fresh_cache(directory))
        eager_step = M.train_step("vislm", pair, models[0], data, precision)
        compiled_step, cold = _first_step(pair, models[1], data, precision)
        seconds = interleaved({"eager": eager_step, "compiled": compiled_step}, rounds, 1)
        _forget_compiled()
        _, warm = _first_step(pair, models[2], data, precision)
    saved = seconds["eager"] - seconds["compiled"]
    result = {
        "precision": precision,
        "cold_compile_seconds": cold - seconds["compiled"],
        "warm_compile_seconds": warm - seconds["compiled"],
        "eager_samples_per_s": sizes.batch_size / seconds["eager"],
        "compiled_samples_per_s": sizes.batch_size / seconds["compiled"],
        "speedup": seconds["eager"] / seconds["compiled"],
    }
    for kind in ("cold", "warm"):
        compile_seconds = result[f"{kind}_compile_seconds"]
        result[f"{kind}_break_even_steps"] = compile_seconds / saved if saved > 0 else None
    log(f"compile {pair}: {result['cold_compile_seconds']:.0f} s cold, "
        f"{result['warm_compile_seconds']:.0f} s warm, {result['speedup']:.2f}x per step")
    return result
