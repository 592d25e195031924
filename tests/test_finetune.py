"""Starting a task from another model's weights, and freezing parts of it."""

import pytest
import torch
from safetensors.torch import save_model

import vislm.models  # noqa: F401
from vislm.errors import CheckpointError
from vislm.finetune import freeze, initialise_from
from vislm.registry import FUSIONS

VISION = {"image_size": 32, "dim": 16, "widths": [8, 16, 16]}
TEXT = {"vocab_size": 50, "dim": 16, "depth": 1, "heads": 2, "max_len": 16}


def captioner():
    return FUSIONS.create("captioner", vision="cnn", vision_kwargs=VISION, text_kwargs=TEXT)


def vqa():
    return FUSIONS.create("vqa_classifier", vision="cnn", vision_kwargs=VISION, text_kwargs=TEXT, num_answers=4)


def test_vision_tower_transfers_by_name(tmp_path):
    torch.manual_seed(0)
    source = captioner()
    save_model(source, str(tmp_path / "model.safetensors"))
    torch.manual_seed(1)
    target = vqa()
    head_before = target.head[0].weight.clone()
    counts = initialise_from(target, tmp_path, ["vision."])
    assert counts["copied"] == len([k for k in source.state_dict() if k.startswith("vision.")])
    for name, tensor in source.state_dict().items():
        if name.startswith("vision."):
            assert torch.equal(target.state_dict()[name], tensor), name
    assert torch.equal(target.head[0].weight, head_before)


def test_freeze_stops_gradients_and_batchnorm_statistics():
    model = vqa()
    assert freeze(model, ["vision."]) > 0
    stats = {n: b.clone() for n, b in model.named_buffers() if "running_mean" in n}
    batch = {"pixel_values": torch.randn(4, 3, 32, 32), "input_ids": torch.randint(5, 50, (4, 6)),
             "attention_mask": torch.ones(4, 6, dtype=torch.long), "answer_scores": torch.rand(4, 4)}
    model.train()
    model(batch)["loss"].backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is None) == name.startswith("vision."), name
    for name, buffer in model.named_buffers():
        if name in stats:
            assert torch.equal(buffer, stats[name]), name


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        initialise_from(vqa(), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        initialise_from(vqa(), tmp_path)
    with pytest.raises(CheckpointError, match="no parameter name starts with"):
        freeze(vqa(), ["nothing."])
