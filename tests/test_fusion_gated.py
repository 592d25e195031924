"""Flamingo-style gated captioner: the exact identity at initialisation, where gradients
go at and after initialisation, freeze_lm, the layer placement, the resampler, and the
cross-attention keys/values being computed once per generation."""

import pytest
import torch

import vislm.models  # noqa: F401  (registration)
from test_models_registry import assert_every_param_learns, make_batch
from vislm.errors import ConfigError
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS


def gated(vision="cnn", position="learned", depth=2, **extra):
    kwargs = {**FUSIONS.tiny_kwargs("gated_captioner"), "gate_init": 0.0, "vision": vision,
              "vision_kwargs": VISION_ENCODERS.tiny_kwargs(vision),
              "text_kwargs": {**TEXT_MODELS.tiny_kwargs("decoder"), "depth": depth,
                              "position": position}}
    kwargs.update(extra)
    return FUSIONS.create("gated_captioner", **kwargs)


@pytest.mark.parametrize("position", ["learned", "rotary"])
@pytest.mark.parametrize("extra", [{}, {"resampler_latents": 0, "cross_every": 2}],
                         ids=["resampler", "every-2nd"])
def test_logits_equal_the_bare_lm_exactly_at_init(position, extra):
    torch.manual_seed(0)
    model = gated(position=position, depth=3, **extra)
    # Train mode, as at the start of training; the tiny text model has no dropout.
    batch = make_batch(model)
    logits, _ = model.decode(model.image_tokens(batch["pixel_values"]), batch["input_ids"],
                             batch["attention_mask"])
    bare, _ = model.text(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(logits, bare)
    # The image does matter once the gates open.
    with torch.no_grad():
        for block in model.gated.values():
            block.attn_gate.fill_(0.5)
    opened, _ = model.decode(model.image_tokens(batch["pixel_values"]), batch["input_ids"],
                             batch["attention_mask"])
    assert not torch.allclose(opened, bare)


def test_at_init_only_the_gates_learn_then_everything_does():
    torch.manual_seed(0)
    model = gated()
    batch = make_batch(model)
    model(batch)["loss"].backward()
    for name, p in model.named_parameters():
        if name.startswith("gated.") and name.endswith("_gate"):
            assert p.grad.abs() > 0, f"{name} must learn first"
        elif name.startswith(("gated.", "resampler.", "vision.", "image_proj")):
            # Behind tanh(0) = 0: exactly no signal yet.
            assert p.grad is None or not p.grad.any(), name
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    model.zero_grad()
    model(batch)["loss"].backward()
    assert_every_param_learns(model)


def test_freeze_lm_trains_only_the_new_parts():
    torch.manual_seed(0)
    model = gated(freeze_lm=True, gate_init=0.5)
    assert not any(p.requires_grad for p in model.text.parameters())
    before = {k: v.clone() for k, v in model.text.state_dict().items()}
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(make_batch(model))["loss"].backward()
    assert all(p.grad is None for p in model.text.parameters())
    for part in (model.gated, model.resampler, model.vision):
        assert all(p.grad is not None and p.grad.any() for p in part.parameters())
    optim.step()
    after = model.text.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_gated_blocks_sit_before_every_kth_lm_layer():
    assert list(gated(depth=4, cross_every=1).gated) == ["0", "1", "2", "3"]
    assert list(gated(depth=4, cross_every=2).gated) == ["0", "2"]
    assert list(gated(depth=4, cross_every=3).gated) == ["0", "3"]


@pytest.mark.parametrize("vision", ["cnn", "vit"])
def test_resampler_gives_a_fixed_number_of_tokens(vision):
    torch.manual_seed(0)
    model = gated(vision=vision, resampler_latents=3)
    size = model.vision.image_size
    tokens = model.image_tokens(torch.randn(2, 3, size, size))
    assert model.vision.num_tokens() != 3
    assert tokens.shape == (2, 3, model.text.dim)
    # Without the resampler the LM sees every image token.
    plain = gated(vision=vision, resampler_latents=0)
    assert plain.image_tokens(torch.randn(2, 3, size, size)).shape[1] == model.vision.num_tokens()


def test_cross_keys_values_are_computed_once_when_caching():
    torch.manual_seed(0)
    model = gated(depth=2, gate_init=0.5).eval()
    calls = []
    for block in model.gated.values():
        block.cross.kv.register_forward_hook(lambda *args: calls.append(1))
    size = model.vision.image_size
    px = torch.randn(2, 3, size, size)
    ids = model.generate(px, max_new_tokens=6, bos_id=1, eos_id=-1)
    assert ids.shape[1] == 6 and len(calls) == len(model.gated)  # once per gated block
    calls.clear()
    model.generate(px, max_new_tokens=6, bos_id=1, eos_id=-1, use_cache=False)
    assert len(calls) == 6 * len(model.gated)  # once per block per step


def test_needs_a_causal_lm():
    with pytest.raises(ConfigError, match="causal"):
        gated(text="encoder", text_kwargs=TEXT_MODELS.tiny_kwargs("encoder"))
