"""vislm.train.allocator: glibc keeps freed memory, so a repeated large allocation stops
taking fresh (page-faulting) pages; user choices are respected. Each case runs in a
subprocess, since mallopt changes the whole process."""

import json
import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="needs glibc")

# A step-like pattern: a 48 MB tensor (over glibc's adaptive mmap threshold, which tops out
# at 32 MB) and a few smaller ones, all alive together, then freed; after warm-up steps,
# the minor page faults per step.
CHILD = """
import json, resource, sys
import torch
from vislm.train.allocator import keep_freed_memory, reason_not_applied
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    alive = [torch.empty(n).fill_(1.0) for n in (12 << 20, 2 << 20, 2 << 20, 1 << 20)]
    del alive
for _ in range(3):
    step()
before = faults()
for _ in range(4):
    step()
print(json.dumps({"applied": applied, "reason": reason_not_applied(),
                  "faults_per_step": (faults() - before) / 4}))
"""


def run_child(mode: str, **env) -> dict:
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    environment.update(env)
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                          env=environment, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc
def test_kept_memory_is_not_faulted_in_again():
    pages_per_round = (48 << 20) // os.sysconf("SC_PAGE_SIZE")
    system = run_child("system")
    kept = run_child("keep")
    assert system["applied"] is None
    # By default the 48 MB block is mapped afresh every step: every page faults again.
    assert system["faults_per_step"] > 0.9 * pages_per_round
    assert kept["applied"]["trim_threshold"] == 1 << 30
    assert kept["applied"]["mmap_threshold"] >= 32 << 20
    assert kept["faults_per_step"] < 0.02 * pages_per_round


@glibc
@pytest.mark.parametrize("env, reason", [
    ({"MALLOC_TRIM_THRESHOLD_": "1000000"}, "MALLOC_TRIM_THRESHOLD_ set in the environment"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}, "GLIBC_TUNABLES sets malloc tunables"),
])
def test_a_user_choice_is_left_alone(env, reason):
    result = run_child("keep", **env)
    assert result["applied"] is None
    assert result["reason"] == reason


def test_the_trainer_applies_it_unless_told_not_to(monkeypatch, tmp_path):
    import torch

    from vislm.config import TrainConfig
    from vislm.train import trainer as trainer_module

    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: calls.append(1))

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

        def forward(self, batch):
            return {"loss": ((self.w - batch["x"]) ** 2).sum()}

    data = [{"x": torch.ones(2)} for _ in range(4)]
    collate = lambda items: {"x": torch.stack([i["x"] for i in items]).mean(0)}  # noqa: E731
    for allocator, expected in (("keep", 1), ("system", 0)):
        calls.clear()
        cfg = TrainConfig(epochs=1, batch_size=2, progress=False, allocator=allocator)
        trainer_module.Trainer(Tiny(), data, collate, cfg, tmp_path / allocator).fit()
        assert len(calls) == expected


@glibc
def test_the_state_names_the_setting():
    child = ("import json\nfrom vislm.train.allocator import keep_freed_memory, state\n"
             "before = state()\nkeep_freed_memory()\nprint(json.dumps([before, state()]))")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          env=environment, timeout=120, check=True)
    before, after = json.loads(done.stdout.strip().splitlines()[-1])
    assert before == "the C library's defaults"
    assert after == "freed memory kept (vislm.train.allocator)"
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          env={**environment, "MALLOC_TRIM_THRESHOLD_": "1000000"}, timeout=120, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [
        "as the user set it: MALLOC_TRIM_THRESHOLD_ set in the environment"] * 2
