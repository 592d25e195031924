"""The training loop: AdamW + warm-up/cosine, gradient accumulation, bf16 autocast,
checkpoints, exact resume, a JSONL log and a progress bar, on top of Hugging Face Accelerate.

    trainer = Trainer(model, train_set, collate, cfg.train, "runs/x", evaluate=eval_fn,
                      metric_for_best="test.cider")
    metrics = trainer.fit(resume=True)   # continues from runs/x/checkpoints/ if any

Words used below:
- micro-batch: `cfg.batch_size` examples, one forward/backward;
- step: one optimizer update = `cfg.grad_accum_steps` micro-batches (on each process).
  `global_step`, `max_steps`, `warmup_steps`, `log_every` and `save_every_steps` count steps.

Exact resume: the data order of an epoch is a pure function of (seed, epoch), so a run that
restarts from a checkpoint (model, optimizer, scheduler, RNG states, position in the epoch)
computes the same batches and dropout masks as a run that never stopped, bit for bit, on a
single process. Examples that do not fill a whole step at the end of an epoch are dropped.
Log lines written after that checkpoint by the stopped run are removed on resume, so the
log reads as one run.

Streamed training data (an IterableDataset such as ShardedDataset) has no length: give
`train.steps_per_epoch`. Each epoch calls its `set_epoch` (if any) and reads that many
steps; a resumed epoch re-reads and discards the steps already done.

Bad samples: a batch may carry, under SKIPPED_KEY, the samples that failed to load while it
was made, as (index, message) pairs (vislm.data.bad_data). They are counted over all
processes, and more than `bad_data.max_fraction` of an epoch's samples stops the run.

Under a launcher each process trains on its share of every step and evaluates the whole
split (vislm/tasks/run.py); only the main process writes the log and checkpoints.

FSDP (`accelerate launch --use_fsdp --fsdp_version 2`): each process holds a shard of the
weights, gradients and optimizer state of a copy of the model (vislm/train/fsdp.py). The
caller's module stays whole, on the CPU while training; it receives the full weights,
gathered from every process, to be evaluated, saved in checkpoints, and at the end.

Log lines in `out_dir/log.jsonl` ("epoch" is fractional: epochs completed so far, "time" is
training seconds, excluding evaluation and checkpointing, summed over resumed runs):
    {"step", "epoch", "loss", "<name>_loss"..., "lr", "grad_norm", "samples_per_s", "time"}
    {"step", "epoch", "eval": {...}}
    {"step", "epoch", "skipped": "<why>", "time"}
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, send_to_device, set_seed
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from vislm.config import TrainConfig
from vislm.data.bad_data import SKIPPED_KEY, BadData
from vislm.data.bucketing import bucketed_batches
from vislm.errors import ConfigError, DataError
from vislm.train.allocator import keep_freed_memory
from vislm.train.checkpoint import (
    CHECKPOINTS,
    latest_checkpoint,
    load_checkpoint,
    read_trainer_state,
    save_checkpoint,
)
from vislm.train.fsdp import full_optimizer_state, full_weights, load_sharded_checkpoint, shardable_copy
from vislm.train.optim import build_optimizer, build_scheduler
from vislm.train.precision import attention_for_precision

logger = logging.getLogger(__name__)

Evaluate = Callable[[torch.nn.Module], Mapping[str, Any]]


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        train_dataset: Any,
        collate_fn: Callable | None,
        cfg: TrainConfig,
        out_dir: str | Path,
        evaluate: Evaluate | None = None,
        metric_for_best: str | None = None,
        accelerator: Accelerator | None = None,
        *,
        greater_is_better: bool | None = None,
        num_workers: int = 0,
        bad_data: BadData | None = None,
        lengths: Sequence[int] | None = None,
    ):
        """`metric_for_best` is a (dotted, for nested results) key of what `evaluate` returns;
        `greater_is_better` defaults to False for losses, perplexities and errors (see
        `_LOWER_IS_BETTER`) and True otherwise. `bad_data` receives the samples that failed
        to load during training and sets their limit. `lengths` (text length per example) groups
        batches by length under `train.length_bucketing`; by default the dataset's `lengths()`."""
        _check_config(cfg)
        if metric_for_best and evaluate is None:
            raise ConfigError(f"metric_for_best '{metric_for_best}' needs an evaluate function")
        self.model = model
        self.train_dataset = train_dataset
        self.collate_fn = collate_fn
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.evaluate = evaluate
        self.metric_for_best = metric_for_best
        if greater_is_better is None:
            greater_is_better = not _lower_is_better(metric_for_best)
        self.greater_is_better = greater_is_better
        self.num_workers = num_workers
        self.bad_data = bad_data
        self.lengths = lengths
        self.streaming = isinstance(train_dataset, IterableDataset)
        self._owns_accelerator = accelerator is None
        self._fsdp = False  # whether fit() trains a sharded copy of the model (FSDP)
        self._renamed: dict[str, str] = {}  # that copy's names of 0-d parameters -> the model's
        self.accelerator = accelerator if accelerator is not None else make_accelerator(cfg)
        _check_accelerator(self.accelerator, cfg)

        per_step = cfg.batch_size * cfg.grad_accum_steps * self.accelerator.num_processes
        if self.streaming:
            if cfg.steps_per_epoch <= 0:
                raise ConfigError("train.steps_per_epoch must be set (> 0) for a streamed training set, "
                                  "which has no length")
            self.steps_per_epoch = cfg.steps_per_epoch
        else:
            self.steps_per_epoch = len(train_dataset) // per_step
            if cfg.steps_per_epoch > 0:
                self.steps_per_epoch = min(self.steps_per_epoch, cfg.steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"train.batch_size={cfg.batch_size} x train.grad_accum_steps={cfg.grad_accum_steps} "
                f"x {self.accelerator.num_processes} processes needs more than the "
                f"{len(train_dataset)} training examples"
            )
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps > 0:
            self.total_steps = min(self.total_steps, cfg.max_steps)

        self._reset_progress()

    def _reset_progress(self) -> None:
        """Progress, saved in checkpoints and restored on resume."""
        self.global_step = 0
        self.epoch = 0  # index of the epoch in progress
        self.step_in_epoch = 0  # steps done in that epoch
        self.best_metric: float | None = None
        self.last_metrics: dict = {}
        self.train_seconds = 0.0
        self.samples_seen = 0
        self.samples_per_s = 0.0
        self.failed_in_epoch = 0  # samples of this epoch that failed to load, all processes

    # -----------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        """Train to the end; return the last evaluation's metrics ({} without `evaluate`).

        `resume=True` continues from the newest checkpoint in `out_dir` (and starts from
        scratch if there is none). `resume=False` starts over: old checkpoints and log in
        `out_dir` are removed, since a later resume must not mix two runs.
        """
        cfg = self.cfg
        if cfg.allocator == "keep":
            keep_freed_memory()
        if self._owns_accelerator and not _accelerator_fits(self.accelerator, cfg):
            # Accelerate's settings are shared by every Accelerator of the process, so another
            # Trainer created since ours (say a bf16 one) changed them: build ours again.
            self.accelerator = make_accelerator(cfg)
        acc = self.accelerator
        _check_accelerator(acc, cfg)
        self._reset_progress()
        checkpoint = latest_checkpoint(self.out_dir) if resume else None
        if acc.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if not resume:
                self._clear_previous_run()
        acc.wait_for_everyone()

        set_seed(cfg.seed)
        self._fsdp = acc.distributed_type == DistributedType.FSDP
        trained = self.model
        if self._fsdp:
            # FSDP shards the module it prepares, in place: it gets a copy, and the caller's
            # module waits on the CPU, leaving the accelerator's memory to the shards.
            trained, self._renamed = shardable_copy(self.model)
            self.model.to("cpu")
            # On by default under `accelerate launch --use_fsdp`: the main process alone loads
            # the weights and broadcasts them, which Accelerate does for parameters only (it
            # fails on buffers such as batch-norm statistics). Every process built the same
            # model from the same seed, so none needs the main process's copy.
            acc.state.fsdp_plugin.cpu_ram_efficient_loading = False
        optimizer = build_optimizer(trained, cfg.lr, cfg.weight_decay, cfg.betas)
        scheduler = build_scheduler(optimizer, cfg.warmup_steps, self.total_steps, cfg.min_lr_ratio)
        # The scheduler is stepped by hand once per step, so Accelerate does not wrap it.
        model, optimizer = acc.prepare(trained, optimizer)
        if checkpoint is not None:
            self._resume(checkpoint, model, optimizer, scheduler)
        elif resume:
            logger.info("no checkpoint in %s: starting from scratch", self.out_dir / CHECKPOINTS)
        if resume and acc.is_main_process:
            truncate_log(self.out_dir / "log.jsonl", self.global_step)

        self._log_file = None
        if acc.is_main_process:
            self._log_file = open(self.out_dir / "log.jsonl", "a", encoding="utf-8")
        self._bar = tqdm(
            total=self.total_steps,
            initial=self.global_step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not (cfg.progress and acc.is_main_process),
        )
        self._bad_in_a_row = 0
        self._failures_seen: set = set()  # indices (or shard/key names) of failed samples
        self._reset_interval()
        try:
            # bf16 on CPU: the attention that trains fastest, same results (train/precision.py).
            with attention_for_precision(trained, cfg.precision, acc.device.type):
                self._train(model, optimizer, scheduler)
        finally:
            self._bar.close()
            if self._log_file is not None:
                self._log_file.close()
            # Give the caller back a plain module (Accelerate patched forward for autocast).
            acc.unwrap_model(model, keep_fp32_wrapper=False, keep_torch_compile=False)
        if self._fsdp:
            self._whole_model(model)  # the caller's module gets the trained weights
        self.samples_per_s = self.samples_seen / self.train_seconds if self.train_seconds > 0 else 0.0
        return self.last_metrics

    def _train(self, model, optimizer, scheduler) -> None:
        while self.global_step < self.total_steps:
            self._train_epoch(model, optimizer, scheduler)
            self._sync_buffers(model)
            epoch_done = self.step_in_epoch == self.steps_per_epoch
            if epoch_done:
                self.epoch += 1
                self.step_in_epoch = 0
                self.failed_in_epoch = 0
            elif self.global_step < self.total_steps:
                raise DataError(
                    f"the training stream ended after {self.step_in_epoch} of the {self.steps_per_epoch} steps "
                    f"of epoch {self.epoch + 1} (train.steps_per_epoch); lower it to what every process can read"
                )
            finished = self.global_step >= self.total_steps
            every = self.cfg.eval_every
            due = finished or (epoch_done and every > 0 and self.epoch % every == 0)
            metric = self._evaluate(model) if (self.evaluate is not None and due) else None
            self._save(model, optimizer, scheduler, metric)

    # -----------------------------------------------------------------------------------
    def _sync_buffers(self, model) -> None:
        """Give every process the main process's buffers (batch-norm statistics).

        DDP averages gradients, so parameters agree, but each process updates its buffers
        from its own batches; DDP only copies the main process's at the start of the next
        forward. Evaluating, or ending the run, without this would leave each process with
        a slightly different model, and metrics that differ from the saved model's.
        """
        if self.accelerator.num_processes == 1:
            return
        for buffer in self._unwrapped(model).buffers():
            torch.distributed.broadcast(buffer, src=0)

    def _micro_batches(self):
        """This process's micro-batches for the rest of the current epoch."""
        acc, cfg = self.accelerator, self.cfg
        accum = cfg.grad_accum_steps
        done, wanted = self.step_in_epoch * accum, self.steps_per_epoch * accum
        options = dict(
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            pin_memory=acc.device.type == "cuda",
            # Without its own generator, iterating a DataLoader draws a worker seed from the
            # global torch RNG, which would shift the dropout masks of a resumed run.
            generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, self.epoch)),
        )
        if not self.streaming:
            batches = self._epoch_order()[:wanted]
            # Skipping at the index level: a resumed epoch does not load the skipped examples.
            return DataLoader(self.train_dataset, batch_sampler=batches[done:], **options)
        if hasattr(self.train_dataset, "set_epoch"):
            self.train_dataset.set_epoch(self.epoch)
        loader = DataLoader(self.train_dataset, batch_size=cfg.batch_size, drop_last=True, **options)
        # A stream cannot seek: a resumed epoch reads the steps already done and drops them.
        return itertools.islice(loader, done, wanted)

    def _epoch_order(self) -> list[list[int]]:
        """This process's micro-batches of the current epoch: random, or random groups of
        similar lengths under train.length_bucketing (less padding, vislm/data/bucketing.py)."""
        acc, cfg = self.accelerator, self.cfg
        if cfg.length_bucketing:
            return bucketed_batches(
                self._example_lengths(), cfg.batch_size, cfg.grad_accum_steps,
                epoch_seed(cfg.seed, self.epoch), acc.process_index, acc.num_processes,
            )  # fmt: skip
        return epoch_batches(
            len(self.train_dataset), cfg.batch_size, cfg.grad_accum_steps, cfg.seed, self.epoch,
            acc.process_index, acc.num_processes,
        )  # fmt: skip

    def _example_lengths(self) -> Sequence[int]:
        """`lengths` as given, else `lengths()` of the dataset or of a dataset it wraps
        one to one (`.dataset` of the same length, as vislm.data.bad_data's wrapper)."""
        if self.lengths is None:
            dataset = self.train_dataset
            while not hasattr(dataset, "lengths") and len(getattr(dataset, "dataset", ())) == len(dataset):
                dataset = dataset.dataset
            if not hasattr(dataset, "lengths"):
                raise ConfigError("train.length_bucketing needs the length of every example: pass "
                                  "Trainer(lengths=...) or use a dataset with a lengths() method")
            self.lengths = list(dataset.lengths())
        if len(self.lengths) != len(self.train_dataset):
            raise ConfigError(f"{len(self.lengths)} lengths for {len(self.train_dataset)} training examples")
        return self.lengths

    def _train_epoch(self, model, optimizer, scheduler) -> None:
        """Run the rest of the current epoch, or until `total_steps`."""
        acc, cfg = self.accelerator, self.cfg
        accum = cfg.grad_accum_steps
        model.train()
        terms: dict[str, float] = {}
        bad, failed = False, 0
        self._tick = time.perf_counter()
        for index, batch in enumerate(self._micro_batches()):
            last = index % accum == accum - 1
            failed += self._take_failures(batch)
            # Gradients are synchronised across processes on the last micro-batch only.
            with nullcontext() if last else acc.no_sync(model):
                values = self._micro_step(model, send_to_device(batch, acc.device))
            bad = bad or not math.isfinite(values["loss"])
            for name, value in values.items():
                terms[name] = terms.get(name, 0.0) + value / accum
            if not last:
                continue
            self._optimizer_step(model, optimizer, scheduler, terms, bad, failed)
            terms, bad, failed = {}, False, 0
            if self.global_step >= self.total_steps:
                break
            every = cfg.save_every_steps
            if every > 0 and self.global_step % every == 0 and self.step_in_epoch < self.steps_per_epoch:
                self._save(model, optimizer, scheduler, None)
                self._tick = time.perf_counter()

    def _micro_step(self, model, batch) -> dict[str, float]:
        """Forward and backward one micro-batch; return its scalar loss terms."""
        out = model(batch)
        if not isinstance(out, Mapping) or "loss" not in out:
            got = sorted(out) if isinstance(out, Mapping) else type(out).__name__
            raise TypeError(f"model(batch) must return a dict with a 'loss' entry, got {got}")
        # Always backward, even a NaN loss: on several processes every one must take part in
        # the gradient all-reduce; the bad gradients are discarded in _optimizer_step.
        self.accelerator.backward(out["loss"])
        return {name: _scalar(value) for name, value in out.items() if _is_loss_term(name, value)}

    def _take_failures(self, batch: Any) -> int:
        """Remove the failed samples, (index, message) pairs, from `batch`; record new ones;
        return how many."""
        if not isinstance(batch, dict) or SKIPPED_KEY not in batch:
            return 0
        failures = batch.pop(SKIPPED_KEY)
        for index, message in failures:
            # An unreadable file fails again every epoch; the summary counts each sample once.
            if self.bad_data is not None and index not in self._failures_seen:
                self._failures_seen.add(index)
                self.bad_data.skip(message)
        return len(failures)

    def _optimizer_step(self, model, optimizer, scheduler, terms: dict[str, float], bad_loss: bool,
                        failed: int = 0):
        acc, cfg = self.accelerator, self.cfg
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = float(acc.clip_grad_norm_(model.parameters(), max_norm))
        # All processes must agree to skip (or their weights would drift apart) and to stop.
        flags = torch.tensor([float(bad_loss or not math.isfinite(grad_norm)), float(failed)], device=acc.device)
        flags = acc.reduce(flags, reduction="sum").tolist()
        skip = flags[0] > 0
        self._count_failures(int(flags[1]))
        lr = optimizer.param_groups[0]["lr"]
        if not skip:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # The schedule follows the position in training, skipped steps included, so the
        # learning-rate curve does not depend on how many steps were skipped.
        scheduler.step()
        self.global_step += 1
        self.step_in_epoch += 1
        self._bar.update(1)

        now = time.perf_counter()
        seconds, self._tick = now - self._tick, now
        samples = cfg.batch_size * cfg.grad_accum_steps * acc.num_processes
        self.train_seconds += seconds
        self.samples_seen += samples
        self._interval["seconds"] += seconds
        self._interval["samples"] += samples

        if skip:
            self._record_bad_step("non-finite loss" if bad_loss else "non-finite gradient norm")
        else:
            self._bad_in_a_row = 0
            self._interval["steps"] += 1
            for name, value in {**terms, "grad_norm": grad_norm}.items():
                self._interval["sums"][name] = self._interval["sums"].get(name, 0.0) + value
        self._interval["lr"] = lr  # the rate of the latest step, not a mean
        if self.global_step % cfg.log_every == 0 or self.global_step == self.total_steps:
            self._log_interval()

    def _count_failures(self, failed: int) -> None:
        """Stop when this epoch's failed samples, over all processes, pass the limit."""
        self.failed_in_epoch += failed
        if self.bad_data is None or failed == 0:
            return
        per_epoch = self.steps_per_epoch * self.cfg.batch_size * self.cfg.grad_accum_steps
        per_epoch *= self.accelerator.num_processes
        if self.failed_in_epoch > self.bad_data.max_fraction * per_epoch:
            what = f"training samples of epoch {self.epoch + 1} (failed to load)"
            raise DataError(self.bad_data.too_many(self.failed_in_epoch, per_epoch, what))

    def _record_bad_step(self, reason: str) -> None:
        self._bad_in_a_row += 1
        logger.warning("step %d skipped: %s", self.global_step, reason)
        self._write_log(
            {"step": self.global_step, "epoch": self._epoch_float(), "skipped": reason,
             "time": round(self.train_seconds, 3)}
        )  # fmt: skip
        if self._bad_in_a_row >= self.cfg.max_bad_steps:
            first = self.global_step - self._bad_in_a_row + 1
            raise FloatingPointError(
                f"training stopped in epoch {self.epoch + 1}: steps {first}-{self.global_step} all had a "
                f"non-finite loss or gradient (train.max_bad_steps={self.cfg.max_bad_steps}); "
                "lower train.lr, check the data, or try train.precision=fp32"
            )

    # -----------------------------------------------------------------------------------
    def _reset_interval(self) -> None:
        self._interval: dict[str, Any] = {"steps": 0, "samples": 0, "seconds": 0.0, "sums": {}, "lr": 0.0}

    def _log_interval(self) -> None:
        """Write the means over the steps since the last log line."""
        interval = self._interval
        self._reset_interval()
        if interval["steps"] == 0:  # every step of the interval was skipped
            return
        means = {name: total / interval["steps"] for name, total in interval["sums"].items()}
        samples_per_s = interval["samples"] / interval["seconds"] if interval["seconds"] > 0 else 0.0
        record = {"step": self.global_step, "epoch": self._epoch_float(), **means, "lr": interval["lr"]}
        record.update(samples_per_s=round(samples_per_s, 2), time=round(self.train_seconds, 3))
        self._write_log(record)
        postfix = {"loss": f"{means['loss']:.4f}", "samples_s": f"{samples_per_s:.0f}"}
        self._bar.set_postfix(postfix, refresh=False)

    def _write_log(self, record: dict) -> None:
        if self._log_file is None:
            return
        self._log_file.write(json.dumps(record) + "\n")
        self._log_file.flush()  # a crash must not lose the lines before it

    def _epoch_float(self) -> float:
        return round(self.epoch + self.step_in_epoch / self.steps_per_epoch, 4)

    # -----------------------------------------------------------------------------------
    def _unwrapped(self, model) -> torch.nn.Module:
        """The module under Accelerate's wrappers (DDP, torch.compile): its parameter names
        are the model's own, as checkpoints store them."""
        return self.accelerator.unwrap_model(model, keep_torch_compile=False)

    def _whole_model(self, model) -> torch.nn.Module:
        """The trained model, unsharded: the unwrapped `model`, or under FSDP the caller's
        module given the full weights, on the accelerator. Under FSDP every process must call
        this, as each sends its shards to all the others."""
        if not self._fsdp:
            return self._unwrapped(model)
        weights = full_weights(model, self._renamed, everywhere=True)
        self.model.to(self.accelerator.device)
        self.model.load_state_dict(weights)
        return self.model

    def _evaluate(self, model) -> float | None:
        """Run the caller's evaluation on every process; return the metric for best, if any."""
        unwrapped = self._whole_model(model)
        unwrapped.eval()
        with torch.no_grad():
            metrics = self.evaluate(unwrapped)
        unwrapped.train()
        if self._fsdp:
            self.model.to("cpu")  # back to training, whose shards need the accelerator's memory
        if not isinstance(metrics, Mapping):
            kind = type(metrics).__name__
            raise TypeError(f"evaluate(model) must return a dict of metrics, got {kind}")
        self.last_metrics = _plain(metrics)
        self._write_log({"step": self.global_step, "epoch": self._epoch_float(), "eval": self.last_metrics})
        logger.info("step %d eval: %s", self.global_step, self.last_metrics)
        if not self.metric_for_best:
            return None
        metric = _lookup(self.last_metrics, self.metric_for_best)
        best = self.best_metric
        if best is None or (metric > best if self.greater_is_better else metric < best):
            self.best_metric = metric
        return metric

    def _save(self, model, optimizer, scheduler, metric: float | None) -> None:
        acc = self.accelerator
        module, optimizer_state = self._unwrapped(model), optimizer  # save_checkpoint takes either
        if self._fsdp:
            # Every process sends its shards; the main process receives the full state and
            # saves it from the caller's whole module, so the files are a single process's.
            weights, optimizer_state = full_weights(model, self._renamed), full_optimizer_state(model, optimizer)
            module = self.model
            if acc.is_main_process:
                module.load_state_dict(weights)
        if acc.is_main_process:
            state = {
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step,
                "best_metric": self.best_metric,
                "last_eval": self.last_metrics,
                "train_seconds": self.train_seconds,
                "samples_seen": self.samples_seen,
                # What a resume must match for step_in_epoch to mean the same examples.
                "batch_size": self.cfg.batch_size,
                "grad_accum_steps": self.cfg.grad_accum_steps,
                "num_processes": acc.num_processes,
                "dataset_size": self._dataset_size(),
                "failed_in_epoch": self.failed_in_epoch,
            }
            if self._fsdp:
                state["fsdp"] = True  # its optimizer.pt is keyed by parameter name
            save_checkpoint(
                self.out_dir,
                module,
                optimizer_state,
                scheduler,
                state,
                keep_last=self.cfg.keep_last,
                metric=metric,
                greater_is_better=self.greater_is_better,
            )
        acc.wait_for_everyone()

    def _resume(self, checkpoint: Path, model, optimizer, scheduler) -> None:
        acc = self.accelerator
        state = read_trainer_state(checkpoint)
        current = {
            "train.batch_size": (state.get("batch_size"), self.cfg.batch_size),
            "train.grad_accum_steps": (state.get("grad_accum_steps"), self.cfg.grad_accum_steps),
            "number of processes": (state.get("num_processes"), acc.num_processes),
            "training set size": (state.get("dataset_size"), self._dataset_size()),
            # The optimizer state of an FSDP checkpoint does not load into a DDP run, nor the reverse.
            "FSDP": (state.get("fsdp", False), self._fsdp),
        }
        for name, (saved, now) in current.items():
            if saved != now:
                raise ConfigError(
                    f"cannot resume from {checkpoint}: it was saved with {name}={saved}, this run has {now}"
                )
        if self._fsdp:
            state = load_sharded_checkpoint(checkpoint, self.model, model, optimizer, scheduler, self._renamed)
        else:
            state = load_checkpoint(checkpoint, self._unwrapped(model), optimizer, scheduler, device=acc.device)
        self.global_step = state["global_step"]
        self.epoch = state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        self.best_metric = state.get("best_metric")
        self.last_metrics = state.get("last_eval") or {}
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.samples_seen = int(state.get("samples_seen", 0))
        self.failed_in_epoch = int(state.get("failed_in_epoch", 0))
        logger.info("resumed from %s (step %d)", checkpoint, self.global_step)

    def _dataset_size(self) -> int | str:
        return "stream" if self.streaming else len(self.train_dataset)

    def _clear_previous_run(self) -> None:
        old = self.out_dir / CHECKPOINTS
        if old.exists():
            logger.warning("fresh run: removing the previous run's checkpoints in %s", old)
            shutil.rmtree(old)
        (self.out_dir / "log.jsonl").unlink(missing_ok=True)


