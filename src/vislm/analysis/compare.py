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
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from vislm.config import Config, ModelConfig, from_dict, load_config, save_config, to_dict
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
    baseline: bool = False  # the text-only model the others are measured against


@dataclass
class CompareConfig:
    base: Config = field(default_factory=Config)
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    strategies: List[StrategyConfig] = field(default_factory=list)


def load_compare_config(path, overrides=()) -> CompareConfig:
    cfg = load_config(path, list(overrides), cls=CompareConfig)
    if not cfg.strategies:
        raise ConfigError(f"{path}: 'strategies' lists no strategy to compare")
    keys = [(s.task, s.name) for s in cfg.strategies]
    if len(set(keys)) != len(keys) or any(not name for _, name in keys):
        raise ConfigError(f"{path}: every strategy needs a 'name', unique within its task; got {keys}")
    for strategy in cfg.strategies:
        if strategy.task not in TASK_METRICS:
            raise ConfigError(f"strategies.{strategy.name}.task must be one of "
                              f"{' | '.join(TASK_METRICS)}, got {strategy.task!r}")
    return cfg


def strategy_model(base: ModelConfig, overrides: Dict[str, Any], name: str) -> ModelConfig:
    """base.model with the strategy's keys on top; kwargs dicts are merged key by key, so a
    strategy names only what differs (its fusion, a fusion option)."""
    merged = to_dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return from_dict(ModelConfig, merged, prefix=f"strategies.{name}.model")


def run_config(cfg: CompareConfig, strategy: StrategyConfig, seed: int, tokenizer_dir: Path) -> Config:
    """The base config with this strategy's model and task, this seed and the shared tokenizer."""
    base = cfg.base
    return dataclasses.replace(
        base, task=strategy.task, model=strategy_model(base.model, strategy.model, strategy.name),
        train=dataclasses.replace(base.train, seed=seed),
        tokenizer=dataclasses.replace(base.tokenizer, path=str(tokenizer_dir)))


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


def run_compare(cfg: CompareConfig, out: str | Path, split: str = "test") -> List[dict]:
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

    rows = []
    for strategy in cfg.strategies:
        results = []
        for seed in cfg.seeds:
            log.info("compare: %s %s, seed %d", strategy.task, strategy.name, seed)
            results.append(train(run_config(cfg, strategy, seed, tokenizer_dir), run_dir(out, strategy, seed)))
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

    write_compare_report(out, rows)
    return rows
