"""Trainer, optimizer and schedule, on a toy linear regression (a few hundred steps in total)."""

import json
import math
import shutil

import pytest
import torch
from torch import nn

from vislm.config import TrainConfig
from vislm.errors import ConfigError
from vislm.train import Trainer
from vislm.train.checkpoint import latest_checkpoint, list_checkpoints
from vislm.train.optim import build_optimizer, build_scheduler, lr_factor
from vislm.train.trainer import epoch_batches


class Regression(torch.utils.data.Dataset):
    def __init__(self, size=24, dim=6):
        generator = torch.Generator().manual_seed(123)
        self.x = torch.randn(size, dim, generator=generator)
        weights = torch.randn(dim, 1, generator=generator)
        self.y = self.x @ weights + 0.1 * torch.randn(size, 1, generator=generator)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return {"x": self.x[index], "y": self.y[index]}


class Linear(nn.Module):
    """A linear model with optional dropout (so RNG state matters) and a scripted failure."""

    def __init__(self, dim=6, dropout=0.0, seed=0, crash_on_call=None, nan_on_calls=()):
        super().__init__()
        torch.manual_seed(seed)
        self.proj = nn.Linear(dim, 1)
        self.dropout = nn.Dropout(dropout)
        self.calls = 0
        self.crash_on_call = crash_on_call
        self.nan_on_calls = set(nan_on_calls)
        self.output_dtypes = []
        self.weights_seen = []

    def forward(self, batch):
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise KeyboardInterrupt("simulated crash")
        self.weights_seen.append(self.proj.weight.detach().clone())
        pred = self.proj(self.dropout(batch["x"]))
        self.output_dtypes.append(pred.dtype)
        loss = ((pred.float() - batch["y"]) ** 2).mean()
        if self.calls in self.nan_on_calls:
            loss = loss * float("nan")
        return {"loss": loss, "mse_loss": loss.detach(), "logits": pred}


def config(**overrides):
    base = dict(
        epochs=3, batch_size=4, lr=0.05, warmup_steps=2, min_lr_ratio=0.1, weight_decay=0.01,
        log_every=1, progress=False, seed=7, keep_last=2,
    )  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def read_log(out_dir):
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


def step_losses(out_dir) -> dict[int, float]:
    """Loss per step; a step logged twice (before a crash and after resuming) keeps the later."""
    return {r["step"]: r["loss"] for r in read_log(out_dir) if "loss" in r}


# ---------------------------------------------------------------------------------------
# Optimizer and schedule


def test_parameter_groups_exclude_biases_norms_embeddings_and_frozen():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.linear = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)
            self.frozen = nn.Linear(4, 4)
            self.frozen.requires_grad_(False)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight  # tied

    net = Net()
    optimizer = build_optimizer(net, lr=0.1, weight_decay=0.3, betas=[0.9, 0.95])
    groups = {g["name"]: g for g in optimizer.param_groups}
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(groups["decay"]["params"]) == {id(net.linear.weight)}
    assert ids(groups["no_decay"]["params"]) == {
        id(net.embed.weight), id(net.linear.bias), id(net.norm.weight), id(net.norm.bias)
    }  # fmt: skip
    assert len(groups["no_decay"]["params"]) == 4  # the tied table appears once
    assert groups["decay"]["weight_decay"] == 0.3 and groups["no_decay"]["weight_decay"] == 0.0
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    assert optimizer.defaults["fused"] is True  # supported by this torch build, and much faster


def test_schedule_warms_up_linearly_then_follows_the_cosine_to_the_floor():
    param = nn.Parameter(torch.zeros(2, 2))
    optimizer = torch.optim.AdamW([param], lr=2.0)
    scheduler = build_scheduler(optimizer, warmup_steps=4, total_steps=15, min_lr_ratio=0.1)
    lrs = []
    for _ in range(18):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # warm-up: (step + 1) / 4
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    # cosine over steps 4..14: peak at 4, half-way at 9, floor at the last step 14
    assert lrs[4] == pytest.approx(2.0)
    assert lrs[9] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))
    assert lrs[6] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 10))))
    assert lrs[14] == pytest.approx(0.2)
    assert lrs[15:] == pytest.approx([0.2] * 3)  # held at the floor past the end
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_schedule_without_warmup_starts_at_the_full_rate():
    assert lr_factor(0, 0, 10, 0.0) == 1.0
    assert lr_factor(9, 0, 10, 0.0) == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------
# Data order


