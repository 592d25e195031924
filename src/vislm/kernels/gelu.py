"""A Transformer MLP, fc -> GELU -> proj, for bf16 autocast training on the CPU, with
GELU and its derivative computed in one pass.

The plain path computes gelu(a) in the forward and, in the backward, gelu'(a) from a
again: erf and exp twice over the MLP's widest activation, and one more pass to multiply
the incoming gradient by it. Here the forward computes both (gelu.c) and keeps gelu'(a)
instead of a; the backward's product with it runs inside the input-gradient matmul, as a
oneDNN post-op. The matmuls are those of `_AutocastLinear` (vislm/models/onednn_linear.py):
bf16 operands, float32 accumulation, the bias added by the kernel.

Same arithmetic up to rounding: erf and exp are approximations within 1.5e-7 of their
float32 values, and the gradient through GELU is rounded to bf16 once (after the
product) instead of twice; results agree with the plain path to bf16 rounding
(tests/test_kernels_gelu.py).
"""

from __future__ import annotations

import ctypes
import functools

import torch
import torch.nn as nn

from vislm.kernels import build
from vislm.models import onednn_linear

_P = ctypes.c_void_p


@functools.lru_cache(maxsize=None)
def _library():
    return build.bind("gelu", {"vislm_gelu_and_derivative_bf16": ([_P, _P, _P, ctypes.c_int64], None)})


def available() -> bool:
    return _library() is not None


def _plain(linear: nn.Module) -> bool:
    return (isinstance(linear, nn.Linear) and not linear._forward_hooks
            and not linear._forward_pre_hooks)


def applies(x: torch.Tensor, fc: nn.Module, proj: nn.Module) -> bool:
    """Whether `mlp(x, fc, proj)` may stand in for proj(gelu(fc(x))): bf16 autocast
    training on the CPU (where fc would run as `_AutocastLinear`) and plain linear layers."""
    return (_plain(fc) and _plain(proj) and onednn_linear.autocast_applies(x, fc.weight)
            and proj.weight.dtype in (torch.float32, torch.bfloat16) and available())


def gelu_and_derivative(a: torch.Tensor):
    """(gelu(a), gelu'(a)) for a contiguous bf16 tensor, both bf16."""
    out, slope = torch.empty_like(a), torch.empty_like(a)
    _library().vislm_gelu_and_derivative_bf16(a.data_ptr(), out.data_ptr(), slope.data_ptr(),
                                              a.numel())
    return out, slope


def mlp(x: torch.Tensor, fc: nn.Linear, proj: nn.Linear) -> torch.Tensor:
    """proj(gelu(fc(x))) (exact, erf GELU); call where `applies(x, fc, proj)`."""
    return _GeluMLP.apply(x, fc.weight, fc.bias, proj.weight, proj.bias)


def _bf16(t):
    return None if t is None else t.to(torch.bfloat16)


class _GeluMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fc_weight, fc_bias, proj_weight, proj_bias):
        kernel = onednn_linear._kernel()
        rows = x.reshape(-1, x.size(-1)).to(torch.bfloat16)
        w1, w2 = fc_weight.to(torch.bfloat16), proj_weight.to(torch.bfloat16)
        hidden, slope = gelu_and_derivative(kernel(rows, w1, _bf16(fc_bias), "none", [], ""))
        out = kernel(hidden, w2, _bf16(proj_bias), "none", [], "")
        ctx.save_for_backward(rows, hidden, slope, w1, w2)
        ctx.shape = x.shape
        ctx.dtypes = (x.dtype, fc_weight.dtype, None if fc_bias is None else fc_bias.dtype,
                      proj_weight.dtype, None if proj_bias is None else proj_bias.dtype)
        return out.reshape(*x.shape[:-1], proj_weight.size(0))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        rows, hidden, slope, w1, w2 = ctx.saved_tensors
        x_dtype, w1_dtype, b1_dtype, w2_dtype, b2_dtype = ctx.dtypes
        needs = ctx.needs_input_grad
        grad = grad.reshape(-1, grad.size(-1)).to(torch.bfloat16)
        grad_w2 = (grad.t() @ hidden).to(w2_dtype) if needs[3] else None
        grad_b2 = grad.sum(dim=0).to(b2_dtype) if b2_dtype is not None and needs[4] else None
        # (grad @ W2) * gelu'(a): the product in the matmul's epilogue.
        grad_a = torch.ops.mkldnn._linear_pointwise.binary(grad, slope, w2.t().contiguous(),
                                                             None, "mul")
        grad_x = (grad_a @ w1).reshape(ctx.shape).to(x_dtype) if needs[0] else None
        grad_w1 = (grad_a.t() @ rows).to(w1_dtype) if needs[1] else None
        grad_b1 = grad_a.sum(dim=0).to(b1_dtype) if b1_dtype is not None and needs[2] else None
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2
