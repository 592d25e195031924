"""Peak memory of each training benchmark, one fresh subprocess per benchmark.

torch's CPU allocator keeps no statistics and Python's tracemalloc does not see tensor
storage, so the number is the process's resident set: the subprocess builds the model,
the optimizer and the batch, resets the kernel's high-water mark (writing 5 to
/proc/self/clear_refs), takes two training steps and reports VmHWM - VmRSS before them:
what training adds on top of the model (activations, gradients, AdamW state, workspace).
Where /proc is missing, the peak since start-up (getrusage) minus the same baseline.

    python -m vislm.bench.memory '{"lib": "vislm", "pair": "dual", "precision": "bf16", ...}'
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import asdict

from vislm.bench.models import Sizes


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_kb() -> int:
    peak = _status_kb("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux


def _child(spec: dict) -> dict:
    import torch

    from vislm.bench import models as M
    from vislm.train.precision import attention_for_precision

    torch.set_num_threads(spec["threads"])
    sizes = Sizes(**spec["sizes"])
    lib, pair, precision = spec["lib"], spec["pair"], spec["precision"]
    torch.manual_seed(0)
    if lib == "vislm":
        model = M.vislm_model(pair, sizes)
    else:
        model = M.peer_model(pair, sizes, spec.get("attention", "sdpa"))
    data = M.batch(sizes)
    with attention_for_precision(model, precision):
        step = M.train_step(lib, pair, model, data, precision)
        exact = _reset_peak()
        baseline = _status_kb("VmRSS") or _peak_kb()
        for _ in range(2):
            step()
        peak = _peak_kb()
    return {"peak_delta_mb": (peak - baseline) / 1024, "baseline_mb": baseline / 1024,
            "exact_reset": exact}


def measure(lib: str, pair: str, precision: str, sizes: Sizes, threads: int,
            attention: str = "sdpa") -> dict:
    spec = {"lib": lib, "pair": pair, "precision": precision, "sizes": asdict(sizes),
            "threads": threads, "attention": attention}
    done = subprocess.run([sys.executable, "-m", "vislm.bench.memory", json.dumps(spec)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(sizes: Sizes, threads: int, peer_attention: dict, log=print,
        precisions=("fp32", "bf16"), pairs=("dual", "caption")) -> dict:
    """`peer_attention` maps "{pair}_{precision}" to the peer's faster implementation."""
    results = {}
    for precision in precisions:
        for pair in pairs:
            key = f"{pair}_{precision}"
            attention = peer_attention.get(key, "sdpa")
            row = {"vislm": measure("vislm", pair, precision, sizes, threads),
                   "peer": measure("hf", pair, precision, sizes, threads, attention)}
            results[key] = row
            log(f"memory {key}: vislm {row['vislm'].get('peak_delta_mb', float('nan')):.0f} MB, "
                f"peer {row['peer'].get('peak_delta_mb', float('nan')):.0f} MB")
    return results


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
