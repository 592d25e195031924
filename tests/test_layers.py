"""Attention kernels, masks, blocks and position encodings."""

import copy
import math

import pytest
import torch

import vislm.models  # noqa: F401  (registration)
from vislm.models.layers import (Block, attend, causal_mask, few_row_linear,
                                 self_attention_mask, set_attn_impl)
from vislm.models.positions import (LearnedPositions, RotaryEmbedding, SinusoidalPositions,
                                    apply_rotary)
from vislm.registry import TEXT_MODELS

TOL = dict(atol=1e-5, rtol=1e-5)


def _qkv(B=2, H=2, T=5, S=5, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, D, generator=g, requires_grad=True) for n in (T, S, S)]


def _outputs_and_grads(fn, tensors):
    for t in tensors:
        t.grad = None
    out = fn(*tensors)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), [t.grad.clone() for t in tensors]


# -----------------------------------------------------------------------------
# sdpa and math paths agree

def _padding(B, S, lengths):
    return (torch.arange(S)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]


ATTEND_CASES = {
    "no mask": dict(T=5, S=5),
    "padding": dict(T=5, S=5, mask=_padding(2, 5, [5, 3])),
    "causal flag": dict(T=5, S=5, causal=True),
    "causal with offset (cache)": dict(T=2, S=6, mask=causal_mask(2, 6)[None, None]),
    "causal and padding": dict(T=5, S=5, mask=causal_mask(5, 5)[None, None] & _padding(2, 5, [5, 2])),
    "cross-attention with context mask": dict(T=4, S=7, mask=_padding(2, 7, [7, 4])),
}


@pytest.mark.parametrize("case", ATTEND_CASES)
def test_attend_math_equals_sdpa(case):
    kw = dict(ATTEND_CASES[case])
    q, k, v = _qkv(T=kw.pop("T"), S=kw.pop("S"))
    ref, ref_grads = _outputs_and_grads(lambda *t: attend(*t, impl="sdpa", **kw), (q, k, v))
    out, grads = _outputs_and_grads(lambda *t: attend(*t, impl="math", **kw), (q, k, v))
    torch.testing.assert_close(out, ref, **TOL)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **TOL)


def test_attend_matches_explicit_softmax():
    q, k, v = _qkv(T=3, S=4)
    mask = _padding(2, 4, [4, 2])
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~mask, float("-inf"))
    expected = scores.softmax(-1) @ v
    for impl in ("sdpa", "math"):
        torch.testing.assert_close(attend(q, k, v, mask, impl=impl), expected, **TOL)


