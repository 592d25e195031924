"""`vislm compare`: which fusion strategy wins, on identical data, tokenizer, budget and seeds.

Every strategy is trained from the same `base` config (data, tokenizer, optimiser, step
budget) with each seed, and so is a text-only baseline that never sees the image. The
difference between a strategy and the baseline is what the image adds: the baseline's
caption perplexity divided by the strategy's, and the strategy's VQA accuracy minus the
baseline's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from vislm.config import Config, ModelConfig, TrainConfig, from_dict, load_config, save_config, to_dict
from vislm.errors import ConfigError
from vislm.tasks.data import load_split
from vislm.tasks.run import make_tokenizer, train

log = logging.getLogger(__name__)

# The metrics shown for each task, in table order; the first is the headline.
TASK_METRICS = {
    "caption": ["perplexity", "BLEU-4", "CIDEr", "faithfulness"],
    "vqa": ["accuracy"],
    "retrieval": ["t2i_R@1", "i2t_R@1", "mean_R"],
}


@dataclass
class StrategyConfig:
    name: str = ""  # the row label, e.g. "early" or "gated cross-attention"
    task: str = "vqa"  # caption | vqa | retrieval
    model: Dict[str, Any] = field(default_factory=dict)  # merged over base.model (dicts key by key)
    # Merged over base.train; every strategy of a task must end up with the same budget.
    train: Dict[str, Any] = field(default_factory=dict)
    baseline: bool = False  # the text-only model the others are measured against


@dataclass
class BackboneConfig:
    task: str = ""  # empty: no shared backbone; otherwise the task it is pre-trained on
    model: Dict[str, Any] = field(default_factory=dict)  # merged over base.model
    data: Dict[str, Any] = field(default_factory=dict)  # merged over base.data
    train: Dict[str, Any] = field(default_factory=dict)  # merged over base.train, e.g. {max_steps: 600}
    modules: List[str] = field(default_factory=lambda: ["vision."])  # what the strategies take from it
    freeze: bool = False  # True: the strategies keep the taken modules frozen


@dataclass
class CompareConfig:
    base: Config = field(default_factory=Config)
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    strategies: List[StrategyConfig] = field(default_factory=list)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    workers: int = 1  # runs trained at once, each in its own process


def load_compare_config(path, overrides=()) -> CompareConfig:
    cfg = load_config(path, list(overrides), cls=CompareConfig)
    if not cfg.strategies:
        raise ConfigError(f"{path}: 'strategies' lists no strategy to compare")
    keys = [(s.task, s.name) for s in cfg.strategies]
    if len(set(keys)) != len(keys) or any(not name for _, name in keys):
        raise ConfigError(f"{path}: every strategy needs a 'name', unique within its task; got {keys}")
    if cfg.workers < 1:
        raise ConfigError(f"{path}: workers must be at least 1, got {cfg.workers}")
    if cfg.backbone.task and cfg.backbone.task not in TASK_METRICS:
        raise ConfigError(f"{path}: backbone.task must be one of {' | '.join(TASK_METRICS)}, "
                          f"got {cfg.backbone.task!r}")
    budgets: Dict[str, tuple] = {}
    for strategy in cfg.strategies:
        if strategy.task not in TASK_METRICS:
            raise ConfigError(f"strategies.{strategy.name}.task must be one of "
                              f"{' | '.join(TASK_METRICS)}, got {strategy.task!r}")
        budget = strategy_train(cfg.base.train, strategy)
        first = budgets.setdefault(strategy.task, (strategy.name, budget))
        if budget != first[1]:
            raise ConfigError(f"strategies.{strategy.name}.train: the {strategy.task} strategies must share one "
                              f"training budget, but it differs from {first[0]!r}'s")
    return cfg


def _overlay(base, overrides: Dict[str, Any], prefix: str):
    """A copy of the config dataclass `base` with `overrides` on top, checked key by key."""
    return from_dict(type(base), {**to_dict(base), **overrides}, prefix=prefix)


def strategy_train(base: TrainConfig, strategy: StrategyConfig) -> TrainConfig:
    return _overlay(base, strategy.train, f"strategies.{strategy.name}.train")


def strategy_model(base: ModelConfig, overrides: Dict[str, Any], name: str,
                   prefix: str = "") -> ModelConfig:
    """base.model with the strategy's keys on top; kwargs dicts are merged key by key, so a
    strategy names only what differs (its fusion, a fusion option)."""
    merged = to_dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return from_dict(ModelConfig, merged, prefix=prefix or f"strategies.{name}.model")


def run_config(cfg: CompareConfig, strategy: StrategyConfig, seed: int, tokenizer_dir: Path,
               backbone_dir: Path | None = None) -> Config:
    """The base config with this strategy's model and task, this seed and the shared tokenizer;
    a strategy that sees images starts from the backbone, unless it names its own init_from."""
    base = cfg.base
    model = strategy_model(base.model, strategy.model, strategy.name)
    if backbone_dir is not None and not strategy.baseline and not model.init_from:
        modules = list(cfg.backbone.modules)
        model = dataclasses.replace(model, init_from=str(backbone_dir), init_modules=modules,
                                    freeze=[*model.freeze, *modules] if cfg.backbone.freeze else model.freeze)
    return dataclasses.replace(
        base, task=strategy.task, model=model,
        train=dataclasses.replace(strategy_train(base.train, strategy), seed=seed),
        tokenizer=dataclasses.replace(base.tokenizer, path=str(tokenizer_dir)))


def backbone_config(cfg: CompareConfig, tokenizer_dir: Path) -> Config:
    """The backbone's run: the base config with its task, model and train keys, first seed."""
    backbone = cfg.backbone
    return dataclasses.replace(
        cfg.base, task=backbone.task,
        train=_overlay(cfg.base.train, {**backbone.train, "seed": cfg.seeds[0]}, "backbone.train"),
        data=_overlay(cfg.base.data, backbone.data, "backbone.data"),
        model=strategy_model(cfg.base.model, backbone.model, "backbone", prefix="backbone.model"),
        tokenizer=dataclasses.replace(cfg.base.tokenizer, path=str(tokenizer_dir)))


