"""Real two-process FSDP training on the CPU (gloo): `accelerate launch --use_fsdp` runs the
same training code as `vislm train`, each process holding only a shard of the weights and
optimizer state; checkpoints and the saved model hold the full state, and a resume hands
each process its shard back and continues as if the run had never stopped.

Accelerate builds FSDP on GPUs only: on a machine without one, the same launch gives each
process a data-parallel (MULTI_CPU) accelerator. The launcher below turns that into the
accelerator a GPU launch gets (the FSDP plugin the launch's FSDP_* settings describe, and
the FSDP type); everything else runs for real: Accelerate's FSDP2 preparation, PyTorch's
fully_shard over gloo, and vislm's trainer, checkpoints and evaluation.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vislm
from vislm.data.shapes import generate_shapes_world
from vislm.train.checkpoint import MODEL_FILE, OPTIMIZER_FILE, list_checkpoints, load_checkpoint, read_trainer_state

BIN = Path(sys.executable).parent

LAUNCHER = """
import os, sys
from pathlib import Path
import torch
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
import vislm.train.trainer as trainer
from vislm.config import load_config
from vislm.tasks.run import train
from vislm.train.fsdp import full_optimizer_state, full_weights

out, resume, rank = Path(sys.argv[1]), sys.argv[3] == "resume", int(os.environ["RANK"])

make_accelerator = trainer.make_accelerator
def fsdp_accelerator(cfg):
    acc = make_accelerator(cfg)
    acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the launch's FSDP_* settings
    acc.state.distributed_type = DistributedType.FSDP
    return acc
trainer.make_accelerator = fsdp_accelerator

# What this process held at its first step: the size of its shard of each parameter.
shards = {}
optimizer_step = trainer.Trainer._optimizer_step
def recording_step(self, model, *args, **kwargs):
    if not shards:
        shards.update({name: [p.to_local().numel(), p.numel()] for name, p in model.named_parameters()})
    return optimizer_step(self, model, *args, **kwargs)
trainer.Trainer._optimizer_step = recording_step

# What a resume gave the sharded model and its optimizer, gathered back.
load = trainer.Trainer._resume
def recording_resume(self, checkpoint, model, optimizer, scheduler):
    load(self, checkpoint, model, optimizer, scheduler)
    weights, optimizer_state = full_weights(model, self._renamed), full_optimizer_state(model, optimizer)
    if rank == 0:
        torch.save({"weights": weights, "optimizer": optimizer_state}, out / "resumed.pt")
trainer.Trainer._resume = recording_resume

parts = {}
result = train(load_config(sys.argv[2], sys.argv[4:]), out, resume=resume, task_out=parts)
torch.save({"weights": parts["model"].state_dict(), "shards": shards, "metrics": result["metrics"]},
           out / f"rank{rank}.pt")
del parts  # the sharded model holds the process group; `vislm train` ends the same way
trainer.end_process_group()
"""

# One transformer block per FSDP unit, and the rest with the root, as a real launch would.
FSDP = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
        "--fsdp_transformer_layer_cls_to_wrap", "Block"]

TINY = [
    "data.image_size=32", "data.eval_splits=[test]", "tokenizer.vocab_size=120",
    "model.vision_kwargs={dim: 16, widths: [8, 8, 16]}", "model.text_kwargs={dim: 16, depth: 1, heads: 2}",
    "model.fusion_kwargs={embed_dim: 8}", "train.batch_size=4", "train.warmup_steps=2", "train.precision=fp32",
    "train.log_every=1", "train.progress=false", "eval.batch_size=4",
    # 80 captions / (4 x 2 micro-batches x 2 processes) = 5 steps an epoch; an evaluation
    # after each epoch, a checkpoint every 4 steps and at each epoch's end, all kept.
    "train.grad_accum_steps=2", "train.epochs=2", "train.eval_every=1", "train.save_every_steps=4",
    "train.keep_last=0",
    # A tenth of the demo's rate. In a model this small, at 2e-3, the rounding by which
    # FSDP's gradients differ from DDP's grows chaotically over the steps (AdamW moves a
    # weight by about the learning rate whatever its gradient's size, so a near-zero
    # entry whose sign the rounding flips moves the other way): over 44 runs, typically
    # 1e-5 on the gradient norm by step 10, 2e-3 in three, 1.6e-2 once. At 2e-4 the
    # worst of 20 runs was 6e-6 on the gradient norm and 1e-6 on the loss.
    "train.lr=0.0002",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    return generate_shapes_world(root / "world", seed=2, sizes={"train": 16, "test": 5}, image_size=32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CONFIG = Path("configs/demo_retrieval.yaml").resolve()


def run(command: list, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def launch_fsdp(world: Path, out: Path, mode: str) -> list[dict]:
    """Train the retrieval demo with two FSDP processes; return what each process saved."""
    launcher = out.parent / "launcher.py"
    launcher.write_text(LAUNCHER)
    run([str(BIN / "accelerate"), "launch", *FSDP, "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
         str(launcher), str(out), str(CONFIG), mode, f"data.root={world}", *TINY], out.parent)
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


def logged(run: Path) -> list[dict]:
    """The log's step and evaluation lines, without the time they took."""
    lines = map(json.loads, (run / "log.jsonl").read_text().splitlines())
    return [{k: v for k, v in r.items() if k not in ("time", "samples_per_s")} for r in lines if "step" in r]


