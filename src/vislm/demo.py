"""`vislm demo`: the whole pipeline on the embedded shapes world, on a laptop CPU.

It renders the shapes world if missing, trains a captioner, a dual encoder and a VQA
model from the presets in vislm/configs/demo_*.yaml, evaluates each on the test split and
on `comp_test` (colour-shape pairs never seen in training), and writes metrics.json and a
report.md with tables and sample images.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from vislm.config import load_config
from vislm.data.shapes import generate_shapes_world
from vislm.report import write_demo_report
from vislm.tasks.run import train

log = logging.getLogger(__name__)

PRESETS = Path(__file__).parent / "configs"
TASK_PRESETS = {"caption": "demo_caption.yaml", "retrieval": "demo_retrieval.yaml", "vqa": "demo_vqa.yaml"}
FULL_SIZES = {"train": 4000, "val": 300, "test": 500, "comp_test": 300}
QUICK_SIZES = {"train": 120, "val": 20, "test": 40, "comp_test": 30}
# The quick run takes the same path with a few steps, to check that everything connects.
QUICK_OVERRIDES = ["train.epochs=1", "train.max_steps=4", "train.batch_size=16", "train.warmup_steps=1",
                   "eval.max_new_tokens=12", "eval.meteor=false", "train.progress=false"]


def ensure_shapes_world(root: Path, quick: bool) -> Path:
    if (root / "world.json").is_file():
        return root
    log.info("rendering the shapes world into %s", root)
    return generate_shapes_world(root, seed=0, sizes=QUICK_SIZES if quick else FULL_SIZES)


def run_demo(out: str | Path, quick: bool = False, data_root: str | Path | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    default_root = out / "shapes" if quick else Path("data/shapes")
    root = ensure_shapes_world(Path(data_root) if data_root else default_root, quick)

    metrics: dict = {"comp_test": {}}
    runs: dict = {}
    timings: dict = {}
    for task, preset in TASK_PRESETS.items():
        overrides = [f"data.root={root}", "data.eval_splits=[test,comp_test]"]
        if task == "vqa":
            # Fine-tune from the captioner's image tower: captioning has taught it shapes
            # and colours, which VQA's single answer per question teaches slowly.
            overrides += [f"model.init_from={out / 'caption'}", "model.init_modules=[vision.]"]
        cfg = load_config(PRESETS / preset, overrides + (QUICK_OVERRIDES if quick else []))
        started = time.perf_counter()
        handles: dict = {}
        result = train(cfg, out / task, task_out=handles)
        timings[task] = time.perf_counter() - started
        metrics[task] = result["metrics"]["test"]
        metrics["comp_test"][task] = result["metrics"]["comp_test"]
        runs[task] = {"result": result, "task": handles["task"]}
        log.info("%s done in %.0f s: %s", task, timings[task], json.dumps(metrics[task]))

    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_demo_report(out, metrics, runs, timings)
    return metrics