def test_epoch_batches_are_seeded_by_seed_and_epoch_and_split_across_processes():
    first = epoch_batches(20, 3, 2, seed=1, epoch=0)
    assert first == epoch_batches(20, 3, 2, seed=1, epoch=0)
    assert first != epoch_batches(20, 3, 2, seed=1, epoch=1)
    assert first != epoch_batches(20, 3, 2, seed=2, epoch=0)
    assert len(first) == 6 and all(len(b) == 3 for b in first)  # 20 // (3*2) steps, tail dropped
    assert len({i for b in first for i in b}) == 18

    shards = [epoch_batches(20, 2, 1, 1, 0, process_index=p, num_processes=2) for p in range(2)]
    single = epoch_batches(20, 4, 1, seed=1, epoch=0)
    for step, batch in enumerate(single):  # process p gets the p-th half of each global batch
        assert shards[0][step] + shards[1][step] == batch


# ---------------------------------------------------------------------------------------
# Training


def test_fit_logs_evaluates_checkpoints_and_measures_throughput(tmp_path):
    seen = []

    def evaluate(model):
        seen.append((model.training, torch.is_grad_enabled()))
        return {"test": {"mse": 1.0 / (len(seen) + 1)}}

    model = Linear()
    trainer = Trainer(model, Regression(), None, config(log_every=2), tmp_path, evaluate, "test.mse")
    metrics = trainer.fit()

    assert trainer.global_step == 18  # 3 epochs x 24 // 4
    assert metrics == {"test": {"mse": 0.25}}
    assert seen == [(False, False)] * 3  # eval mode, no grad, once per epoch (eval_every=1)
    assert model.training

    log = read_log(tmp_path)
    train_lines = [r for r in log if "loss" in r]
    assert [r["step"] for r in train_lines] == list(range(2, 19, 2))
    for record in train_lines:
        assert {"step", "epoch", "loss", "mse_loss", "lr", "samples_per_s", "time"} <= set(record)
        assert "logits" not in record
    assert [(r["step"], r["epoch"]) for r in log if "eval" in r] == [(6, 1.0), (12, 2.0), (18, 3.0)]
    assert train_lines[-1]["loss"] < train_lines[0]["loss"]
    for record in train_lines:  # the lr of the line's own step (index step - 1) on the schedule
        expected = 0.05 * lr_factor(record["step"] - 1, warmup_steps=2, total_steps=18, min_lr_ratio=0.1)
        assert record["lr"] == pytest.approx(expected)

    # lower mse is better, so the first epoch's checkpoint is not the best one
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000012", "step_00000018"]
    assert trainer.best_metric == 0.25
    assert trainer.samples_seen == 18 * 4
    assert trainer.train_seconds > 0 and trainer.samples_per_s > 0


def test_best_checkpoint_survives_pruning(tmp_path):
    scores = iter([0.5, 0.9, 0.2, 0.1])
    cfg = config(epochs=4, keep_last=1)
    trainer = Trainer(Linear(), Regression(), None, cfg, tmp_path, lambda m: {"acc": next(scores)}, "acc")
    trainer.fit()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000012", "step_00000024"]


def test_max_steps_stops_early_and_saves(tmp_path):
    trainer = Trainer(Linear(), Regression(), None, config(max_steps=5, eval_every=0), tmp_path)
    assert trainer.fit() == {}
    assert trainer.global_step == 5 and trainer.total_steps == 5
    assert latest_checkpoint(tmp_path).name == "step_00000005"
    assert max(step_losses(tmp_path)) == 5


