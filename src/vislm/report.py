"""Markdown reports: metrics tables and sample images with what the models said."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from PIL import Image

SAMPLE_COUNT = 6
SAMPLE_PIXELS = 192  # upscaled so that a 64-pixel scene is readable in a browser


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def metrics_table(rows: Dict[str, Dict[str, float]], keys: List[str]) -> List[str]:
    """One row per split, one column per metric."""
    lines = ["| split | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for split, values in rows.items():
        lines.append(f"| {split} | " + " | ".join(_fmt(values.get(k)) for k in keys) + " |")
    return lines


def _sample_images(out: Path, caption_task, vqa_task) -> List[str]:
    captions = caption_task.predictions.get("test", [])[:SAMPLE_COUNT]
    questions: Dict[int, list] = {}
    for item in vqa_task.predictions.get("test", []):
        questions.setdefault(item["image_id"], []).append(item)
    references = {r.image_id: r.captions for r in caption_task.splits["test"].captions}
    samples_dir = out / "samples"
    samples_dir.mkdir(exist_ok=True)
    lines = []
    for item in captions:
        name = f"{item['image_id']}.png"
        with Image.open(item["image_path"]) as image:
            image.convert("RGB").resize((SAMPLE_PIXELS, SAMPLE_PIXELS), Image.NEAREST).save(samples_dir / name)
        lines += [f"![scene {item['image_id']}](samples/{name})", "",
                  f"- generated caption: **{item['caption']}**",
                  f"- a reference caption: {references[item['image_id']][0]}"]
        for qa in questions.get(item["image_id"], [])[:3]:
            mark = "right" if qa["answer"] == qa["truth"] else f"wrong, truth: {qa['truth']}"
            lines.append(f"- Q: {qa['question']} A: **{qa['answer']}** ({mark})")
        lines.append("")
    return lines


def write_demo_report(out: Path, metrics: dict, runs: dict, timings: Dict[str, float]) -> Path:
    caption_keys = ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "faithfulness"]
    retrieval_keys = ["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"]
    lines = ["# vislm demo report", "",
             "Three models trained on the shapes world and evaluated on its test split and on",
             "`comp_test`, whose colour-shape pairs never occur in training.", ""]
    for title, task, keys in (("Captioning", "caption", caption_keys),
                              ("Retrieval", "retrieval", retrieval_keys),
                              ("Visual question answering", "vqa", ["accuracy"])):
        rows = {"test": metrics[task], "comp_test": metrics["comp_test"][task]}
        lines += [f"## {title}", ""] + metrics_table(rows, keys) + [""]
    lines += ["## Models", "", "| task | fusion | parameters | train seconds | samples/s | wall seconds |",
              "|---|---|---|---|---|---|"]
    for task, run in runs.items():
        result = run["result"]
        lines.append(f"| {task} | {result['fusion']} | {result['params']['total']:,} | "
                     f"{result['train_seconds']:.0f} | {result['samples_per_s']:.0f} | {timings[task]:.0f} |")
    lines += ["", "## Samples from the test split", ""]
    lines += _sample_images(out, runs["caption"]["task"], runs["vqa"]["task"])
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
