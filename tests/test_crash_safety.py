"""Crash safety of a real `vislm train` process: SIGKILL in the middle of training and in the
middle of writing a checkpoint, then `--resume`, must give the run that never stopped, step
for step and bit for bit, and no checkpoint on disk may ever be half-written."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vislm.config import DataConfig, TrainConfig, load_config
from vislm.data.shapes import generate_shapes_world
from vislm.data.tokenizer import train_tokenizer
from vislm.tasks.data import load_split
from vislm.tasks.run import corpus, make_tokenizer
from vislm.train import Trainer
from vislm.train.checkpoint import CHECKPOINTS, MARKER_FILE, read_trainer_state
from vislm.train.trainer import truncate_log

# Runs the real command line, with two optional pauses that let the test kill the process
# at a known point: just after step PAUSE_AFTER_STEP was logged (between checkpoints), or
# inside the PAUSE_IN_SAVE-th checkpoint save, after the weights, optimizer and scheduler
# files are written and before the RNG state, trainer state and COMPLETE marker are.
LAUNCHER = """
import os, sys, time
from pathlib import Path
import vislm.train.checkpoint as checkpoint
from vislm.train.trainer import Trainer

marker = Path(os.environ["PAUSE_MARKER"])
after_step = int(os.environ.get("PAUSE_AFTER_STEP", "0"))
in_save = int(os.environ.get("PAUSE_IN_SAVE", "0"))

def pause(what):
    marker.write_text(what)
    time.sleep(120)

write_log = Trainer._write_log
def logging_then_pausing(self, record):
    write_log(self, record)
    if record.get("step") == after_step and "loss" in record:
        pause("after step")
Trainer._write_log = logging_then_pausing

saves = []
get_rng_state = checkpoint.get_rng_state
def pausing_rng_state():
    saves.append(1)
    if len(saves) == in_save:
        pause("in save")
    return get_rng_state()
checkpoint.get_rng_state = pausing_rng_state

