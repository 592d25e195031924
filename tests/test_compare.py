"""`vislm compare` end to end on a tiny world, and the pieces it is built from."""

import json
from pathlib import Path

import pytest
import torch

from vislm.analysis.compare import load_compare_config, run_compare, strategy_model, visual_effect
from vislm.cli import main
from vislm.config import ModelConfig
from vislm.data.shapes import generate_shapes_world
from vislm.errors import ConfigError

CONFIG = """
base:
  data: {{root: {root}, eval_splits: [test], max_text_len: 40}}
  tokenizer: {{vocab_size: 200}}
  model:
    vision_kwargs: {{dim: 16, widths: [8, 16, 16]}}
    text_kwargs: {{dim: 16, depth: 1, heads: 2}}
  train: {{epochs: 1, max_steps: 3, batch_size: 8, warmup_steps: 1, progress: false, eval_every: 0}}
  eval: {{meteor: false, max_new_tokens: 8}}
seeds: [0, 1]
strategies:
  - {{name: text only, task: caption, baseline: true, model: {{fusion: text_only_lm}}}}
  - {{name: cross, task: caption, model: {{fusion: captioner}}}}
  - {{name: text only, task: vqa, baseline: true, model: {{fusion: text_only_vqa}}}}
  - {{name: late, task: vqa, model: {{fusion: late_vqa, fusion_kwargs: {{combine: product}}}}}}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return generate_shapes_world(root, seed=1, sizes={"train": 16, "val": 2, "test": 6, "comp_test": 2})


def test_compare_writes_rows_report_and_plots(world, tmp_path):
    config = tmp_path / "compare.yaml"
    config.write_text(CONFIG.format(root=world))
    assert main(["compare", str(config), "--out", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert [(r["task"], r["strategy"]) for r in rows] == [
        ("caption", "text only"), ("caption", "cross"), ("vqa", "text only"), ("vqa", "late")]
    for row in rows:
        assert row["params"] > 0 and row["train_seconds"] > 0 and row["samples_per_s"] > 0
        assert len(row["run_dirs"]) == 2
    cross, late = rows[1], rows[3]
    assert set(cross["perplexity"]) == {"mean", "std"}
    assert cross["visual_effect"]["perplexity_ratio"] == pytest.approx(
        rows[0]["perplexity"]["mean"] / cross["perplexity"]["mean"])
    assert late["visual_effect"]["accuracy_gain"] == pytest.approx(
        late["accuracy"]["mean"] - rows[2]["accuracy"]["mean"])
    # Same seeds, same data: a strategy's two seeds differ, and the shared tokenizer is reused.
    report = (tmp_path / "out" / "compare.md").read_text()
    assert "| cross | captioner |" in report and "compare_curves.png" in report
    assert (tmp_path / "out" / "compare_metrics.png").stat().st_size > 1000
    assert (tmp_path / "out" / "tokenizer" / "tokenizer.json").is_file()


def test_strategy_model_merges_kwargs_key_by_key():
    base = ModelConfig(fusion="captioner", text_kwargs={"dim": 32, "depth": 2})
    merged = strategy_model(base, {"fusion": "gated_captioner", "text_kwargs": {"depth": 4}}, "g")
    assert merged.fusion == "gated_captioner" and merged.text_kwargs == {"dim": 32, "depth": 4}
    with pytest.raises(ConfigError, match="strategies.g.model.fusoin"):
        strategy_model(base, {"fusoin": "x"}, "g")


def test_visual_effect_against_baseline():
    baseline = {"task": "vqa", "accuracy": {"mean": 0.4}}
    assert visual_effect({"task": "vqa", "accuracy": {"mean": 0.65}}, baseline)["accuracy_gain"] == pytest.approx(0.25)
    lm = {"task": "caption", "perplexity": {"mean": 6.0}}
    assert visual_effect({"task": "caption", "perplexity": {"mean": 2.0}}, lm)["perplexity_ratio"] == 3.0
    assert visual_effect(baseline, baseline) == {}


def test_config_errors(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("strategies: []\n")
    with pytest.raises(ConfigError, match="no strategy"):
        load_compare_config(config)
    config.write_text("strategies: [{name: a, task: vqa}, {name: a, task: vqa}]\n")
    with pytest.raises(ConfigError, match="unique"):
        load_compare_config(config)
    config.write_text("strategies: [{name: a, task: dance}]\n")
    with pytest.raises(ConfigError, match="task"):
        load_compare_config(config)
    config.write_text("strategies: [{name: a, task: vqa, train: {max_steps: 5}}, {name: b, task: vqa}]\n")
    with pytest.raises(ConfigError, match="strategies.b.train: the vqa strategies must share one training budget"):
        load_compare_config(config)
    config.write_text("strategies: [{name: a, task: vqa, train: {max_stepz: 5}}]\n")
    with pytest.raises(ConfigError, match="strategies.a.train.max_stepz"):
        load_compare_config(config)
    config.write_text("backbone: {task: dance}\nstrategies: [{name: a, task: vqa}]\n")
    with pytest.raises(ConfigError, match="backbone.task must be one of"):
        load_compare_config(config)


def test_preset_parses():
    cfg = load_compare_config("configs/compare.yaml")
    fusions = {strategy_model(cfg.base.model, s.model, s.name).fusion for s in cfg.strategies}
    assert {"late_vqa", "captioner", "gated_captioner", "prefix_captioner"} <= fusions
    assert fusions & {"early_vqa", "early_captioner"}
    assert len(cfg.seeds) >= 3 and sum(s.baseline for s in cfg.strategies) == 2
    assert cfg.backbone.task == "retrieval" and cfg.workers == 2


BACKBONE = """
backbone: {task: retrieval, model: {fusion: dual_encoder}, data: {max_text_len: 30}, train: {max_steps: 2}}
"""


def _yaml(path):
    import yaml

    return yaml.safe_load(path.read_text())


def test_backbone_starts_every_image_strategy_and_parallel_workers_give_the_same_rows(world, tmp_path):
    config = tmp_path / "compare.yaml"
    config.write_text(CONFIG.format(root=world) + BACKBONE)
    out = tmp_path / "sequential"
    rows = run_compare(load_compare_config(config), out)
    assert (out / "backbone" / "model" / "model.safetensors").is_file()
    backbone = _yaml(out / "backbone" / "config.yaml")
    assert backbone["data"]["max_text_len"] == 30 and backbone["train"]["max_steps"] == 2
    assert "starts its vision tower from the backbone" in (out / "compare.md").read_text()
    for row in rows:
        for run in row["run_dirs"]:
            model = _yaml(Path(run) / "config.yaml")["model"]
            if row["baseline"]:
                assert not model["init_from"]
            else:
                assert model["init_from"] == str(out / "backbone") and model["init_modules"] == ["vision."]

    # Two runs at a time in worker processes (one thread each, as here): the same numbers.
    parallel = run_compare(load_compare_config(config, ["workers=2", f"base.tokenizer.path={out / 'tokenizer'}"]),
                           tmp_path / "parallel")
    assert "2 at a time" in (tmp_path / "parallel" / "compare.md").read_text()
    for mine, theirs in zip(parallel, rows):
        assert mine["strategy"] == theirs["strategy"]
        for metric in ("perplexity", "accuracy"):
            if metric in mine:
                assert mine[metric]["mean"] == pytest.approx(theirs[metric]["mean"], rel=1e-4)
