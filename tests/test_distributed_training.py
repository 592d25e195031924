"""Real two-process training on the CPU (gloo): `accelerate launch --multi_gpu` and `torchrun`
run the same training code as `vislm train`.

Note: on a machine without GPUs, `accelerate launch --cpu --num_processes 2` starts ONE
process; `--multi_gpu --num_processes 2` starts two, which then train on the CPU because
the trainer asks Accelerate for the CPU when there is no CUDA device.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vislm
from vislm.config import load_config
from vislm.data.shapes import generate_shapes_world
from vislm.objectives.itc import itc_loss
from vislm.tasks.data import load_split
from vislm.tasks.retrieval import RetrievalTask
from vislm.train.checkpoint import latest_checkpoint, read_trainer_state

BIN = Path(sys.executable).parent

# `vislm train` (the CLI only parses arguments, then calls train()), plus what the test
# needs from each process: its weights, its first contrastive loss with the embeddings it
# came from, its tokenizer, and what its evaluation saw.
LAUNCHER = """
import hashlib, json, sys
from pathlib import Path
import torch, torch.distributed as dist
import vislm.models.fusion.dual_encoder as dual_encoder
from vislm.config import load_config
from vislm.tasks.run import train
from vislm.train.trainer import end_process_group

out = Path(sys.argv[1])
first = []
distributed_itc_loss = dual_encoder.distributed_itc_loss
def recording(image_emb, text_emb, scale, image_ids=None):
    loss = distributed_itc_loss(image_emb, text_emb, scale, image_ids)
    if not first:
        first.append({"loss": loss.detach(), "image": image_emb.detach(), "text": text_emb.detach(),
                      "scale": scale.detach(), "ids": image_ids})
    return loss
dual_encoder.distributed_itc_loss = recording

parts = {}
result = train(load_config(sys.argv[2], sys.argv[3:]), out, task_out=parts)
rank, task, model = dist.get_rank(), parts["task"], parts["model"]
torch.save({"itc": first[0], "weights": model.state_dict()}, out / f"rank{rank}.pt")
image_emb, text_emb, _ = task.embed(model, "test")
vocab = json.dumps(sorted(task.tokenizer.backend.get_vocab().items()))
(out / f"rank{rank}.json").write_text(json.dumps({
    "world": dist.get_world_size(), "metrics": result["metrics"], "images": len(image_emb),
    "texts": len(text_emb), "vocab": hashlib.sha1(vocab.encode()).hexdigest()}))
