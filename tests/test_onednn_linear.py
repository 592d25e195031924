"""Linear layers through oneDNN equal F.linear: float32 to float32 rounding, bf16 autocast
training to bf16 rounding (the same products, the bias added by the kernel)."""

import pytest
import torch
import torch.nn.functional as F

from vislm.models import onednn_linear
from vislm.models.onednn_linear import (ENV, autocast_applies, forget_choice, linear, matmul_nt,
                                        onednn_is_faster, weight_grad)

has_kernel = pytest.mark.skipif(onednn_linear._kernel() is None, reason="no oneDNN linear kernel")
has_bf16_kernel = pytest.mark.skipif(not onednn_linear._bf16_kernel(), reason="no oneDNN bf16 linear kernel")


@pytest.fixture
def choice(monkeypatch):
    """Force the library: choice("onednn") / choice("blas")."""
    def set_choice(value):
        monkeypatch.setenv(ENV, value)
        forget_choice()
    yield set_choice
    forget_choice()


def _close(got, expected):
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@has_kernel
@pytest.mark.parametrize("shape", [(7, 24), (3, 5, 24)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_forward_and_gradients_equal_f_linear(choice, shape, with_bias):
    choice("onednn")
    g = torch.Generator().manual_seed(len(shape))
    x = torch.randn(*shape, generator=g, requires_grad=True)
    weight = torch.randn(40, 24, generator=g, requires_grad=True)
    bias = torch.randn(40, generator=g, requires_grad=True) if with_bias else None
    grad = torch.randn(*shape[:-1], 40, generator=g)
    inputs = [x, weight] + ([bias] if with_bias else [])

    out = linear(x, weight, bias)
    got = torch.autograd.grad(out, inputs, grad)
    reference = F.linear(x, weight, bias)
    expected = torch.autograd.grad(reference, inputs, grad)
    _close(out, reference)
    for a, b in zip(got, expected):
        _close(a, b)


@has_kernel
@pytest.mark.parametrize("out_features", [8, 96])  # both orientations of the weight gradient
def test_helpers_equal_plain_matmuls(choice, out_features):
    choice("onednn")
    g = torch.Generator().manual_seed(out_features)
    grad, x = torch.randn(50, out_features, generator=g), torch.randn(50, 32, generator=g)
    _close(weight_grad(grad, x), grad.t() @ x)
    w = torch.randn(out_features, 32, generator=g)
    _close(matmul_nt(x, w), x @ w.t())


def test_blas_choice_single_rows_and_autocast_keep_f_linear(choice, monkeypatch):
    calls = []
    monkeypatch.setattr(onednn_linear._Linear, "apply",
                        staticmethod(lambda *a: calls.append(1) or F.linear(*a)))
    monkeypatch.setattr(onednn_linear._AutocastLinear, "apply", staticmethod(F.linear))
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    choice("blas")
    linear(x, w)
    choice("onednn")
    linear(x[:1], w)  # one row
    linear(x.double(), w.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        linear(x, w)
    assert not calls
    if onednn_linear._kernel() is not None:
        linear(x, w)
        assert calls == [1]


def test_an_unknown_choice_names_the_variable(choice):
    choice("fastest")
    with pytest.raises(ValueError, match=ENV):
        onednn_is_faster()


@has_kernel
def test_flop_counter_counts_the_kernel(choice):
    from torch.utils.flop_counter import FlopCounterMode

    choice("onednn")
    x = torch.randn(64, 32, requires_grad=True)
    w = torch.randn(16, 32, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        linear(x, w).sum().backward()
    assert counter.get_total_flops() == 3 * 2 * 64 * 32 * 16  # forward + two gradients


@has_kernel
def test_a_transformer_block_is_unchanged_by_the_library(choice):
    from vislm.models.layers import Block

    torch.manual_seed(0)
    block = Block(32, 4, cross_attention=True)
    x, context = torch.randn(2, 6, 32), torch.randn(2, 5, 32)
    outputs = []
    for library in ("blas", "onednn"):
        choice(library)
        block.zero_grad()
        y, _ = block(x, causal=True, context=context)
        y.square().sum().backward()
        outputs.append((y.detach(), block.mlp.fc.weight.grad.clone()))
    for a, b in zip(*outputs):
        _close(a, b)


def _autocast_linear(fn, x, weight, bias, grad):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(x, weight, bias)
    inputs = [x, weight] + ([bias] if bias is not None else [])
    return out, torch.autograd.grad(out, inputs, grad)


@has_bf16_kernel
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [True, False])
def test_autocast_training_equals_f_linear_under_autocast(x_dtype, with_bias):
    g = torch.Generator().manual_seed(int(with_bias))
    x = torch.randn(3, 50, 64, generator=g).to(x_dtype).requires_grad_()
    weight = torch.randn(96, 64, generator=g, requires_grad=True)
    bias = torch.randn(96, generator=g, requires_grad=True) if with_bias else None
    grad = torch.randn(3, 50, 96, generator=g).bfloat16()
    assert autocast_applies(x, weight) is False  # outside autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_applies(x, weight)

    out, grads = _autocast_linear(linear, x, weight, bias, grad)
    expected_out, expected_grads = _autocast_linear(F.linear, x, weight, bias, grad)
    # The same bf16 output (the bias summed in the kernel's float32 accumulator either way;
    # allowed one bf16 rounding step) and gradients in each input's own dtype, equal to
    # autocast's: the same bf16 products, cast the same way.
    assert out.dtype == expected_out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected_out.float(), rtol=2 ** -7, atol=1e-6)
    for got, expected in zip(grads, expected_grads, strict=True):
        assert got.dtype == expected.dtype
        torch.testing.assert_close(got, expected)


def test_autocast_path_only_while_training_in_bf16(monkeypatch):
    calls = []
    monkeypatch.setattr(onednn_linear._AutocastLinear, "apply",
                        staticmethod(lambda *a: calls.append(1) or F.linear(*a)))
    monkeypatch.setattr(onednn_linear, "_bf16_kernel", lambda: True)
    x, w = torch.randn(4, 8), torch.randn(3, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            linear(x, w)  # inference keeps autocast's cache of cast weights
        linear(x[:1], w)  # one row
        linear(x.double(), w.double())
    with torch.autocast("cpu", dtype=torch.float16):
        linear(x, w)
    with monkeypatch.context() as compiling, torch.autocast("cpu", dtype=torch.bfloat16):
        compiling.setattr(torch.compiler, "is_compiling", lambda: True)
        linear(x, w)  # Inductor fuses the bias itself
    assert not calls
    with torch.autocast("cpu", dtype=torch.bfloat16):
        linear(x, w)
    assert calls == [1]


@has_bf16_kernel
def test_flop_counter_counts_the_autocast_path():
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(64, 32, requires_grad=True)
    w = torch.randn(16, 32, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = linear(x, w)
        out.float().sum().backward()
    assert counter.get_total_flops() == 3 * 2 * 64 * 32 * 16
