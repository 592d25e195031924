"""Tests generated from the registries: every registered vision encoder, text model and
task model is built at its tiny size, run forward and backward, and checked for shapes,
a finite loss, and a gradient in every trainable parameter. Registering a component is
enough to have it tested here."""

import pytest
import torch

import vislm.models  # noqa: F401  (registration)
from vislm.errors import ConfigError
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS


def assert_every_param_learns(model, frozen=()):
    """Every trainable parameter got a nonzero, finite gradient; frozen ones got none."""
    missing = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"{name} is frozen but has a gradient"
        elif p.grad is None or not p.grad.abs().sum() > 0:
            missing.append(name)
        else:
            assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    assert not missing, f"no gradient reached: {missing}"


def random_readout(out):
    # A random linear readout, so that no output direction is blind to the loss.
    g = torch.Generator().manual_seed(1)
    return (out * torch.randn(out.shape, generator=g)).sum()


def make_batch(model, B=4, T=7, seed=0):
    """A batch with every key any task model reads; padding and a repeated image."""
    g = torch.Generator().manual_seed(seed)
    # Text-only baselines have no vision tower; they must ignore whatever image they get.
    size = model.vision.image_size if hasattr(model, "vision") else 32
    vocab = model.text.vocab_size
    lengths = torch.tensor([T, T - 2, 3, T][:B])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ids = torch.randint(3, vocab, (B, T), generator=g)
    ids[:, 0] = 1  # BOS
    ids[torch.arange(B), lengths - 1] = 2  # EOS
    ids = ids.masked_fill(mask == 0, model.text.pad_id)
    num_answers = getattr(model, "num_answers", 3)
    scores = torch.rand(B, num_answers, generator=g)
    scores = scores * (torch.rand(B, num_answers, generator=g) < 0.3)
    return {
        "pixel_values": torch.randn(B, 3, size, size, generator=g),
        "input_ids": ids,
        "attention_mask": mask,
        "image_ids": torch.tensor([0, 1, 0, 2][:B]),  # captions 0 and 2 share an image
        "answer_scores": scores,
    }


# -----------------------------------------------------------------------------
# Vision encoders

@pytest.mark.parametrize("name", VISION_ENCODERS.names())
def test_vision_encoder(name):
    torch.manual_seed(0)
    encoder = VISION_ENCODERS.create(name, **VISION_ENCODERS.tiny_kwargs(name))
    size = encoder.image_size
    tokens = encoder(torch.randn(2, 3, size, size))
    assert tokens.shape == (2, encoder.num_tokens(size), encoder.dim)
    assert torch.isfinite(tokens).all()
    random_readout(tokens).backward()
    assert_every_param_learns(encoder)


@pytest.mark.parametrize("name", VISION_ENCODERS.names())
def test_vision_encoder_accepts_attn_impl(name):
    # One config may set attn_impl on every tower.
    VISION_ENCODERS.create(name, **{**VISION_ENCODERS.tiny_kwargs(name), "attn_impl": "math"})


# -----------------------------------------------------------------------------
# Text models

TEXT_VARIANTS = [{}] + [dict(position=p) for p in ("sinusoidal", "learned", "rotary")] + [
    dict(cross_attention=True), dict(attn_impl="math", cross_attention=True)]


