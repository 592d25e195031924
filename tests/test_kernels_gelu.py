"""GELU with its derivative in one pass, and the MLP built on it (vislm/kernels/gelu.py),
against PyTorch's path."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vislm.kernels import gelu as fused
from vislm.models import layers as L

pytestmark = pytest.mark.skipif(not fused.available(), reason="no C compiler for vislm's kernels")


def _steps(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance between two bf16 tensors in representable values."""
    steps = (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()
    steps[(a.float() - b.float()).abs() <= 1e-6] = 0  # +-0 and values next to zero
    return int(steps.max())


@pytest.mark.parametrize("n", [7, 16, 1000, 4160 * 64 + 5])
def test_gelu_and_derivative_round_the_exact_values(n):
    a = (torch.randn(n, generator=torch.Generator().manual_seed(n)) * 4).bfloat16()
    out, slope = fused.gelu_and_derivative(a)
    exact = a.double()
    cdf = 0.5 * (1 + torch.erf(exact / 2 ** 0.5))
    pdf = torch.exp(-exact ** 2 / 2) / (2 * torch.pi) ** 0.5
    assert _steps(out, (exact * cdf).bfloat16()) <= 1
    assert _steps(slope, (cdf + exact * pdf).bfloat16()) <= 1
    # and PyTorch's own bf16 GELU and GELU backward agree with them as closely
    assert _steps(out, F.gelu(a)) <= 1
    assert _steps(slope, torch.ops.aten.gelu_backward(torch.ones_like(a), a)) <= 1


def test_special_values():
    a = torch.tensor([0.0, -0.0, 1e30, -1e30, 30.0, -30.0, float("nan")]).bfloat16()
    out, slope = fused.gelu_and_derivative(a)
    assert out[:6].float().tolist() == [0.0, 0.0, a[2].item(), 0.0, 30.0, 0.0]
    assert slope[:6].float().tolist() == [0.5, 0.5, 1.0, 0.0, 1.0, 0.0]
    assert torch.isnan(out[6]) and torch.isnan(slope[6])


def _mlp_step(mlp: L.MLP, x: torch.Tensor, use_kernel: bool, monkeypatch):
    monkeypatch.setattr(fused, "applies", (lambda *a: True) if use_kernel else (lambda *a: False))
    x = x.clone().requires_grad_()
    mlp.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mlp(x)
    out.float().square().sum().backward()
    return out.detach(), x.grad, [p.grad for p in mlp.parameters()]


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_mlp_trains_as_the_plain_path_does(monkeypatch, x_dtype, bias):
    torch.manual_seed(0)
    mlp = L.MLP(64, 256)
    if not bias:
        mlp.fc = L.Linear(64, 256, bias=False)
        mlp.proj = L.Linear(256, 64, bias=False)
    x = torch.randn(4, 33, 64).to(x_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused.applies(x, mlp.fc, mlp.proj)
    got = _mlp_step(mlp, x, True, monkeypatch)
    want = _mlp_step(mlp, x, False, monkeypatch)
    assert got[0].dtype == want[0].dtype == torch.bfloat16
    assert got[1].dtype == want[1].dtype == x_dtype
    # Outputs: nearly all bit-identical; where GELU rounded differently, one bf16 step
    # in a hidden unit moves an output by about that much.
    assert (got[0] == want[0]).float().mean() > 0.9
    torch.testing.assert_close(got[0], want[0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got[1], want[1], rtol=2e-2, atol=2e-2)
    assert len(got[2]) == len(want[2]) == (4 if bias else 2)
    for mine, theirs in zip(got[2], want[2]):
        assert mine.dtype == theirs.dtype == torch.float32
        torch.testing.assert_close(mine, theirs, rtol=2e-2, atol=2e-2)


def test_applies_only_to_bf16_autocast_training_with_plain_linears():
    mlp = L.MLP(32, 128)
    x = torch.randn(2, 5, 32)
    assert not fused.applies(x, mlp.fc, mlp.proj)  # no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused.applies(x, mlp.fc, mlp.proj)
        with torch.no_grad():
            assert not fused.applies(x, mlp.fc, mlp.proj)
        assert not fused.applies(x[:, :1, :][0], mlp.fc, mlp.proj)  # one row
        handle = mlp.fc.register_forward_hook(lambda *args: None)
        assert not fused.applies(x, mlp.fc, mlp.proj)
        handle.remove()
        assert not fused.applies(x, mlp.fc, nn.Identity())
    with torch.autocast("cpu", dtype=torch.float16):
        assert not fused.applies(x, mlp.fc, mlp.proj)


def test_flop_counter_counts_the_fused_mlp_as_the_plain_one(monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    mlp = L.MLP(32, 128)
    x = torch.randn(4, 9, 32, requires_grad=True)

    def count(use_kernel):
        monkeypatch.setattr(fused, "applies", lambda *a: use_kernel)
        counter = FlopCounterMode(display=False)
        with counter, torch.autocast("cpu", dtype=torch.bfloat16):
            mlp(x).float().sum().backward()
        return counter.get_total_flops()

    # forward and two gradients of each matmul
    assert count(True) == count(False) == 3 * 2 * (36 * 32 * 128) * 2