def truncate_log(path: Path, last_step: int) -> None:
    """Keep the log lines of steps up to `last_step`, the checkpoint a run resumes from.

    Lines after it were written by a run that then stopped; the resumed run writes them
    again. A line cut short by a kill, and lines without a step (end-of-run summaries),
    go too. Rewritten atomically: a kill now must not lose the whole log.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= last_step:
            kept.append(line)
    temp = path.with_name(path.name + ".tmp")
    temp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    temp.replace(path)


# ---------------------------------------------------------------------------------------
# Data order


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1000 + epoch


def epoch_batches(
    dataset_size: int,
    batch_size: int,
    accum: int,
    seed: int,
    epoch: int,
    process_index: int = 0,
    num_processes: int = 1,
) -> list[list[int]]:
    """This process's micro-batches (lists of example indices) for one epoch.

    A permutation seeded by (seed, epoch) is cut into global micro-batches of
    `batch_size * num_processes` examples; process p takes the p-th slice of each. The tail
    that does not fill a whole step (`accum` micro-batches) is dropped, so every step has
    the same size and accumulating 2 x b examples equals one batch of 2b.
    """
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(dataset_size, generator=generator).tolist()
    global_batch = batch_size * num_processes
    micro_batches = (dataset_size // (global_batch * accum)) * accum
    start = process_index * batch_size
    return [
        order[i * global_batch + start : i * global_batch + start + batch_size] for i in range(micro_batches)
    ]


# ---------------------------------------------------------------------------------------
# Accelerator and config checks


def process_state() -> PartialState:
    """This process's place in a launch (index, count, is_main_process), before any Accelerator.

    Asks for the CPU on a machine without CUDA, as make_accelerator does: without it,
    Accelerate sees two CPU processes of a launch as two unrelated single processes.
    """
    return PartialState(cpu=not torch.cuda.is_available())


def end_process_group() -> None:
    """Leave the launch's process group, if any, once this process is done with it.

    Python does not tear down a process group that is still alive at exit in any set order:
    a gloo worker thread that drops its last collective while the interpreter shuts down
    aborts the process ("terminate called without an active exception", pytorch#190489),
    after everything was written. Destroying the group first joins those threads.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """An Accelerator for `cfg`: CPU when no CUDA device, bf16 autocast when asked."""
    kwargs = dict(
        cpu=not torch.cuda.is_available(),
        mixed_precision=_mixed_precision(cfg),
        gradient_accumulation_steps=cfg.grad_accum_steps,
        # prepare() then wraps the model in torch.compile; unwrap_model (checkpoints, the
        # model handed back) returns the original module, so saved names do not change.
        dynamo_backend=_dynamo_backend(cfg),
    )
    try:
        acc = Accelerator(**kwargs)
    except ValueError as err:
        # Accelerate keeps one precision per process and refuses a second Accelerator with
        # another one; a single process that compares fp32 with bf16 runs (tests, benchmark
        # sweeps) needs both, so start its state over. Never done in a distributed launch.
        if "already been initialized" not in str(err) or PartialState().use_distributed:
            raise
        AcceleratorState._reset_state()
        acc = Accelerator(**kwargs)
    if not _accelerator_fits(acc, cfg) and not PartialState().use_distributed:
        # The compile backend, too, is kept per process, but a second Accelerator silently
        # inherits the first one's.
        AcceleratorState._reset_state()
        acc = Accelerator(**kwargs)
    fsdp_asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if fsdp_asked and acc.distributed_type != DistributedType.FSDP and acc.is_main_process:
        # Accelerate builds FSDP for GPUs (and other accelerators) only: on CPUs the same
        # launch trains data-parallel, every process holding the whole model.
        logger.warning("FSDP was asked for, but Accelerate shards on GPUs only: training without it (%s)",
                       acc.distributed_type.value)
    return acc


def _accelerator_fits(acc: Accelerator, cfg: TrainConfig) -> bool:
    same_precision = acc.mixed_precision == _mixed_precision(cfg)
    same_compile = _compile_backend(acc) == _dynamo_backend(cfg)
    return same_precision and same_compile and acc.gradient_accumulation_steps == cfg.grad_accum_steps


def _dynamo_backend(cfg: TrainConfig) -> str:
    return "no" if cfg.compile == "off" else cfg.compile


def _compile_backend(acc: Accelerator) -> str:
    """The torch.compile backend `acc` applies, in DynamoBackend's lower-case spelling."""
    return str(acc.state.dynamo_plugin.backend.value).lower()


def _mixed_precision(cfg: TrainConfig) -> str:
    return "bf16" if cfg.precision == "bf16" else "no"


def _check_accelerator(acc: Accelerator, cfg: TrainConfig) -> None:
    if acc.mixed_precision != _mixed_precision(cfg):
        raise ConfigError(
            f"train.precision={cfg.precision} but the accelerator uses mixed_precision={acc.mixed_precision}"
        )
    if acc.gradient_accumulation_steps != cfg.grad_accum_steps:
        raise ConfigError(
            f"train.grad_accum_steps={cfg.grad_accum_steps} but the accelerator accumulates "
            f"{acc.gradient_accumulation_steps} steps"
        )
    if acc.distributed_type == DistributedType.FSDP and not acc.is_fsdp2:
        # The trainer shards with PyTorch's fully_shard (FSDP2), written and tested for it
        # (vislm/train/fsdp.py); version 1 wraps the model in FullyShardedDataParallel.
        raise ConfigError("vislm trains with FSDP version 2 only: launch with --fsdp_version 2 "
                          "(or fsdp_version: 2 under fsdp_config in the Accelerate config file)")
    if _compile_backend(acc) != _dynamo_backend(cfg):
        raise ConfigError(f"train.compile={cfg.compile} but the accelerator compiles with "
                          f"{_compile_backend(acc)}")


def _check_config(cfg: TrainConfig) -> None:
    minimums = {
        "epochs": 1, "batch_size": 1, "grad_accum_steps": 1, "log_every": 1,
        "max_steps": 0, "warmup_steps": 0, "eval_every": 0, "save_every_steps": 0,
        "max_bad_steps": 1, "steps_per_epoch": 0,
    }  # fmt: skip
    for name, low in minimums.items():
        if getattr(cfg, name) < low:
            raise ConfigError(f"train.{name} must be >= {low}, got {getattr(cfg, name)}")
    if cfg.precision not in ("fp32", "bf16"):
        raise ConfigError(f"train.precision must be fp32 or bf16, got {cfg.precision!r}")
    if len(cfg.betas) != 2:
        raise ConfigError(f"train.betas must hold 2 numbers, got {cfg.betas}")
    if not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio}")