@pytest.mark.parametrize(
    "accum, save_every_steps, crash_at_step",
    [
        (1, 4, 11),  # last checkpoint at step 8, in the middle of the second epoch
        (2, 0, 5),  # last checkpoint at the end of the first epoch (3 steps of 2 micro-batches)
    ],
)
def test_resume_after_a_crash_matches_an_uninterrupted_run_bitwise(
    tmp_path, accum, save_every_steps, crash_at_step
):
    cfg = config(grad_accum_steps=accum, save_every_steps=save_every_steps, keep_last=5)

    def evaluate(model):
        torch.rand(1)  # evaluation may consume RNG; a resumed run must consume it identically
        return {"mse": 0.0}

    straight = Linear(dropout=0.3, seed=0)
    Trainer(straight, Regression(), None, cfg, tmp_path / "straight", evaluate).fit()

    crashing = Linear(dropout=0.3, seed=0, crash_on_call=(crash_at_step - 1) * accum + 1)
    with pytest.raises(KeyboardInterrupt):
        Trainer(crashing, Regression(), None, cfg, tmp_path / "resumed", evaluate).fit()
    checkpoint_step = int(latest_checkpoint(tmp_path / "resumed").name.split("_")[1])
    assert 0 < checkpoint_step < crash_at_step - 1
    assert max(step_losses(tmp_path / "resumed")) > checkpoint_step  # lines the resume must drop

    # A new process would build a new, differently initialised model: the checkpoint must
    # bring back everything.
    restarted = Linear(dropout=0.3, seed=99)
    trainer = Trainer(restarted, Regression(), None, cfg, tmp_path / "resumed", evaluate)
    trainer.fit(resume=True)

    # The resumed run started after the checkpoint, and its log reads as one run.
    assert restarted.calls == (18 // accum - checkpoint_step) * accum
    assert trainer.global_step == 18 // accum
    logged = [r["step"] for r in read_log(tmp_path / "resumed") if "loss" in r]
    assert logged == list(range(1, 18 // accum + 1))
    # exact float equality, step by step
    assert step_losses(tmp_path / "resumed") == step_losses(tmp_path / "straight")
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, restarted.state_dict()[name]), name


def test_resume_refuses_a_different_batch_size(tmp_path):
    Trainer(Linear(), Regression(), None, config(epochs=1), tmp_path).fit()
    trainer = Trainer(Linear(), Regression(), None, config(epochs=2, batch_size=6), tmp_path)
    with pytest.raises(ConfigError, match="train.batch_size=4"):
        trainer.fit(resume=True)


def test_resume_can_extend_a_finished_run(tmp_path):
    Trainer(Linear(), Regression(), None, config(epochs=1), tmp_path).fit()
    trainer = Trainer(Linear(), Regression(), None, config(epochs=2), tmp_path)
    trainer.fit(resume=True)
    assert trainer.global_step == 12
    assert sorted(step_losses(tmp_path)) == list(range(1, 13))


def test_fresh_fit_discards_the_previous_run(tmp_path):
    Trainer(Linear(), Regression(), None, config(epochs=2), tmp_path).fit()
    Trainer(Linear(), Regression(), None, config(epochs=1), tmp_path).fit()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000006"]
    assert sorted(step_losses(tmp_path)) == list(range(1, 7))


def test_gradient_accumulation_equals_a_batch_twice_as_large(tmp_path):
    small, large = Linear(seed=3), Linear(seed=3)
    accumulated = config(batch_size=4, grad_accum_steps=2, epochs=2, grad_clip=0.0)
    Trainer(small, Regression(size=32), None, accumulated, tmp_path / "a").fit()
    at_once = config(batch_size=8, grad_accum_steps=1, epochs=2, grad_clip=0.0)
    Trainer(large, Regression(size=32), None, at_once, tmp_path / "b").fit()

    assert small.calls == 2 * large.calls == 16
    losses_small, losses_large = step_losses(tmp_path / "a"), step_losses(tmp_path / "b")
    assert losses_small.keys() == losses_large.keys() == set(range(1, 9))
    for step in losses_small:
        assert losses_small[step] == pytest.approx(losses_large[step], abs=1e-6)
    for name, tensor in small.state_dict().items():
        torch.testing.assert_close(tensor, large.state_dict()[name], atol=1e-6, rtol=0)


def test_bf16_precision_autocasts_and_hands_back_a_plain_fp32_model(tmp_path):
    model = Linear()
    trainer = Trainer(model, Regression(), None, config(precision="bf16", epochs=2), tmp_path)
    trainer.fit()
    assert trainer.accelerator.mixed_precision == "bf16"
    assert set(model.output_dtypes) == {torch.bfloat16}
    assert model.proj.weight.dtype == torch.float32
    losses = step_losses(tmp_path)
    assert all(math.isfinite(v) for v in losses.values()) and losses[12] < losses[1]
    # after fit the module's forward runs without autocast again
    assert model({"x": torch.zeros(1, 6), "y": torch.zeros(1, 1)})["logits"].dtype == torch.float32


def test_trainers_with_different_precision_and_accumulation_can_interleave(tmp_path):
    # Accelerate shares its settings process-wide; each fit must still get its own.
    fp32_model, bf16_model = Linear(), Linear()
    fp32 = Trainer(fp32_model, Regression(), None, config(epochs=1), tmp_path / "a")
    bf16_cfg = config(epochs=1, precision="bf16", grad_accum_steps=2)
    bf16 = Trainer(bf16_model, Regression(), None, bf16_cfg, tmp_path / "b")
    fp32.fit()
    bf16.fit()
    assert set(fp32_model.output_dtypes) == {torch.float32} and fp32.global_step == 6
    assert set(bf16_model.output_dtypes) == {torch.bfloat16} and bf16.global_step == 3


def test_non_finite_steps_are_skipped_and_logged(tmp_path):
    model = Linear(nan_on_calls={3, 4})
    trainer = Trainer(model, Regression(), None, config(epochs=1), tmp_path)
    trainer.fit()
    assert trainer.global_step == 6
    skipped = [(r["step"], r["skipped"]) for r in read_log(tmp_path) if "skipped" in r]
    assert skipped == [(3, "non-finite loss"), (4, "non-finite loss")]
    assert sorted(step_losses(tmp_path)) == [1, 2, 5, 6]
    # the weights seen by calls 3, 4 and 5 are the same: steps 3 and 4 changed nothing
    assert torch.equal(model.weights_seen[2], model.weights_seen[3])
    assert torch.equal(model.weights_seen[3], model.weights_seen[4])
    assert not torch.equal(model.weights_seen[1], model.weights_seen[2])
    assert torch.isfinite(model.proj.weight).all()


def test_training_stops_after_ten_non_finite_steps_in_a_row(tmp_path):
    model = Linear(nan_on_calls=set(range(2, 30)))
    trainer = Trainer(model, Regression(), None, config(epochs=5), tmp_path)
    with pytest.raises(FloatingPointError, match="steps 2-11"):
        trainer.fit()
    assert model.calls == 11


def test_config_errors_are_caught_before_training(tmp_path):
    with pytest.raises(ConfigError, match="train.grad_accum_steps"):
        Trainer(Linear(), Regression(), None, config(grad_accum_steps=0), tmp_path)
    with pytest.raises(ConfigError, match="24 training examples"):
        Trainer(Linear(), Regression(), None, config(batch_size=32), tmp_path)
    with pytest.raises(ConfigError, match="metric_for_best"):
        Trainer(Linear(), Regression(), None, config(), tmp_path, metric_for_best="acc")


def test_unknown_metric_for_best_names_the_available_metrics(tmp_path):
    evaluate = lambda m: {"val": {"acc": 1}}  # noqa: E731
    trainer = Trainer(Linear(), Regression(), None, config(epochs=1), tmp_path, evaluate, "acc")
    with pytest.raises(ConfigError, match="val.acc"):
        trainer.fit()


class Regressor(nn.Module):
    """Linear without the test hooks (Python side effects make torch.compile recompile)."""

    def __init__(self, dim=6):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(dim, 1)

    def forward(self, batch):
        loss = ((self.proj(batch["x"]) - batch["y"]) ** 2).mean()
        return {"loss": loss, "mse_loss": loss.detach()}


HAS_CXX = bool(shutil.which("c++") or shutil.which("g++"))


@pytest.mark.parametrize("backend", [
    "eager", "aot_eager",
    pytest.param("inductor", marks=pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler"))])
def test_compiled_training_matches_eager_and_saves_plain_names(tmp_path, backend):
    # "eager"/"aot_eager" run the graphs torch.compile captures (the backward through
    # AOTAutograd for the latter) without generating kernels; "inductor" generates and
    # builds them (about 8 s for this model with an empty cache).
    torch._dynamo.reset()
    plain, compiled = Regressor(), Regressor()
    Trainer(plain, Regression(), None, config(epochs=2), tmp_path / "plain").fit()
    trainer = Trainer(compiled, Regression(), None, config(epochs=2, compile=backend),
                      tmp_path / "compiled")
    trainer.fit()
    assert trainer.accelerator.state.dynamo_plugin.backend.value.lower() == backend
    expected, got = step_losses(tmp_path / "plain"), step_losses(tmp_path / "compiled")
    assert got.keys() == expected.keys()
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-5, abs=1e-7)
    from safetensors.torch import load_file

    saved = latest_checkpoint(tmp_path / "compiled")
    names = set(load_file(str(saved / "model.safetensors")))
    assert names == set(plain.state_dict())  # no "_orig_mod." prefixes
    # The caller gets its own module back, not the compiled wrapper.
    assert type(compiled) is Regressor
    assert not torch.equal(compiled.proj.weight, Regressor().proj.weight)  # it was trained
