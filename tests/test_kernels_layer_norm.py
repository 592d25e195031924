"""The fused residual add + LayerNorm + bf16 cast (vislm/kernels) against PyTorch's path."""

import logging

import pytest
import torch
import torch.nn as nn

from vislm.kernels import build
from vislm.kernels import layer_norm as fused
from vislm.models import layers as L

needs_kernel = pytest.mark.skipif(not fused.available(), reason="no C compiler for vislm's kernels")


def _bf16_steps(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance between two bf16 tensors in representable values (0: equal, 1:
    neighbours); values within 1e-5 of each other (near zero) count as equal."""
    steps = (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()
    steps[(a.float() - b.float()).abs() <= 1e-5] = 0
    return int(steps.max())


def _inputs(shape, seed=0, affine=True, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 3 + 1
    h = torch.randn(shape, generator=g).bfloat16()
    norm = nn.LayerNorm(shape[-1], elementwise_affine=affine, bias=bias)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(1 + 0.3 * torch.randn(shape[-1], generator=g))
            if bias:
                norm.bias.copy_(0.3 * torch.randn(shape[-1], generator=g))
    grad_sum = torch.randn(shape, generator=g)
    grad_y = torch.randn(shape, generator=g).bfloat16()
    return x, h, norm, grad_sum, grad_y


def _run(x, h, norm, grad_sum, grad_y, use_kernel: bool):
    x = x.clone().requires_grad_()
    h = None if h is None else h.clone().requires_grad_()
    norm.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if use_kernel:
            assert fused.applies(x, norm, h)
            total, y = fused.add_layer_norm(x, h, norm)
        else:
            total = x if h is None else x + h
            y = norm(total).to(torch.bfloat16)
    outputs = [y] if h is None else [total, y]
    grads = [grad_y] if h is None else [grad_sum, grad_y]
    torch.autograd.backward(outputs, grads)
    params = [p.grad for p in norm.parameters()]
    return total.detach(), y.detach(), x.grad, None if h is None else h.grad, params


@needs_kernel
@pytest.mark.parametrize("shape", [(64, 65, 256), (3, 5, 40), (2, 7)])
@pytest.mark.parametrize("with_branch", [True, False])
def test_matches_pytorch_forward_and_backward(shape, with_branch):
    x, h, norm, grad_sum, grad_y = _inputs(shape)
    h = h if with_branch else None
    got = _run(x, h, norm, grad_sum, grad_y, use_kernel=True)
    want = _run(x, h, norm, grad_sum, grad_y, use_kernel=False)
    assert torch.equal(got[0], want[0])  # the sum: one float32 add either way
    assert got[1].dtype == torch.bfloat16
    assert _bf16_steps(got[1], want[1]) <= 1.0
    # Nearly every element is bit-identical; the rest sit on a rounding boundary.
    assert (got[1] == want[1]).float().mean() > 0.99
    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-5)
    if with_branch:
        assert got[3].dtype == torch.bfloat16
        assert _bf16_steps(got[3], want[3]) <= 1.0
    for mine, theirs in zip(got[4], want[4]):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize("affine,bias", [(False, False), (True, False)])
def test_without_affine_parameters(affine, bias):
    x, h, norm, grad_sum, grad_y = _inputs((4, 9, 48), affine=affine, bias=bias)
    got = _run(x, h, norm, grad_sum, grad_y, use_kernel=True)
    want = _run(x, h, norm, grad_sum, grad_y, use_kernel=False)
    assert _bf16_steps(got[1], want[1]) <= 1.0
    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-5)
    assert len(got[4]) == len(want[4]) == (1 if affine else 0)
    for mine, theirs in zip(got[4], want[4]):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


@needs_kernel
def test_unused_outputs_pass_the_right_gradients():
    x, h, norm, grad_sum, _ = _inputs((2, 3, 32))
    x.requires_grad_()
    h.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, y = fused.add_layer_norm(x, h, norm)
    total.backward(grad_sum)  # y unused: the add's own gradient only
    assert torch.equal(x.grad, grad_sum)
    assert torch.equal(h.grad, grad_sum.bfloat16())
    assert norm.weight.grad is None


@needs_kernel
def test_non_finite_values_propagate():
    x, h, norm, _, _ = _inputs((2, 64))
    x[0, 3] = float("nan")
    x[1, 5] = float("inf")
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.enable_grad():
        total, y = fused.add_layer_norm(x, h, norm)
    assert torch.isnan(total[0, 3]) and torch.isinf(total[1, 5])
    assert torch.isnan(y).all(dim=1).tolist() == [True, True]


@needs_kernel
def test_applies_only_to_bf16_autocast_training_with_a_plain_layer_norm():
    x, h, norm, _, _ = _inputs((2, 3, 16))
    assert not fused.applies(x, norm, h)  # no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused.applies(x, norm, h)
        assert not fused.applies(x, norm, h.float())  # the branch is not bf16
        assert not fused.applies(x.bfloat16(), norm, h)  # the residual stream is not float32
        assert not fused.applies(x, nn.RMSNorm(16), h)
        assert not fused.applies(x, nn.LayerNorm(8), None)
        with torch.no_grad():
            assert not fused.applies(x, norm, h)
        handle = norm.register_forward_hook(lambda *args: None)
        assert not fused.applies(x, norm, h)
        handle.remove()
    with torch.autocast("cpu", dtype=torch.float16):
        assert not fused.applies(x, norm, h)


@needs_kernel
@pytest.mark.parametrize("cross", [False, True])
def test_block_trains_the_same_with_and_without_the_kernel(monkeypatch, cross):
    torch.manual_seed(0)
    block = L.Block(64, 4, attn_impl="math", cross_attention=cross)
    x = torch.randn(3, 9, 64, requires_grad=True)
    context = torch.randn(3, 5, 64) if cross else None

    def run():
        block.zero_grad(set_to_none=True)
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = block(x, context=context)
        out.float().square().mean().backward()
        return out.detach(), x.grad.clone(), [p.grad.clone() for p in block.parameters()]

    calls = []
    real_applies = fused.applies
    monkeypatch.setattr(fused, "applies", lambda *a: calls.append(1) or real_applies(*a))
    got = run()
    assert len(calls) == (3 if cross else 2)
    monkeypatch.setattr(fused, "applies", lambda *a: False)
    want = run()
    torch.testing.assert_close(got[0], want[0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got[1], want[1], rtol=2e-2, atol=1e-3)
    for mine, theirs in zip(got[2], want[2]):
        torch.testing.assert_close(mine, theirs, rtol=2e-2, atol=1e-3)


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv(build.ENV, "off")
    build.load.cache_clear()
    try:
        assert build.load("layer_norm") is None
    finally:
        build.load.cache_clear()
    monkeypatch.setenv(build.ENV, "sometimes")
    with pytest.raises(ValueError, match="VISLM_NATIVE_KERNELS must be auto or off"):
        build.enabled()


@pytest.mark.skipif(build.compiler() is None, reason="no C compiler")
def test_builds_once_into_the_cache_and_reuses_it(monkeypatch, tmp_path):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    build.load.cache_clear()
    try:
        lib = build.load("layer_norm")
        assert lib is not None and hasattr(lib, "vislm_add_layer_norm_bf16")
        built = list((tmp_path / "kernels").glob("layer_norm-*.so"))
        assert len(built) == 1
        stamp = built[0].stat().st_mtime_ns
        build.load.cache_clear()
        assert build.load("layer_norm") is not None
        assert built[0].stat().st_mtime_ns == stamp  # loaded, not built again
        assert not list((tmp_path / "kernels").glob("tmp*"))  # no half-written leftovers
    finally:
        build.load.cache_clear()


def test_a_failing_compiler_leaves_the_pytorch_path(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("CC", "false")  # exits 1 without output
    build.load.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="vislm.kernels.build"):
            assert build.load("layer_norm") is None
        assert "building layer_norm.c failed" in caplog.text
        assert not list((tmp_path / "kernels").glob("*"))
    finally:
        build.load.cache_clear()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_deferred_branches_give_the_same_stream(precision):
    """Blocks passing their last branch on (defer) compute what blocks adding it do."""
    torch.manual_seed(0)
    blocks = nn.ModuleList(L.Block(32, 4, attn_impl="math") for _ in range(3))
    x = torch.randn(2, 7, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        plain = x
        for block in blocks:
            plain, _ = block(plain)
        deferred = x
        for block in blocks:
            deferred, _ = block(deferred, defer=True)
        assert isinstance(deferred, L.Residual)
        last_row = blocks[-1](blocks[1](blocks[0](x, defer=True)[0], defer=True)[0],
                              at=torch.tensor([0, 6]))[0]
    deferred = L.settle(deferred)
    if precision == "fp32":  # the same operations in the same order
        assert torch.equal(deferred, plain)
        assert torch.equal(last_row[:, 0], plain[[0, 1], [0, 6]])
    else:
        torch.testing.assert_close(deferred, plain, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(last_row[:, 0], plain[[0, 1], [0, 6]], rtol=2e-2, atol=2e-2)


def test_state_says_whether_the_kernels_run(monkeypatch):
    monkeypatch.setenv(build.ENV, "off")
    assert build.state() == "off (VISLM_NATIVE_KERNELS=off)"
    monkeypatch.setenv(build.ENV, "auto")
    if fused.available():
        assert build.state().startswith("layer_norm, gelu, cross_entropy built with ")


@pytest.mark.skipif(build.compiler() is None, reason="no C compiler")
def test_without_the_openmp_runtime_it_builds_for_one_thread(monkeypatch, tmp_path):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(build, "torch_openmp_library", lambda: tmp_path / "libgomp-absent.so.1")
    build.load.cache_clear()
    try:
        assert build.load("layer_norm") is not None  # the link against it fails, then this
        assert build._built_with["layer_norm"][1] is None
        assert build.state(("layer_norm",)).endswith(", one thread")
    finally:
        build.load.cache_clear()
        build._built_with.clear()
