"""The command line end to end on a tiny shapes world, as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vislm
from vislm.cli import main
from vislm.data.shapes import generate_shapes_world

QUICK = ["train.epochs=1", "train.max_steps=3", "train.batch_size=8", "train.warmup_steps=1",
         "eval.max_new_tokens=8", "eval.meteor=false", "train.progress=false"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return generate_shapes_world(root, seed=3, sizes={"train": 24, "val": 4, "test": 8, "comp_test": 6})


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vislm.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("preset", ["demo_caption", "demo_retrieval", "demo_vqa"])
def test_train_writes_run_directory_and_reloads(world, tmp_path, preset):
    out = tmp_path / preset
    assert main(["train", f"configs/{preset}.yaml", f"data.root={world}", *QUICK, "--out", str(out)]) == 0
    for name in ("config.yaml", "log.jsonl", "metrics.json", "model/model.safetensors", "model/config.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"test", "comp_test"}
    loaded = vislm.load(out / "model")
    again = vislm.load(out / "model")
    batch = torch.randn(2, 3, 64, 64)
    if preset == "demo_caption":
        a = loaded.model.generate(batch, max_new_tokens=5, bos_id=loaded.tokenizer.bos_id, eos_id=loaded.tokenizer.eos_id)
        b = again.model.generate(batch, max_new_tokens=5, bos_id=again.tokenizer.bos_id, eos_id=again.tokenizer.eos_id)
        assert torch.equal(a, b)
    elif preset == "demo_retrieval":
        assert torch.equal(loaded.model.encode_image(batch), again.model.encode_image(batch))
    else:
        assert loaded.state["answers"] and len(loaded.state["answers"]) == loaded.model.predict(
            batch, *loaded.tokenizer(["how many shapes are there?"] * 2, 24)).shape[1]


def test_resume_continues_from_checkpoint(world, tmp_path):
    out = tmp_path / "resume"
    args = ["train", "configs/demo_vqa.yaml", f"data.root={world}", "eval.meteor=false", "train.progress=false",
            "train.batch_size=8", "train.epochs=1", "--out", str(out)]
    assert main(args) == 0
    first = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert main(args[:-2] + ["train.epochs=2", "--out", str(out), "--resume"]) == 0
    steps = [r["step"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert max(steps) > max(r["step"] for r in first if "loss" in r)


def test_unknown_config_key_is_one_line_error(world, tmp_path):
    result = run_cli("train", "configs/demo_vqa.yaml", "train.epochz=3", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "train.epochz" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_wrong_type_names_key(tmp_path):
    result = run_cli("train", "configs/demo_vqa.yaml", "train.batch_size=big", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "train.batch_size" in result.stderr


def test_missing_data_root_says_how_to_make_it(tmp_path):
    result = run_cli("train", "configs/demo_vqa.yaml", f"data.root={tmp_path / 'none'}", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "vislm data shapes" in result.stderr


def test_missing_image_file_names_it(world, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(world, broken)
    victim = sorted((broken / "images" / "train").iterdir())[0]
    victim.unlink()
    result = run_cli("train", "configs/demo_vqa.yaml", f"data.root={broken}", *QUICK, "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and victim.name in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_malformed_json_and_empty_caption_name_the_file(world, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(world, broken)
    captions = broken / "annotations" / "captions_train.json"
    data = json.loads(captions.read_text())
    data["annotations"][0]["caption"] = "   "
    captions.write_text(json.dumps(data))
    result = run_cli("train", "configs/demo_vqa.yaml", f"data.root={broken}", "data.on_error=raise", *QUICK,
                     "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "captions_train.json: annotations[0].caption is empty or only whitespace" in result.stderr
    # Under the default policy for training the blank caption is skipped, and said so.
    result = run_cli("train", "configs/demo_vqa.yaml", f"data.root={broken}", *QUICK, "--out", str(tmp_path / "z"))
    assert result.returncode == 0 and "annotations[0].caption is empty" in result.stderr
    captions.write_text("{ broken")
    result = run_cli("train", "configs/demo_vqa.yaml", f"data.root={broken}", *QUICK, "--out", str(tmp_path / "y"))
    assert result.returncode == 2 and "captions_train.json" in result.stderr


def test_unreadable_image_names_it(world, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(world, broken)
    victim = sorted((broken / "images" / "train").iterdir())[1]
    victim.write_bytes(b"not a png at all")
    result = run_cli("train", "configs/demo_vqa.yaml", f"data.root={broken}", *QUICK, "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and victim.name in result.stderr and "decode" in result.stderr


def test_quick_demo_writes_metrics_and_report(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--quick"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "faithfulness"} <= set(metrics["caption"])
    assert {"i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"} <= set(metrics["retrieval"])
    assert "accuracy" in metrics["vqa"]
    assert set(metrics["comp_test"]) == {"caption", "retrieval", "vqa"}
    for group in ("caption", "retrieval", "vqa"):
        for key, value in metrics[group].items():
            if value is not None and key not in ("CIDEr", "perplexity") and "rank" not in key and key != "rsum":
                assert 0.0 <= value <= 1.0, (group, key, value)
    report = (tmp_path / "report.md").read_text()
    assert "## Captioning" in report and "samples/" in report
    assert any(Path(tmp_path, "samples").iterdir())


def test_pretrain_then_finetune_transfers_the_image_tower(world, tmp_path):
    from safetensors.torch import load_file

    tiny = ["model.vision_kwargs.dim=16", "model.vision_kwargs.widths=[8,16,16]", "model.text_kwargs.dim=16",
            "model.fusion_kwargs.embed_dim=16", *QUICK]
    assert main(["pretrain", "configs/pretrain.yaml", f"data.root={world}", *tiny, "--out", str(tmp_path / "pre")]) == 0
    log = [json.loads(line) for line in (tmp_path / "pre" / "log.jsonl").read_text().splitlines()]
    assert {"itc_loss", "itm_loss", "mlm_loss"} <= set(log[0])
    # The tower is frozen while fine-tuning, so it must come out exactly as pre-trained.
    assert main(["finetune", "configs/finetune_vqa.yaml", f"init={tmp_path / 'pre'}", f"data.root={world}",
                 "model.freeze=[vision.]", *tiny[:3], *QUICK, "--out", str(tmp_path / "ft")]) == 0
    before = load_file(str(tmp_path / "pre" / "model" / "model.safetensors"))
    after = load_file(str(tmp_path / "ft" / "model" / "model.safetensors"))
    # (num_batches_tracked is a counter, not a weight: it counts on.)
    shared = [k for k in before if k.startswith("vision.") and "num_batches_tracked" not in k]
    assert shared and all(torch.equal(before[k], after[k]) for k in shared)
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["params"]["frozen"] == sum(before[k].numel() for k in shared if "running" not in k)


def test_finetune_without_init_is_an_error(world, tmp_path):
    result = run_cli("finetune", "configs/finetune_vqa.yaml", f"data.root={world}", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "init=RUN_DIR" in result.stderr


def test_eval_rerank_reports_each_k(world, tmp_path, capsys):
    tiny = ["model.vision_kwargs.dim=16", "model.vision_kwargs.widths=[8,16,16]", "model.text_kwargs.dim=16",
            "model.fusion_kwargs.embed_dim=16", *QUICK]
    assert main(["pretrain", "configs/pretrain.yaml", f"data.root={world}", *tiny, "--out", str(tmp_path / "pre")]) == 0
    capsys.readouterr()
    assert main(["eval", "rerank", "--model", str(tmp_path / "pre" / "model"), "--k", "0", "1", "4"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["k"] for row in rows] == [0, 1, 4]
    # Re-ranking one candidate changes nothing; every row says what it cost.
    assert all(rows[1][key] == rows[0][key] for key in ("i2t_R@1", "t2i_R@1", "t2i_R@5"))
    assert all(row["seconds"] > 0 for row in rows)


@pytest.mark.parametrize("cache", [True, False])
def test_a_frozen_vision_tower_runs_once_per_image(world, tmp_path, cache):
    from vislm.config import load_config
    from vislm.models.frozen_cache import FrozenOutputCache
    from vislm.tasks.run import train

    cfg = load_config("configs/demo_vqa.yaml", [f"data.root={world}", "model.vision_kwargs.dim=16",
                                                "model.vision_kwargs.widths=[8,16,16]", "model.text_kwargs.dim=16",
                                                "model.freeze=[vision.]", f"train.cache_frozen_vision={cache}",
                                                "train.epochs=2", *QUICK[1:]])
    out = {}
    train(cfg, tmp_path / "run", task_out=out)
    forward = out["model"].vision.__dict__.get("forward")
    if not cache:
        assert forward is None
        return
    assert isinstance(forward, FrozenOutputCache)
    # One entry per distinct image (24 train, 8 test, 6 comp_test, under two autocast
    # settings at most), however many questions ask about it; repeats are hits.
    assert 0 < len(forward.store) <= 2 * (24 + 8 + 6) and forward.hits > 0