def _fused_qkv(B=3, T=6, H=4, D=16, seed=1, dtype=torch.float32):
    """q, k, v as strided views of one (B, T, 3C) projection, as SelfAttention makes them."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, T, 3 * H * D, generator=g).to(dtype).requires_grad_()
    views = [t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(H * D, dim=2)]
    return qkv, views


@pytest.mark.parametrize("length", [6, 20])  # 20: a bf16 softmax row taken through float32
@pytest.mark.parametrize("case", ["padding", "causal", "fully masked row"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_math_attention_function_equals_the_plain_path(monkeypatch, case, precision, length):
    from vislm.models.layers import _MathAttention

    T = length
    mask = {"padding": _padding(3, T, [T, 4, 1]), "causal": None,
            "fully masked row": torch.zeros(3, 1, T, T, dtype=torch.bool)}[case]
    mask = None if mask is None else mask.clone()
    if case == "fully masked row":
        mask[0] = True
        mask[1, :, 2:] = True  # row 1 queries 0-1 see nothing: uniform, as the plain path
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    results = []
    for function in (True, False):
        monkeypatch.setattr(_MathAttention, "applies", staticmethod(lambda *a, f=function: f))
        qkv, (q, k, v) = _fused_qkv(T=T, dtype=dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = attend(q, k, v, mask, causal=case == "causal", impl="math")
        grad_out = torch.linspace(-1, 1, out.numel()).view_as(out).to(out.dtype)
        (grad,) = torch.autograd.grad(out, qkv, grad_out)
        results.append((out.float(), grad.float()))
    (out, grad), (plain_out, plain_grad) = results
    tol = TOL if precision == "fp32" else dict(atol=2e-2, rtol=2e-2)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, plain_out, **tol)
    torch.testing.assert_close(grad, plain_grad, **tol)


@pytest.mark.parametrize("length", [8, 16, 20, 31, 32, 65])
def test_bf16_softmax_and_its_backward_agree_with_float32(length):
    # Rows of 16-31 go through float32, the others through the bf16 kernel: both must be
    # the float32 softmax and its gradient, up to the final bf16 rounding.
    from vislm.models.layers import _softmax, _softmax_backward

    g = torch.Generator().manual_seed(length)
    scores = (4 * torch.randn(64, 7, length, generator=g)).bfloat16()
    grad_probs = torch.randn(64, 7, length, generator=g).bfloat16()
    exact = scores.float().requires_grad_()
    exact_probs = exact.softmax(-1)
    (exact_grad,) = torch.autograd.grad(exact_probs, exact, grad_probs.float())
    probs = _softmax(scores)
    assert probs.dtype == torch.bfloat16
    torch.testing.assert_close(probs.float(), exact_probs.detach(), atol=4e-3, rtol=8e-3)
    grad = _softmax_backward(grad_probs, probs)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.float(), exact_grad, atol=2e-2, rtol=2e-2)


def test_math_attention_function_only_while_training(monkeypatch):
    from vislm.models.layers import _MathAttention

    calls = []
    apply = _MathAttention.apply
    monkeypatch.setattr(_MathAttention, "apply", lambda *a: calls.append(1) or apply(*a))
    _, (q, k, v) = _fused_qkv()
    with torch.no_grad():
        attend(q, k, v, impl="math")  # decoding: the cache is read in place
    attend(q, k, v, impl="math", dropout_p=0.1)  # dropout keeps the plain path
    attend(q.detach(), k.detach(), v.detach(), impl="math")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attend(q, k, v, impl="math")  # float32 inputs under bf16 autocast
    assert not calls
    attend(q, k, v, impl="math")
    assert calls == [1]


def test_causal_mask_with_offset():
    # 2 new queries at positions 3 and 4 of a 5-key sequence.
    expected = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(2, 5), expected)


def test_self_attention_mask_uses_fast_paths():
    assert self_attention_mask(None, 4, 4, causal=True) == (None, True)
    assert self_attention_mask(None, 1, 9, causal=True) == (None, False)
    assert self_attention_mask(None, 4, 4, causal=False) == (None, False)
    mask, causal = self_attention_mask(torch.tensor([[1, 1, 0]]), 3, 3, causal=True)
    assert not causal and mask.shape == (1, 1, 3, 3)
    assert mask[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]


def _param_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_block_math_equals_sdpa_with_cross_attention_and_padding():
    torch.manual_seed(0)
    block = Block(16, 4, cross_attention=True)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    mask, ctx_mask = _padding(2, 5, [5, 3]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    results = []
    for impl in ("sdpa", "math"):
        set_attn_impl(block, impl)
        block.zero_grad(set_to_none=True)
        out, _ = block(x, mask, context=ctx, context_mask=ctx_mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), _param_grads(block)))
    torch.testing.assert_close(results[1][0], results[0][0], **TOL)
    assert results[0][1].keys() == results[1][1].keys() and len(results[0][1]) > 0
    for name in results[0][1]:
        torch.testing.assert_close(results[1][1][name], results[0][1][name], **TOL)


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "rotary"])
@pytest.mark.parametrize("name", ["encoder", "decoder"])
def test_text_model_math_equals_sdpa(name, position):
    torch.manual_seed(0)
    model = TEXT_MODELS.create(name, **{**TEXT_MODELS.tiny_kwargs(name), "depth": 2,
                                        "position": position, "cross_attention": True})
    ids = torch.randint(0, model.vocab_size, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    image = torch.randn(2, 4, model.dim)
    results = []
    for impl in ("sdpa", "math"):
        set_attn_impl(model, impl)
        model.zero_grad(set_to_none=True)
        out = model(ids, mask, image)
        out = out[0] if isinstance(out, tuple) else out
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), _param_grads(model)))
    torch.testing.assert_close(results[1][0], results[0][0], **TOL)
    for key in results[0][1]:
        torch.testing.assert_close(results[1][1][key], results[0][1][key], **TOL)


def test_set_attn_impl_rejects_unknown():
    with pytest.raises(ValueError):
        set_attn_impl(Block(8, 2), "flash")


# -----------------------------------------------------------------------------
# Masks do what they say in whole models

def test_encoder_ignores_pad_tokens():
    torch.manual_seed(0)
    model = TEXT_MODELS.create("encoder", **TEXT_MODELS.tiny_kwargs("encoder"))
    ids = torch.randint(1, model.vocab_size, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    changed = ids.clone()
    changed[0, 4:] = (ids[0, 4:] + 1) % model.vocab_size
    a, b = model(ids, mask), model(changed, mask)
    torch.testing.assert_close(a[0, :4], b[0, :4], **TOL)
    # Without the mask the same change does reach the real tokens.
    assert not torch.allclose(model(ids)[0, :4], model(changed)[0, :4], atol=1e-4)


def test_decoder_is_causal():
    torch.manual_seed(0)
    model = TEXT_MODELS.create("decoder", **TEXT_MODELS.tiny_kwargs("decoder"))
    ids = torch.randint(0, model.vocab_size, (1, 6))
    changed = ids.clone()
    changed[0, 4] = (ids[0, 4] + 1) % model.vocab_size
    a, b = model(ids)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :4], b[:, :4], **TOL)
    assert not torch.allclose(a[:, 4:], b[:, 4:], atol=1e-4)


def test_decoder_lm_head_is_tied():
    model = TEXT_MODELS.create("decoder", **TEXT_MODELS.tiny_kwargs("decoder"))
    assert model.lm_head.weight is model.tok_emb.weight


def test_image_tokens_without_cross_attention_raise():
    model = TEXT_MODELS.create("encoder", **TEXT_MODELS.tiny_kwargs("encoder"))
    with pytest.raises(ValueError, match="cross_attention"):
        model(torch.zeros(1, 3, dtype=torch.long), None, torch.randn(1, 2, model.dim))


# -----------------------------------------------------------------------------
# Positions

def test_rotary_scores_depend_only_on_relative_position():
    D = 8
    rope = RotaryEmbedding(D, max_len=64)
    q, k = torch.randn(D), torch.randn(D)

    def score(m, n):
        qm = apply_rotary(q[None], *(t[m:m + 1] for t in rope(0, 64)))
        kn = apply_rotary(k[None], *(t[n:n + 1] for t in rope(0, 64)))
        return (qm * kn).sum()

    for m, n in [(0, 3), (5, 2), (7, 7)]:
        for shift in (1, 10, 40):
            torch.testing.assert_close(score(m + shift, n + shift), score(m, n), **TOL)
    assert not torch.allclose(score(0, 3), score(0, 5))
    # Rotation preserves norms.
    cos, sin = rope(17, 1)
    torch.testing.assert_close(apply_rotary(q[None], cos, sin).norm(), q.norm(), **TOL)


def test_rotary_offset_matches_slice_of_full_table():
    rope = RotaryEmbedding(8, max_len=16)
    cos, sin = rope(0, 16)
    cos5, sin5 = rope(5, 3)
    assert torch.equal(cos5, cos[5:8]) and torch.equal(sin5, sin[5:8])


def test_sinusoidal_matches_formula():
    dim = 6
    table = SinusoidalPositions(max_len=10, dim=dim)(0, 10)
    for pos in (0, 3, 9):
        for i in range(dim // 2):
            angle = pos / 10000 ** (2 * i / dim)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert torch.equal(SinusoidalPositions(10, dim)(4, 3), table[4:7])


@pytest.mark.parametrize("make", [lambda: SinusoidalPositions(8, 4), lambda: LearnedPositions(8, 4),
                                  lambda: RotaryEmbedding(4, 8)])
def test_positions_beyond_max_len_raise(make):
    positions = make()
    positions(6, 2)
    with pytest.raises(ValueError, match="max_len"):
        positions(7, 2)


def test_position_tables_are_not_saved():
    # Fixed tables are rebuilt from the config; only learned positions are weights.
    assert "table" not in SinusoidalPositions(8, 4).state_dict()
    assert list(RotaryEmbedding(4, 8).state_dict()) == []
    assert list(LearnedPositions(8, 4).state_dict()) == ["weight"]


@pytest.mark.parametrize("attn_impl", ["sdpa", "math"])
def test_dropout_is_active_only_in_training(attn_impl):
    torch.manual_seed(0)
    kwargs = {**TEXT_MODELS.tiny_kwargs("encoder"), "dropout": 0.5, "attn_impl": attn_impl}
    model = TEXT_MODELS.create("encoder", **kwargs)
    ids = torch.randint(0, model.vocab_size, (2, 5))
    assert not torch.allclose(model(ids), model(ids))
    model.eval()
    assert torch.equal(model(ids), model(ids))


@pytest.mark.parametrize("rows", [1, 2, 16, 64, 65])
def test_few_row_linear_equals_linear(rows):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 1, 24, generator=g)
    weight, bias = torch.randn(300, 24, generator=g), torch.randn(300, generator=g)
    for b in (None, bias):
        got = few_row_linear(x, weight, b)
        assert got.shape == (rows, 1, 300)
        torch.testing.assert_close(got, torch.nn.functional.linear(x, weight, b),
                                   rtol=1e-5, atol=1e-5)
    # Gradients flow through the transposed form too.
    x.requires_grad_(True)
    few_row_linear(x, weight, bias).square().sum().backward()
    expected = 2 * torch.nn.functional.linear(x.detach(), weight, bias) @ weight
    torch.testing.assert_close(x.grad, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [16, 19])  # 19: edge pixels that fill no whole patch
def test_vit_patch_matmul_equals_the_strided_convolution(size):
    from vislm.models.vision import ViTEncoder

    vit = ViTEncoder(image_size=16, patch_size=4, dim=32, depth=1, heads=2)
    torch.nn.init.normal_(vit.patch.bias)
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(size))
    expected = vit.patch(pixels).flatten(2).transpose(1, 2)
    torch.testing.assert_close(vit._embed_patches(pixels), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_cnn_channels_last_is_as_accurate_as_nchw(norm):
    """Channels-last and NCHW sum in different orders: both are compared with a float64
    reference, and channels-last must be about as close to it as NCHW is."""
    from vislm.models.vision import ResNetEncoder

    torch.manual_seed(0)
    cnn = ResNetEncoder(image_size=32, dim=24, widths=(8, 16, 16), norm=norm)
    pixels = torch.randn(4, 3, 32, 32)

    def run(model, layout, dtype):
        model.channels_last = layout
        model.zero_grad(set_to_none=True)
        tokens = model(pixels.to(dtype))
        tokens.square().sum().backward()
        return [tokens.detach()] + [p.grad.clone() for p in model.parameters()]

    reference = run(copy.deepcopy(cnn).double(), False, torch.float64)
    channels_last, nchw = run(cnn, True, torch.float32), run(cnn, False, torch.float32)
    assert all(p.is_contiguous() for p in cnn.parameters())  # weights keep their layout
    for ours, theirs, exact in zip(channels_last, nchw, reference):
        error_ours = (ours.double() - exact).abs().max().item()
        error_theirs = (theirs.double() - exact).abs().max().item()
        scale = exact.abs().max().item()
        assert error_ours <= 4 * error_theirs + 1e-6 * scale, (error_ours, error_theirs)