def stored(name: str, shape: tuple) -> tuple[str, tuple]:
    """A parameter's name and shape in the sharded copy: fully_shard cannot shard a 0-d one,
    which is stored with shape (1,) behind a parametrization (vislm/train/fsdp.py)."""
    if shape:
        return name, shape
    module, _, leaf = name.rpartition(".")
    return (f"{module}." if module else "") + f"parametrizations.{leaf}.original", (1,)


def assert_same(a, b, where="state"):
    """Equal nested state dicts: every tensor bit for bit, every other value by ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a, key=str) == sorted(b, key=str), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{index}]")
    else:
        assert a == b, where


def test_fsdp_two_processes_save_the_full_state_and_resume_exactly(world, tmp_path):
    whole = tmp_path / "whole"
    whole.mkdir()
    ranks = launch_fsdp(world, whole, "fresh")

    # Each process held only its shard: together the whole of every parameter, and the
    # weight matrices split between the two.
    for name, (local, full) in ranks[0]["shards"].items():
        assert local + ranks[1]["shards"][name][0] == full, name
    assert sum(local < full for local, full in ranks[0]["shards"].values()) > len(ranks[0]["shards"]) // 2

    # The saved model is the full one: a single-process model built from its config takes
    # its weights, and both processes ended with them (and computed the same metrics).
    saved = vislm.load(whole / "model")
    final = saved.model.state_dict()
    for rank in ranks:
        assert_same(rank["weights"], final, "final weights")
    assert ranks[0]["metrics"] == ranks[1]["metrics"]

    # Every checkpoint holds the full state: its weights load strictly (no key missing or
    # extra, every shape right) into a single-process model, its optimizer state has a
    # full-size entry for every parameter, and the last one is the final model.
    checkpoints = list_checkpoints(whole)
    assert [read_trainer_state(c)["global_step"] for c in checkpoints] == [4, 5, 8, 10]
    parameters = dict(stored(name, tuple(p.shape)) for name, p in saved.model.named_parameters())
    assert any(shape == (1,) for shape in parameters.values())  # the dual encoder's logit scale
    for checkpoint in checkpoints:
        load_checkpoint(checkpoint, vislm.load(whole / "model").model, restore_rng=False)
        optimizer = torch.load(checkpoint / OPTIMIZER_FILE, weights_only=True)
        assert {name: tuple(s["exp_avg"].shape) for name, s in optimizer["state"].items()} == parameters
        assert read_trainer_state(checkpoint)["fsdp"] is True
    last = vislm.load(whole / "model").model
    load_checkpoint(checkpoints[-1], last, restore_rng=False)
    assert_same(last.state_dict(), final, "last checkpoint")

    # Resume from step 4, as if the run had stopped there.
    resumed, step_4 = tmp_path / "resumed", checkpoints[0]
    resumed.mkdir()
    shutil.copytree(whole / "tokenizer", resumed / "tokenizer")
    shutil.copy(whole / "log.jsonl", resumed / "log.jsonl")  # the resume drops the lines after step 4
    shutil.copytree(step_4, resumed / "checkpoints" / step_4.name)
    again = launch_fsdp(world, resumed, "resume")

    # The sharded model and optimizer were given exactly the checkpoint's full state...
    loaded = torch.load(resumed / "resumed.pt", weights_only=True)
    file_weights = load_file(str(step_4 / MODEL_FILE))
    assert_same({name: loaded["weights"][name] for name in file_weights}, file_weights, "resumed weights")
    assert_same(loaded["optimizer"], torch.load(step_4 / OPTIMIZER_FILE, weights_only=True), "optimizer")
    # ...and the run went on as the uninterrupted one did: the same loss, gradient norm and
    # learning rate at every step and the same evaluation after each epoch, bit for bit (the
    # same shards, reduced by gloo in the same order), to the same final weights and metrics.
    assert logged(resumed) == logged(whole)
    assert [r["step"] for r in logged(whole) if "eval" in r] == [5, 10] and len(logged(whole)) == 12
    assert_same(again[0]["weights"], final, "resumed run's final weights")
    assert again[0]["metrics"] == ranks[0]["metrics"]

    # And FSDP trained what DDP trains (same data, seed and tokenizer), up to the rounding of
    # summing the gradients in another order: FSDP reduce-scatters where DDP all-reduces.
    ddp = tmp_path / "ddp"
    run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "vislm.cli",
         "train", str(CONFIG), f"data.root={world}", *TINY, f"tokenizer.path={whole / 'tokenizer'}",
         "--out", str(ddp)], tmp_path)
    # The first step differs by that rounding alone: a wrong reduction (a sum for a mean,
    # a missing shard) shows there; a wrong sharded optimizer step shows from the second.
    for a, b in zip(logged(ddp), logged(whole), strict=True):
        assert a.keys() == b.keys() and a["step"] == b["step"], (a, b)
        if "loss" in a:
            first = a["step"] == 1
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-6 if first else 1e-4), a["step"]
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5 if first else 1e-3), a["step"]
        else:
            assert a["eval"] == pytest.approx(b["eval"], abs=1e-3), a["step"]