def run_dir(out: Path, strategy: StrategyConfig, seed: int) -> Path:
    slug = "".join(c if c.isalnum() else "_" for c in strategy.name).strip("_")
    return out / "runs" / strategy.task / slug / f"seed{seed}"


def summarise(values: List[float]) -> Dict[str, float]:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def visual_effect(row: dict, baseline: dict | None) -> Dict[str, float]:
    """How much the image helps, against the text-only baseline of the same task."""
    if baseline is None or row is baseline:
        return {}
    if row["task"] == "caption":
        mine, theirs = row["perplexity"]["mean"], baseline["perplexity"]["mean"]
        return {"perplexity_ratio": theirs / mine}
    if row["task"] == "vqa":
        return {"accuracy_gain": row["accuracy"]["mean"] - baseline["accuracy"]["mean"]}
    return {}


def _train_job(job: tuple) -> dict:
    config, out_dir = job
    return train(config, out_dir)


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def train_all(jobs: List[tuple], workers: int) -> List[dict]:
    """train() each (config, out_dir), `workers` at a time in separate processes; results in order.

    Small models leave much of a multi-threaded matmul idle, so on a few cores two
    one-thread processes get through more runs than one two-thread process; a run's
    result does not depend on how many threads computed it beyond float rounding."""
    if workers == 1:
        return [_train_job(job) for job in jobs]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    context = multiprocessing.get_context("spawn")  # no forked copies of torch's thread pools
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_limit_threads,
                             initargs=(max(1, cores // workers),)) as pool:
        return list(pool.map(_train_job, jobs))


def run_compare(cfg: CompareConfig, out: str | Path, split: str = "test") -> List[dict]:
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "compare_config.yaml")
    # One tokenizer for every run, so that perplexities are over the same tokens.
    tokenizer_dir = out / "tokenizer"
    base = cfg.base
    if base.tokenizer.path:
        tokenizer_dir = Path(base.tokenizer.path)
    else:
        make_tokenizer(base, load_split(base.data, base.data.train_split)).save(tokenizer_dir)

    backbone_dir = None
    if cfg.backbone.task:
        backbone_dir = out / "backbone"
        log.info("compare: backbone (%s %s)", cfg.backbone.task, cfg.backbone.model.get("fusion", base.model.fusion))
        train(backbone_config(cfg, tokenizer_dir), backbone_dir)

    jobs = [(strategy, seed) for strategy in cfg.strategies for seed in cfg.seeds]
    log.info("compare: %d runs, %d at a time", len(jobs), cfg.workers)
    results = train_all([(run_config(cfg, strategy, seed, tokenizer_dir, backbone_dir), run_dir(out, strategy, seed))
                         for strategy, seed in jobs], cfg.workers)
    by_strategy: Dict[int, List[dict]] = {}
    for (strategy, _), result in zip(jobs, results):
        by_strategy.setdefault(id(strategy), []).append(result)

    rows = []
    for strategy in cfg.strategies:
        results = by_strategy[id(strategy)]
        fusion = strategy_model(cfg.base.model, strategy.model, strategy.name).fusion
        row = {"strategy": strategy.name, "task": strategy.task, "fusion": fusion,
               "baseline": strategy.baseline, "seeds": list(cfg.seeds)}
        for metric in TASK_METRICS[strategy.task]:
            row[metric] = summarise([r["metrics"][split].get(metric) for r in results])
        row["params"] = results[0]["params"]["total"]
        row["train_seconds"] = summarise([r["train_seconds"] for r in results])["mean"]
        row["samples_per_s"] = summarise([r["samples_per_s"] for r in results])["mean"]
        row["run_dirs"] = [str(run_dir(out, strategy, s)) for s in cfg.seeds]
        rows.append(row)

    baselines = {row["task"]: row for row in rows if row["baseline"]}
    for row in rows:
        row["visual_effect"] = visual_effect(row, baselines.get(row["task"]))
    (out / "compare.json").write_text(json.dumps(rows, indent=2))
    from vislm.analysis.compare_report import write_compare_report

    write_compare_report(out, rows, setup={"wall_seconds": time.perf_counter() - started,
                                           "workers": cfg.workers, "runs": len(jobs),
                                           "backbone": str(backbone_dir) if backbone_dir else None})
    return rows