from vislm.cli import main
sys.exit(main(sys.argv[1:]))
"""

TINY = [
    "data.image_size=32", "data.eval_splits=[test]", "tokenizer.vocab_size=120",
    "model.vision_kwargs={dim: 16, widths: [8, 8, 16]}", "model.text_kwargs={dim: 16, depth: 1, heads: 2}",
    "train.epochs=2", "train.batch_size=4", "train.warmup_steps=2", "train.log_every=1", "train.precision=fp32",
    "train.save_every_steps=4", "train.keep_last=2", "train.eval_every=1", "train.progress=false",
    "eval.batch_size=16",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    world = generate_shapes_world(root / "world", seed=5, sizes={"train": 16, "test": 4}, image_size=32)
    # Tokenizer training is not deterministic: two fresh runs can only match with one tokenizer.
    train_tokenizer(corpus(load_split(DataConfig(root=str(world)), "train")), 120).save(root / "tok")
    return root, [f"data.root={world}", f"tokenizer.path={root / 'tok'}", *TINY]


def start(out: Path, overrides: list, resume: bool = False, **pauses) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PAUSE_MARKER": str(out.parent / f"{out.name}.paused")}
    env.update({name.upper(): str(value) for name, value in pauses.items()})
    args = ["train", "configs/demo_vqa.yaml", *overrides, "--out", str(out)] + (["--resume"] if resume else [])
    # stderr to a file: a full pipe would block the run before it reaches its pause.
    errors = out.parent / f"{out.name}.stderr"
    with open(errors, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", LAUNCHER, *args], env=env,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    process.errors = errors
    return process


def stderr_of(process: subprocess.Popen) -> str:
    return process.errors.read_text()[-3000:]


def kill_when_paused(process: subprocess.Popen, out: Path) -> str:
    marker = out.parent / f"{out.name}.paused"
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert process.poll() is None, f"the run ended before pausing: {stderr_of(process)}"
        assert time.monotonic() < deadline, "the run never reached its pause"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    what = marker.read_text()
    marker.unlink()
    return what


def finish(process: subprocess.Popen) -> None:
    assert process.wait(timeout=120) == 0, stderr_of(process)


def assert_no_half_written_checkpoint(out: Path) -> list[int]:
    """Every step_* directory is complete and loads; anything else is a hidden temporary."""
    steps = []
    for path in sorted((out / CHECKPOINTS).iterdir()):
        if not path.name.startswith("step_"):
            assert path.name.startswith(".tmp-"), path
            continue
        assert (path / MARKER_FILE).is_file(), f"{path} has no {MARKER_FILE}"
        assert load_file(path / "model.safetensors")
        for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
            torch.load(path / name, weights_only=True)
        steps.append(read_trainer_state(path)["global_step"])
    return steps


def logged(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_sigkill_mid_run_and_mid_checkpoint_then_resume_equals_an_uninterrupted_run(setup):
    root, overrides = setup
    straight, crashed = root / "straight", root / "crashed"
    finish(start(straight, overrides))

    # 1. Killed between checkpoints: after step 6 is logged, the last checkpoint is step 4.
    assert kill_when_paused(start(crashed, overrides, pause_after_step=6), crashed) == "after step"
    assert assert_no_half_written_checkpoint(crashed) == [4]
    assert max(r["step"] for r in logged(crashed)) == 6  # lines the resume must drop

    # 2. Resumed, then killed inside its second save (step 12): a temporary is left half-written.
    assert kill_when_paused(start(crashed, overrides, resume=True, pause_in_save=2), crashed) == "in save"
    leftovers = [p for p in (crashed / CHECKPOINTS).iterdir() if p.name.startswith(".tmp-")]
    assert leftovers and not (leftovers[0] / MARKER_FILE).exists()
    assert assert_no_half_written_checkpoint(crashed) == [4, 8]

    # 3. Resumed to the end.
    finish(start(crashed, overrides, resume=True))
    assert not [p for p in (crashed / CHECKPOINTS).iterdir() if p.name.startswith(".tmp-")]
    assert_no_half_written_checkpoint(crashed)

    def losses(out):
        return [(r["step"], r["loss"]) for r in logged(out) if "loss" in r]

    def evaluations(out):
        return [(r["step"], r["eval"]) for r in logged(out) if "eval" in r]

    assert losses(crashed) == losses(straight)  # bitwise: JSON floats round-trip exactly
    assert [step for step, _ in losses(crashed)] == list(range(1, len(losses(crashed)) + 1))
    assert evaluations(crashed) == evaluations(straight) and len(evaluations(straight)) == 2
    assert "bad_data" in logged(crashed)[-1] and len([r for r in logged(crashed) if "bad_data" in r]) == 1
    final = load_file(crashed / "model" / "model.safetensors")
    reference = load_file(straight / "model" / "model.safetensors")
    assert final.keys() == reference.keys() and all(torch.equal(final[k], reference[k]) for k in final)


def test_truncate_log_keeps_steps_up_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [{"step": 1, "loss": 1.0}, {"step": 2, "eval": {}}, {"step": 3, "loss": 0.5}, {"bad_data": {}}]
    log.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 4, "lo')
    truncate_log(log, 2)
    assert [json.loads(line) for line in log.read_text().splitlines()] == lines[:2]


# ---------------------------------------------------------------------------------------
# Non-finite losses


class NaNAfter(torch.nn.Module):
    def __init__(self, first_bad_call):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.first_bad_call, self.calls = first_bad_call, 0

    def forward(self, batch):
        self.calls += 1
        loss = (self.weight * batch).pow(2).mean()
        return {"loss": loss * float("inf") if self.calls >= self.first_bad_call else loss}


def test_max_bad_steps_is_configurable_and_the_error_says_where(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=2, warmup_steps=0, log_every=1, progress=False, max_bad_steps=3)
    model = NaNAfter(first_bad_call=5)
    with pytest.raises(FloatingPointError, match=r"epoch 2: steps 5-7 .*train.max_bad_steps=3"):
        Trainer(model, torch.ones(8, 1), None, cfg, tmp_path).fit()
    assert model.calls == 7 and torch.isfinite(model.weight).all()
    log = map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines())
    assert [r["step"] for r in log if "skipped" in r] == [5, 6, 7]


def test_a_resumed_run_and_the_other_processes_reuse_the_runs_tokenizer(setup, tmp_path, monkeypatch):
    # Tokenizer training is not deterministic: a resumed run that trained its own could map
    # words to other ids than the checkpointed embeddings learned.
    import vislm.tasks.run as run

    root, _ = setup
    cfg = load_config(None, [f"data.root={root / 'world'}", "tokenizer.vocab_size=120"])
    split = load_split(cfg.data, "train")
    trained = []
    monkeypatch.setattr(run, "make_tokenizer", lambda *args: trained.append(1) or make_tokenizer(*args))
    run.run_tokenizer(cfg, split, tmp_path, resume=False, main=True)
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file() and len(trained) == 1
    run.run_tokenizer(cfg, split, tmp_path, resume=True, main=True)
    assert len(trained) == 2  # no checkpoint yet: the saved tokenizer may be half-written
    (tmp_path / CHECKPOINTS / "step_00000001").mkdir(parents=True)
    (tmp_path / CHECKPOINTS / "step_00000001" / MARKER_FILE).write_text("ok\n")
    resumed = run.run_tokenizer(cfg, split, tmp_path, resume=True, main=True)
    other = run.run_tokenizer(cfg, split, tmp_path, resume=False, main=False)
    assert len(trained) == 2
    assert resumed.backend.get_vocab() == other.backend.get_vocab() != {}
