"""Linear layers through oneDNN's linear kernel: float32 on CPUs where it beats the
default BLAS, and bf16 autocast training with the bias added inside the kernel.

PyTorch runs float32 linear layers on the CPU through its BLAS (MKL in the official
wheels). On an AMD EPYC with AVX-512, MKL takes a narrower code path and reaches about
half the chip's float32 rate, while oneDNN, which PyTorch also ships (and already uses
for bf16), runs at nearly all of it: measured on 2 cores, a 4160 x 256 x 1024 product
10.2 ms with MKL and 4.7 ms with oneDNN, and the same ratio for the two backward
products. Here vislm's float32 linear layers (the forward and both backward matmuls)
call oneDNN's linear kernel, `torch.ops.mkldnn._linear_pointwise`, the one Inductor
emits. Same products, another summation order: results agree to float32 rounding
(tests/test_onednn_linear.py).

Used only where it is measured faster: the first float32 call times both libraries on a
training-sized product and keeps the faster (an Intel CPU may well keep its BLAS).
VISLM_FP32_MATMUL=blas or =onednn skips the measurement.

Under bf16 autocast PyTorch already multiplies through oneDNN, but as addmm: it first
copies the bias into every row of the output and then accumulates the product onto it,
one more pass over the largest activations of a Transformer (measured on 2 cores, forward
and backward of a 4160 x 256 -> 1024 layer: 10.0 ms as addmm, 9.7 ms here; in a whole
dual-encoder step the gain is within the machine's noise). `_AutocastLinear` casts as autocast does and passes the bias
to the kernel, which adds it in its epilogue; its backward is autocast's (bf16 products,
gradients returned in each input's dtype). Used while training (grad enabled), where
autocast casts each weight once per forward anyway; inference keeps F.linear and
autocast's cache of cast weights (a decoding loop reuses them every token). Under
torch.compile, F.linear too: Inductor fuses the bias itself, and cannot lower the kernel
inside a compiled autograd Function in bf16.

Single rows (batch-1 decoding), other devices and dtypes keep F.linear.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional

import torch
import torch.nn.functional as F

from vislm.timing import best_of

ENV = "VISLM_FP32_MATMUL"


def _kernel():
    mkldnn = getattr(torch.ops, "mkldnn", None)
    try:
        return mkldnn._linear_pointwise if mkldnn is not None else None
    except (AttributeError, RuntimeError):
        return None


def _onednn(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T through oneDNN."""
    return _kernel()(x, weight, None, "none", [], "")


_decided: Optional[bool] = None


def onednn_is_faster() -> bool:
    """Whether float32 matmuls go through oneDNN in this process (decided once; a plain
    global rather than a cache, which torch.compile would trace through)."""
    global _decided
    if _decided is None:
        _decided = _decide()
    return _decided


def forget_choice() -> None:
    """Decide again at the next call (after changing VISLM_FP32_MATMUL)."""
    global _decided
    _decided = None


def _decide() -> bool:
    choice = os.environ.get(ENV, "auto").lower()
    if choice in ("blas", "onednn"):
        return choice == "onednn" and _kernel() is not None
    if choice != "auto":
        raise ValueError(f"{ENV} must be auto, blas or onednn, got {choice!r}")
    if _kernel() is None or not torch.backends.mkldnn.is_available():
        return False
    # Outside any dispatch mode the caller may be in (a FLOP counter would count this).
    with _no_dispatch_modes(), torch.no_grad():
        x, w = torch.randn(512, 256), torch.randn(1024, 256)
        try:
            return _best_seconds(lambda: _onednn(x, w)) * 1.2 < _best_seconds(lambda: x @ w.t())
        except RuntimeError:
            return False


def _no_dispatch_modes():
    try:
        from torch.utils._python_dispatch import _disable_current_modes
    except ImportError:
        return contextlib.nullcontext()
    return _disable_current_modes()