# ---------------------------------------------------------------------------------------
# Small helpers


def _is_loss_term(name: str, value: Any) -> bool:
    """"loss" and "*_loss" scalars are logged; logits and other tensors are not."""
    if name != "loss" and not name.endswith("_loss"):
        return False
    return isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1)


def _scalar(value: Any) -> float:
    return float(value.detach().float().item()) if isinstance(value, torch.Tensor) else float(value)


def _plain(metrics: Mapping) -> dict:
    """Metrics as JSON-ready numbers (tensors and numpy scalars become floats)."""
    out = {}
    for name, value in metrics.items():
        if isinstance(value, Mapping):
            out[str(name)] = _plain(value)
        elif hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
            out[str(name)] = value.item()
        else:
            out[str(name)] = value
    return out


def _lookup(metrics: dict, dotted: str) -> float:
    node: Any = metrics
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise ConfigError(
            f"metric_for_best '{dotted}' is not a number in the evaluation results: {_keys(metrics)}"
        )
    return float(node)


def _keys(metrics: dict, prefix: str = "") -> str:
    names = []
    for name, value in metrics.items():
        dotted = f"{prefix}{name}"
        names.append(_keys(value, dotted + ".") if isinstance(value, dict) else dotted)
    return ", ".join(names)


_LOWER_IS_BETTER = ("loss", "ppl", "perplexity", "error", "mse", "mae", "rmse", "wer", "cer")


def _lower_is_better(name: str | None) -> bool:
    """Guess the direction from the metric name: "val.loss", "ppl", "test.caption_mse"."""
    if not name:
        return False
    leaf = name.rsplit(".", 1)[-1].lower()
    return leaf.endswith("loss") or any(leaf == w or leaf.endswith("_" + w) for w in _LOWER_IS_BETTER)