del parts, task, model  # the model holds the process group; `vislm train` ends the same way
end_process_group()
"""

TINY = [
    "data.image_size=32", "data.eval_splits=[test]", "tokenizer.vocab_size=120",
    "model.vision_kwargs={dim: 16, widths: [8, 8, 16]}", "model.text_kwargs={dim: 16, depth: 1, heads: 2}",
    "train.epochs=1", "train.batch_size=4", "train.warmup_steps=2", "train.precision=fp32",
    "train.log_every=1", "train.progress=false", "eval.batch_size=4",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    # 5 test images: an odd split, which a sharded evaluation would have to pad.
    root = tmp_path_factory.mktemp("ddp")
    return generate_shapes_world(root / "world", seed=2, sizes={"train": 16, "test": 5}, image_size=32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(command: list, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def test_accelerate_launch_ddp_two_processes(world, tmp_path):
    out = tmp_path / "run"
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    config = Path("configs/demo_retrieval.yaml").resolve()
    launch([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            str(launcher), str(out), str(config), f"data.root={world}", "model.fusion_kwargs={embed_dim: 8}",
            *TINY], tmp_path)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in reports] == [2, 2]
    assert reports[0]["vocab"] == reports[1]["vocab"]  # one tokenizer, the main process's

    # Both processes end with the same weights, which are the ones saved.
    saved = vislm.load(out / "model")
    for name, tensor in saved.model.state_dict().items():
        assert torch.equal(ranks[0]["weights"][name], tensor), name
        assert torch.equal(ranks[1]["weights"][name], tensor), name

    # The contrastive loss saw the global batch: the mean of the processes' losses is the
    # single-process loss over both halves, not over each half alone.
    itc = [r["itc"] for r in ranks]
    image, text = torch.cat([r["image"] for r in itc]), torch.cat([r["text"] for r in itc])
    ids = torch.cat([r["ids"] for r in itc])
    global_loss = itc_loss(image, text, itc[0]["scale"], ids)
    mean = (itc[0]["loss"] + itc[1]["loss"]) / 2
    torch.testing.assert_close(mean, global_loss, atol=1e-5, rtol=0)
    local = sum(itc_loss(r["image"], r["text"], r["scale"], r["ids"]) for r in itc) / 2
    assert abs(float(local - global_loss)) > 1e-3

    # Each process evaluated the whole test split once: all 5 images and their captions,
    # none twice, and the metrics of a single process evaluating the saved model.
    cfg = load_config(out / "config.yaml")
    splits = {name: load_split(cfg.data, name) for name in ("train", "test")}
    captions = sum(len(r.captions) for r in splits["test"].captions)
    assert [(r["images"], r["texts"]) for r in reports] == [(5, captions)] * 2
    single = RetrievalTask(cfg, saved.tokenizer, splits).evaluate(saved.model, "test")
    assert reports[0]["metrics"]["test"] == reports[1]["metrics"]["test"] == pytest.approx(single, abs=1e-9)
    assert json.loads((out / "metrics.json").read_text())["metrics"]["test"] == reports[0]["metrics"]["test"]

    # One log, written by the main process: 80 captions / (4 x 2 processes) = 10 steps.
    steps = [r["step"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, 11))


def test_torchrun_runs_the_cli_on_two_processes(world, tmp_path):
    out = tmp_path / "run"
    config = Path("configs/demo_vqa.yaml").resolve()
    launch([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
            "-m", "vislm.cli", "train", str(config), f"data.root={world}", *TINY, "--out", str(out)], tmp_path)
    state = read_trainer_state(latest_checkpoint(out))
    assert state["num_processes"] == 2
    assert state["global_step"] == state["dataset_size"] // (4 * 2)
    assert "accuracy" in json.loads((out / "metrics.json").read_text())["metrics"]["test"]


def test_fsdp_version_1_is_refused_with_the_flag_that_fixes_it():
    # FSDP (version 2) trains for real in test_distributed_fsdp.py. Version 1 wraps the model
    # in FullyShardedDataParallel, which the trainer's checkpoints are not written for.
    from types import SimpleNamespace

    from accelerate.utils import DistributedType, DynamoBackend

    from vislm.config import TrainConfig
    from vislm.errors import ConfigError
    from vislm.train.trainer import _check_accelerator

    def fsdp(version):
        return SimpleNamespace(mixed_precision="no", gradient_accumulation_steps=1,
                               distributed_type=DistributedType.FSDP, is_fsdp2=version == 2,
                               state=SimpleNamespace(dynamo_plugin=SimpleNamespace(
                                   backend=DynamoBackend.NO)))

    with pytest.raises(ConfigError, match="FSDP version 2 only: launch with --fsdp_version 2"):
        _check_accelerator(fsdp(1), TrainConfig())
    _check_accelerator(fsdp(2), TrainConfig())


def gloo_threads() -> list:
    tasks = Path("/proc/self/task")
    return [t for t in tasks.iterdir() if (t / "comm").read_text().strip().startswith("pt_gloo")]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from /proc")
def test_end_process_group_joins_the_gloo_threads(tmp_path):
    # `vislm train` calls it last: a group still alive at exit can abort the process.
    import torch.distributed as dist

    from vislm.train.trainer import end_process_group

    end_process_group()  # no group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    dist.barrier()
    assert dist.is_initialized() and gloo_threads()
    end_process_group()
    assert not dist.is_initialized() and not gloo_threads()
