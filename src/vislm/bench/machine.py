"""What the numbers were measured on: the CPU, the software, the load, and the GEMM peak
that MFU divides by (measured in the same process, not taken from a spec sheet)."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone

import torch

from vislm.bench.timing import best_of


def _lscpu() -> dict:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _cpu_flags() -> list:
    """The vector extensions that decide the matmul kernels (AVX-512, bf16, AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                    return [flag for flag in wanted if flag in flags]
    except OSError:
        pass
    return []


def describe() -> dict:
    import transformers

    from vislm.kernels.build import state as kernels_state
    from vislm.train.allocator import state as allocator_state

    cpu = _lscpu()
    return {
        "cpu": cpu.get("Model name") or platform.processor() or "unknown",
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads_per_core": cpu.get("Thread(s) per core", "?"),
        "cpu_flags": _cpu_flags(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        # The train table compares both libraries under this allocator setting.
        "allocator": allocator_state(),
        # vislm's C kernels (bf16 training), or why they are off.
        "kernels": kernels_state(),
    }


def gemm_peak(size: int = 2048, repeats: int = 5) -> dict:
    """GFLOP/s of large square matmuls per dtype: the best over repeats, over sizes `size`
    and `size / 2`, and over the two CPU matmul libraries torch ships (its BLAS behind
    `a @ b`, and oneDNN, which vislm uses for float32 where it is faster: see
    vislm/models/onednn_linear.py). The least disturbed run of the fastest kernel is the
    closest to what the hardware can do; a shared machine can only make this an
    underestimate (MFU then reads high). Also returns each library's own fp32 figure."""
    from vislm.models.onednn_linear import _kernel

    onednn = _kernel()
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best = {"blas": 0.0, "onednn": 0.0}
        for n in (size // 2, size):
            a = torch.randn(n, n).to(dtype)
            b = torch.randn(n, n).to(dtype)
            kernels = {"blas": lambda: a @ b}
            if onednn is not None:
                kernels["onednn"] = lambda: onednn(a, b, None, "none", [], "")
            for library, fn in kernels.items():
                fn()  # kernel selection and first-touch of the output
                best[library] = max(best[library], 2 * n ** 3 / best_of(fn, repeats) / 1e9)
        peaks[name] = max(best.values())
        if name == "fp32":
            peaks["fp32_blas"], peaks["fp32_onednn"] = best["blas"], best["onednn"]
    return peaks
