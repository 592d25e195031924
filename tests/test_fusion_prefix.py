"""LLaVA / ClipCap prefix captioner: prefix shapes and projectors, the loss on text only,
causality, and freeze_lm."""

import pytest
import torch
import torch.nn as nn

import vislm.models  # noqa: F401  (registration)
from test_models_registry import assert_every_param_learns, make_batch
from vislm.errors import ConfigError
from vislm.objectives.lm import lm_loss
from vislm.registry import FUSIONS


def build(**extra):
    torch.manual_seed(0)
    kwargs = {**FUSIONS.tiny_kwargs("prefix_captioner"), **extra}
    return FUSIONS.create("prefix_captioner", **kwargs)


@pytest.mark.parametrize("projector", ["linear", "mlp"])
@pytest.mark.parametrize("prefix_tokens", [0, 3])
def test_prefix_shape_and_projector(projector, prefix_tokens):
    model = build(projector=projector, prefix_tokens=prefix_tokens)
    batch = make_batch(model)
    prefix = model.prefix(batch["pixel_values"])
    length = prefix_tokens or model.vision.num_tokens()
    assert prefix.shape == (4, length, model.text.dim)
    if projector == "linear":
        assert isinstance(model.projector, nn.Linear)
    else:  # LLaVA-1.5: Linear, GELU, Linear
        assert [type(m) for m in model.projector] == [nn.Linear, nn.GELU, nn.Linear]
    model(batch)["loss"].backward()
    assert_every_param_learns(model)


def test_loss_is_over_text_only_and_ignores_padding():
    model = build().eval()
    batch = make_batch(model)
    prefix = model.prefix(batch["pixel_values"])
    logits, _ = model.decode(prefix, batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (4, 7, model.text.vocab_size)  # no logits for the prefix
    loss = model(batch)["loss"]
    torch.testing.assert_close(loss, lm_loss(logits, batch["input_ids"], batch["attention_mask"]))
    batch["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 11)
    torch.testing.assert_close(model(batch)["loss"], loss)


def test_text_is_causal_and_sees_the_prefix():
    model = build().eval()
    batch = make_batch(model)
    prefix = model.prefix(batch["pixel_values"])
    ids = batch["input_ids"]
    logits, _ = model.decode(prefix, ids)
    changed = ids.clone()
    changed[:, 3] = 5
    torch.testing.assert_close(model.decode(prefix, changed)[0][:, :3], logits[:, :3])
    assert not torch.allclose(model.decode(prefix.flip(0), ids)[0][:, 0], logits[:, 0])


def test_freeze_lm_trains_the_projector_and_vision_only():
    model = build(freeze_lm=True)
    model(make_batch(model))["loss"].backward()
    assert all(not p.requires_grad and p.grad is None for p in model.text.parameters())
    for part in (model.projector, model.vision):
        assert all(p.grad is not None and p.grad.any() for p in part.parameters())


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="projector"):
        build(projector="qformer")
    with pytest.raises(ConfigError, match="prefix_tokens"):
        build(prefix_tokens=-1)
