"""compare.md: the table of strategies, a plot of the headline metrics and learning curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402

from vislm.analysis.compare import TASK_METRICS  # noqa: E402


def _cell(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _effect(row: dict) -> str:
    effect = row.get("visual_effect") or {}
    if "perplexity_ratio" in effect:
        return f"perplexity {effect['perplexity_ratio']:.2f}x lower"
    if "accuracy_gain" in effect:
        return f"accuracy {100 * effect['accuracy_gain']:+.1f} points"
    return "baseline" if row["baseline"] else ""


def table(rows: List[dict], task: str) -> List[str]:
    metrics = TASK_METRICS[task]
    lines = ["| strategy | fusion | " + " | ".join(metrics) + " | visual effect | params | train s | samples/s |",
             "|---" * (len(metrics) + 6) + "|"]
    for row in (r for r in rows if r["task"] == task):
        cells = " | ".join(_cell(row[m]) for m in metrics)
        lines.append(f"| {row['strategy']} | {row['fusion']} | {cells} | {_effect(row)} | "
                     f"{row['params']:,} | {row['train_seconds']:.0f} | {row['samples_per_s']:.0f} |")
    return lines


def plot_metrics(rows: List[dict], out: Path) -> Path:
    tasks = [t for t in TASK_METRICS if any(r["task"] == t for r in rows)]
    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        metric = TASK_METRICS[task][0]
        chosen = [r for r in rows if r["task"] == task]
        means = [r[metric]["mean"] or 0.0 for r in chosen]
        stds = [r[metric]["std"] or 0.0 for r in chosen]
        axis.bar([r["strategy"] for r in chosen], means, yerr=stds, capsize=4,
                 color=["#999999" if r["baseline"] else "#3b75af" for r in chosen])
        axis.set_title(f"{task}: {metric}")
        axis.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    path = out / "compare_metrics.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _loss_curve(run_dir: Path) -> Dict[int, float]:
    curve = {}
    log_file = run_dir / "log.jsonl"
    if log_file.is_file():
        for line in log_file.read_text().splitlines():
            record = json.loads(line)
            if "loss" in record:
                curve[record["step"]] = record["loss"]
    return curve


def plot_learning_curves(rows: List[dict], out: Path) -> Path:
    tasks = [t for t in TASK_METRICS if any(r["task"] == t for r in rows)]
    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        for row in (r for r in rows if r["task"] == task):
            curves = [_loss_curve(Path(d)) for d in row["run_dirs"]]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            mean = [sum(c[s] for c in curves) / len(curves) for s in steps]
            axis.plot(steps, mean, label=row["strategy"], linestyle="--" if row["baseline"] else "-")
        axis.set_title(f"{task}: training loss (mean over seeds)")
        axis.set_xlabel("step")
        axis.set_yscale("log")
        axis.legend(fontsize=8)
    figure.tight_layout()
    path = out / "compare_curves.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_compare_report(out: Path, rows: List[dict], setup: Dict | None = None) -> Path:
    lines = ["# Fusion strategies compared", "",
             "Every row: the same data, tokenizer, step budget and seeds "
             f"({', '.join(map(str, rows[0]['seeds']))}); mean ± std over seeds on the test split.",
             "The visual effect compares each model with the text-only baseline of its task.", ""]
    if setup:
        if setup.get("backbone"):
            lines += [f"Every strategy that sees images starts its vision tower from the backbone "
                      f"trained first in `{setup['backbone']}`.", ""]
        lines += [f"Wall time: {setup['wall_seconds'] / 60:.1f} min for {setup['runs']} runs, "
                  f"{setup['workers']} at a time.", ""]
    for task in TASK_METRICS:
        if any(r["task"] == task for r in rows):
            lines += [f"## {task}", ""] + table(rows, task) + [""]
    plot_metrics(rows, out)
    plot_learning_curves(rows, out)
    lines += ["![metrics](compare_metrics.png)", "", "![learning curves](compare_curves.png)", ""]
    path = out / "compare.md"
    path.write_text("\n".join(lines))
    return path