@pytest.mark.parametrize("variant", TEXT_VARIANTS, ids=lambda v: "-".join(map(str, v.values())) or "default")
@pytest.mark.parametrize("name", TEXT_MODELS.names())
def test_text_model(name, variant):
    torch.manual_seed(0)
    try:
        model = TEXT_MODELS.create(name, **{**TEXT_MODELS.tiny_kwargs(name), **variant})
    except ConfigError:
        # Pre-trained towers refuse vislm-only options (their positions are fixed).
        assert name.startswith("hf_") and variant, name
        pytest.skip(f"{name} does not take {variant}")
    ids = torch.randint(0, model.vocab_size, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    image = torch.randn(2, 3, model.dim) if variant.get("cross_attention") else None
    out = model(ids, mask, image)
    hidden = model.encode(ids, mask, image)
    assert hidden.shape == (2, 5, model.dim)
    if isinstance(out, tuple):  # a decoder: (logits, past)
        out, past = out
        assert out.shape == (2, 5, model.vocab_size) and past is None
    else:
        assert out.shape == (2, 5, model.dim)
    random_readout(out).backward()
    assert_every_param_learns(model)


# -----------------------------------------------------------------------------
# Task models, over every vision encoder and every text model they accept

def build_fusion(name, vision, text):
    kwargs = FUSIONS.tiny_kwargs(name)
    kwargs.update(vision=vision, vision_kwargs=VISION_ENCODERS.tiny_kwargs(vision),
                  text=text, text_kwargs=TEXT_MODELS.tiny_kwargs(text))
    try:
        return FUSIONS.create(name, **kwargs)
    except ConfigError as e:  # e.g. a captioner over a bidirectional encoder
        pytest.skip(f"{name} does not accept text model '{text}': {e}")


FUSION_COMBOS = [(f, v, t) for f in FUSIONS.names() for v in VISION_ENCODERS.names()
                 for t in TEXT_MODELS.names()]


@pytest.mark.parametrize("name,vision,text", FUSION_COMBOS)
def test_task_model_trains(name, vision, text):
    torch.manual_seed(0)
    model = build_fusion(name, vision, text)
    out = model(make_batch(model))
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    terms = [k for k in out if k.endswith("_loss")]
    assert terms, "a task model names its loss terms"
    torch.testing.assert_close(out["loss"], sum(out[k] for k in terms))
    out["loss"].backward()
    assert_every_param_learns(model)


@pytest.mark.parametrize("name", FUSIONS.names())
def test_task_model_frozen_vision_tower_gets_no_gradient(name):
    torch.manual_seed(0)
    model = FUSIONS.create(name, **FUSIONS.tiny_kwargs(name))
    if not hasattr(model, "vision"):
        pytest.skip(f"{name} has no vision tower (a text-only baseline)")
    model.vision.requires_grad_(False)
    model(make_batch(model))["loss"].backward()
    assert all(p.grad is None for p in model.vision.parameters())
    assert_every_param_learns(model)


@pytest.mark.parametrize("name", FUSIONS.names())
def test_task_model_frozen_text_tower_gets_no_gradient(name):
    torch.manual_seed(0)
    model = FUSIONS.create(name, **FUSIONS.tiny_kwargs(name))
    if not hasattr(model, "vision"):
        pytest.skip(f"{name} is only a text tower: frozen, nothing would learn")
    model.text.requires_grad_(False)
    model(make_batch(model))["loss"].backward()
    assert all(p.grad is None for p in model.text.parameters())
    assert_every_param_learns(model)


@pytest.mark.parametrize("name", FUSIONS.names())
def test_tiny_kwargs_are_not_mutated_by_building(name):
    before = FUSIONS.tiny_kwargs(name)
    snapshot = {k: dict(v) if isinstance(v, dict) else v for k, v in before.items()}
    FUSIONS.create(name, **before)
    assert before == snapshot and FUSIONS.tiny_kwargs(name) == snapshot


def test_captioner_rejects_bidirectional_text_model():
    kwargs = {**FUSIONS.tiny_kwargs("captioner"), "text": "encoder"}
    with pytest.raises(ConfigError, match="causal"):
        FUSIONS.create("captioner", **kwargs)


def test_conflicting_cross_attention_setting_is_a_config_error():
    kwargs = FUSIONS.tiny_kwargs("vqa_classifier")
    kwargs["text_kwargs"] = {**kwargs["text_kwargs"], "cross_attention": False}
    with pytest.raises(ConfigError, match="cross_attention"):
        FUSIONS.create("vqa_classifier", **kwargs)


def test_vision_width_differing_from_text_width_is_projected():
    kwargs = FUSIONS.tiny_kwargs("captioner")
    kwargs["vision_kwargs"] = {**kwargs["vision_kwargs"], "dim": 24}
    model = FUSIONS.create("captioner", **kwargs)
    batch = make_batch(model)
    assert model.image_tokens(batch["pixel_values"]).shape[-1] == model.text.dim
    model(batch)["loss"].backward()
    assert_every_param_learns(model)


def test_default_cnn_fits_the_cpu_budget():
    encoder = VISION_ENCODERS.create("cnn")
    params = sum(p.numel() for p in encoder.parameters())
    assert 200_000 <= params <= 2_000_000
    assert encoder.num_tokens(64) == 64  # an 8x8 grid at 64x64
    with torch.no_grad():
        assert encoder(torch.randn(1, 3, 64, 64)).shape == (1, 64, encoder.dim)
