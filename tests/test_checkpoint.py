"""Checkpoints: round trip of every part, tied weights, atomic writes, pruning, corrupt files."""

import json
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from vislm.errors import CheckpointError
from vislm.train.checkpoint import (
    MARKER_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RNG_FILE,
    SCHEDULER_FILE,
    STATE_FILE,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from vislm.train.optim import build_optimizer, build_scheduler


class TiedLM(nn.Module):
    """An embedding whose table is also the output projection, as in weight-tied LMs."""

    def __init__(self, vocab=11, dim=6):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        return self.head(self.norm(self.embed(tokens)))


def parts(seed=0):
    torch.manual_seed(seed)
    model = TiedLM()
    optimizer = build_optimizer(model, lr=0.01, weight_decay=0.1, betas=(0.9, 0.98))
    scheduler = build_scheduler(optimizer, warmup_steps=2, total_steps=10, min_lr_ratio=0.1)
    return model, optimizer, scheduler


def train_a_little(model, optimizer, scheduler, steps=3):
    for _ in range(steps):
        loss = model(torch.randint(0, 11, (4, 5))).logsumexp(-1).mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def save(run_dir, model, optimizer, scheduler, step, **kwargs):
    state = {"epoch": 0, "step_in_epoch": step, "global_step": step}
    return save_checkpoint(run_dir, model, optimizer, scheduler, state, **kwargs)


def draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_round_trip_restores_model_optimizer_scheduler_and_rng(tmp_path):
    model, optimizer, scheduler = parts(seed=0)
    train_a_little(model, optimizer, scheduler)
    path = save(tmp_path, model, optimizer, scheduler, step=3)
    assert path == checkpoint_dir(tmp_path, 3) and path.name == "step_00000003"
    expected_draws = draws()

    fresh, fresh_opt, fresh_sched = parts(seed=1)
    state = load_checkpoint(path, fresh, fresh_opt, fresh_sched)

    assert state["global_step"] == 3
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, fresh.state_dict()[name]), name
    assert fresh_sched.last_epoch == scheduler.last_epoch
    assert fresh_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    saved_state = optimizer.state_dict()["state"]
    for index, slots in fresh_opt.state_dict()["state"].items():
        for slot, value in slots.items():
            assert torch.equal(value, saved_state[index][slot]), (index, slot)
    assert draws() == expected_draws  # all three RNGs continue where they were saved

    # One more identical step on both copies stays identical.
    torch.manual_seed(5)
    train_a_little(model, optimizer, scheduler, steps=1)
    torch.manual_seed(5)
    train_a_little(fresh, fresh_opt, fresh_sched, steps=1)
    assert torch.equal(model.embed.weight, fresh.embed.weight)


def test_state_files_load_with_weights_only(tmp_path):
    path = save(tmp_path, *parts(), step=1)
    for name in (OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE):
        torch.load(path / name, weights_only=True)  # raises if anything needs unpickling code
    assert json.loads((path / STATE_FILE).read_text())["global_step"] == 1


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    model, optimizer, scheduler = parts(seed=0)
    path = save(tmp_path, model, optimizer, scheduler, step=1)
    with safe_open(str(path / MODEL_FILE), framework="pt") as handle:
        keys = set(handle.keys())
    assert len(keys & {"embed.weight", "head.weight"}) == 1

    fresh = TiedLM()
    load_checkpoint(path, fresh, restore_rng=False)
    assert fresh.head.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, model.embed.weight)


def test_leftover_temporary_and_unmarked_directories_are_ignored_then_cleaned(tmp_path):
    model, optimizer, scheduler = parts()
    good = save(tmp_path, model, optimizer, scheduler, step=2)
    root = good.parent
    # A crash mid-save leaves a temporary directory; a copy by another tool may leave a
    # newer-looking step directory without the marker.
    temp = root / ".tmp-step_00000009-4242"
    temp.mkdir()
    (temp / MODEL_FILE).write_bytes(b"partial")
    unmarked = root / "step_00000007"
    unmarked.mkdir()
    (unmarked / STATE_FILE).write_text('{"global_step": 7}')

    assert latest_checkpoint(tmp_path) == good
    assert list_checkpoints(tmp_path) == [good]
    with pytest.raises(CheckpointError, match="step_00000007"):
        load_checkpoint(unmarked, TiedLM())

    save(tmp_path, model, optimizer, scheduler, step=4)
    assert not temp.exists() and not unmarked.exists()
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 4)


def test_latest_is_none_for_an_empty_run(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None


@pytest.mark.parametrize("greater_is_better, best_step", [(True, 2), (False, 3)])
def test_keep_last_prunes_old_checkpoints_but_keeps_the_best(tmp_path, greater_is_better, best_step):
    model, optimizer, scheduler = parts()
    metrics = {1: 0.5, 2: 0.9, 3: 0.1, 4: None, 5: 0.3, 6: 0.4}
    for step, metric in metrics.items():
        save(tmp_path, model, optimizer, scheduler, step, keep_last=2, metric=metric,
             greater_is_better=greater_is_better)  # fmt: skip
    kept = [int(p.name.split("_")[1]) for p in list_checkpoints(tmp_path)]
    assert kept == sorted({best_step, 5, 6})


def test_keep_last_zero_keeps_everything(tmp_path):
    model, optimizer, scheduler = parts()
    for step in range(1, 5):
        save(tmp_path, model, optimizer, scheduler, step, keep_last=0)
    assert len(list_checkpoints(tmp_path)) == 4


def test_saving_a_step_again_replaces_it(tmp_path):
    model, optimizer, scheduler = parts()
    save(tmp_path, model, optimizer, scheduler, step=3)
    with torch.no_grad():
        model.norm.weight.fill_(7.0)
    path = save(tmp_path, model, optimizer, scheduler, step=3)
    fresh = TiedLM()
    load_checkpoint(path, fresh, restore_rng=False)
    assert torch.all(fresh.norm.weight == 7.0)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def load_error(path, **kwargs) -> str:
    fresh, fresh_opt, fresh_sched = parts(seed=1)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, kwargs.get("model", fresh), fresh_opt, fresh_sched)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", [OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE, MODEL_FILE])
def test_truncated_file_raises_checkpoint_error_naming_it(tmp_path, name):
    path = save(tmp_path, *parts(), step=1)
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) // 2])
    assert name in load_error(path)


def test_missing_file_and_bad_state_json_are_named(tmp_path):
    path = save(tmp_path, *parts(), step=1)
    (path / OPTIMIZER_FILE).unlink()
    assert OPTIMIZER_FILE in load_error(path)

    (path / STATE_FILE).write_text("{not json")
    assert STATE_FILE in load_error(path)

    (path / MARKER_FILE).unlink()
    assert "incomplete" in load_error(path)


def test_weights_of_another_model_are_rejected(tmp_path):
    path = save(tmp_path, *parts(), step=1)
    message = load_error(path, model=nn.Linear(3, 3))
    assert MODEL_FILE in message and "missing" in message