def _best_seconds(fn) -> float:
    fn()  # kernel selection and first touch
    return best_of(fn, 5)


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.numel() > x.size(-1)  # more than one row
            and not torch.is_autocast_enabled("cpu") and onednn_is_faster())


_AUTOCAST_INPUTS = (torch.float32, torch.bfloat16)


def autocast_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether F.linear would run as a bf16 autocast training product on this CPU."""
    return (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_grad_enabled()
            and x.dtype in _AUTOCAST_INPUTS and weight.dtype in _AUTOCAST_INPUTS
            and x.numel() > x.size(-1) and not torch.compiler.is_compiling() and _bf16_kernel())


@functools.cache  # asked at every linear call; not reached under torch.compile
def _bf16_kernel() -> bool:
    if _kernel() is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear(x, weight, bias), through oneDNN where `applies` or `autocast_applies`."""
    if applies(x, weight):
        return _Linear.apply(x, weight, bias)
    if autocast_applies(x, weight):
        return _AutocastLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M, K) @ b (N, K)^T without autograd (for hand-written backward passes)."""
    if not applies(a, b):
        return a @ b.t()
    return _onednn(a, b)


def weight_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad (M, N)^T @ x (M, K) -> (N, K), the weight's gradient of a linear layer."""
    if not applies(x, grad):
        return grad.t() @ x
    # oneDNN is fastest with the wider of the two operands as its "weight": measured
    # 4160 x 256 -> 1024 (wide output) 5.9 ms computed as (x^T grad)^T against 8.7 ms, and
    # 4160 x 1024 -> 256 6.0 ms as it stands against 9.0 ms.
    if grad.size(1) >= x.size(1):
        return _onednn(x.t(), grad.t()).t()
    return _onednn(grad.t(), x.t())


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        rows = x.reshape(-1, x.size(-1))
        out = _kernel()(rows, weight, bias, "none", [], "")
        return out.reshape(*x.shape[:-1], weight.size(0))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.size(-1))
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn(grad_rows, weight.t()).reshape(x.shape)  # grad @ W
        if ctx.needs_input_grad[1]:
            grad_weight = weight_grad(grad_rows, x.reshape(-1, x.size(-1)))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(dim=0)
        return grad_x, grad_weight, grad_bias


class _AutocastLinear(torch.autograd.Function):
    """F.linear under bf16 autocast, the bias added by the kernel (see the module's notes)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        low = torch.bfloat16
        rows, w = x.reshape(-1, x.size(-1)).to(low), weight.to(low)
        out = _kernel()(rows, w, None if bias is None else bias.to(low), "none", [], "")
        ctx.save_for_backward(rows, w)
        ctx.shape, ctx.dtypes = x.shape, (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return out.reshape(*x.shape[:-1], weight.size(0))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        rows, w = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        grad_rows = grad.reshape(-1, grad.size(-1)).to(torch.bfloat16)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_rows @ w).reshape(ctx.shape).to(x_dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = (grad_rows.t() @ rows).to(w_dtype)
        if b_dtype is not None and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(dim=0).to(b_dtype)
        return grad_x, grad_weight, grad_bias


def _register_flop_formula() -> None:
    """Teach torch.utils.flop_counter the kernel's FLOPs (2 x rows x K x N), so that MFU
    counts the matmuls that run through it (every overload: vislm/kernels/gelu.py uses
    `binary`)."""
    kernel = _kernel()
    try:
        from torch.utils.flop_counter import flop_registry, register_flop_formula
    except ImportError:
        return
    if kernel is None or kernel in flop_registry:
        return

    @register_flop_formula(kernel)
    def _flops(x_shape, *args, out_shape=None, **kwargs) -> int:
        # From the output's shape, which every overload has in the same place: the
        # `binary` one (a post-op with a second tensor) takes that tensor before the weight.
        outputs = 1
        for size in out_shape:
            outputs *= size
        return 2 * outputs * x_shape[-1]


_register_flop_formula()
