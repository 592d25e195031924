"""The screened greedy head picks exactly the float32 argmax of the LM head's logits."""

import pytest
import torch
import torch.nn.functional as F

from vislm.models import argmax_head
from vislm.models.argmax_head import ExactArgmaxHead, native_bf16

needs_bf16 = pytest.mark.skipif(not native_bf16(), reason="the screen runs only with native bf16")


def _plain(hidden, weight):
    return F.linear(hidden, weight).argmax(dim=-1)


def _counting_fallbacks(monkeypatch):
    calls = []
    plain = argmax_head._plain_argmax
    monkeypatch.setattr(argmax_head, "_plain_argmax", lambda h, w: calls.append(1) or plain(h, w))
    return calls


@needs_bf16
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("scale", [0.02, 1.0])  # freshly initialised / trained-like logits
def test_equals_the_float32_argmax_without_falling_back(seed, scale, monkeypatch):
    fallbacks = _counting_fallbacks(monkeypatch)
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(5000, 64, generator=g) * scale
    hidden = F.layer_norm(torch.randn(16, 64, generator=g), (64,))
    assert torch.equal(ExactArgmaxHead()(hidden, weight), _plain(hidden, weight))
    assert not fallbacks  # the screen decided, not the plain head


@needs_bf16
def test_a_difference_bf16_cannot_see_is_decided_exactly():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(1000, 32, generator=g) * 0.1
    hidden = torch.randn(4, 32, generator=g)
    best = _plain(hidden, weight)
    # Token 7 becomes each row's best by a margin far below bf16 resolution, and token 9
    # its twin, worse by even less: in bf16 all three are indistinguishable.
    for row in range(4):
        target = weight[best[row]] + 1e-4 * hidden[row] / hidden[row].norm()
        weight[7 + row * 100] = target
        weight[9 + row * 100] = target - 1e-6 * hidden[row] / hidden[row].norm()
    expected = _plain(hidden, weight)
    assert expected.tolist() == [7, 107, 207, 307]
    assert torch.equal(ExactArgmaxHead()(hidden, weight), expected)


@needs_bf16
def test_too_many_near_ties_fall_back_to_the_plain_head(monkeypatch):
    fallbacks = _counting_fallbacks(monkeypatch)
    weight = torch.ones(100, 8)  # every token scores the same
    hidden = torch.randn(3, 8)
    assert ExactArgmaxHead()(hidden, weight).tolist() == [0, 0, 0]
    assert fallbacks


@needs_bf16
def test_follows_in_place_updates_of_the_weight():
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(500, 16, generator=g)
    hidden = torch.randn(2, 16, generator=g)
    head = ExactArgmaxHead()
    assert torch.equal(head(hidden, weight), _plain(hidden, weight))
    with torch.no_grad():
        weight[123] = 50 * hidden[0]  # token 123 now wins row 0 by far
    assert head(hidden, weight)[0].item() == 123


def test_other_dtypes_and_autocast_use_the_plain_head(monkeypatch):
    fallbacks = _counting_fallbacks(monkeypatch)
    weight, hidden = torch.randn(50, 8), torch.randn(2, 8)
    head = ExactArgmaxHead()
    assert torch.equal(head(hidden.double(), weight.double()), _plain(hidden.double(), weight.double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        head(hidden, weight)
    assert len(fallbacks) == 2


@needs_bf16
def test_non_finite_hidden_states_give_the_plain_answer():
    weight = torch.randn(50, 8)
    hidden = torch.randn(2, 8)
    hidden[1, 3] = float("nan")
    assert torch.equal(ExactArgmaxHead()(hidden, weight), _plain(hidden, weight))


def test_captioner_greedy_tokens_equal_the_logits_argmax():
    import vislm.models  # noqa: F401  (registration)
    from vislm.registry import FUSIONS

    torch.manual_seed(0)
    model = FUSIONS.create("captioner", vision="vit",
                           vision_kwargs=dict(image_size=16, patch_size=8, dim=32, depth=1, heads=2),
                           text="decoder",
                           text_kwargs=dict(vocab_size=3000, dim=32, depth=2, heads=2, max_len=12)).eval()
    pixels = torch.randn(5, 3, 16, 16)
    ids = model.generate(pixels, 10, bos_id=1, eos_id=2)
    reference, _ = model.generate(pixels, 10, bos_id=1, eos_id=2, return_logits=True)
    assert torch.equal(ids, reference)
