"""Next-token loss straight from hidden states: the LM head and the cross-entropy, fused
and computed a block of rows at a time.

Why: the plain path `lm_loss(lm_head(hidden), ...)` materialises (B, T, V) logits: for a
64 x 20 batch and BERT's 30,522-token vocabulary that is 156 MB in float32. It then copies
them for the one-token shift, casts them to float32 for the loss (under bf16 autocast),
and the backward writes as much again, zero-filled first. All of it is memory traffic,
and on the benchmark's captioner it took over a third of a bf16 training step. Here the
logits live in one compute-dtype buffer that each block of rows turns into its gradient
while the block is still in cache; no float32 (B, T, V) tensor ever exists.

Two rows never reach the LM head at all: the last position (it has no next token) and
positions whose target is padding. Both are computed and then discarded by the plain path.

Under bf16 autocast on the CPU, the softmax pass runs as one C kernel per row
(vislm/kernels/cross_entropy.py) where a compiler built it.

The result equals the plain path up to float rounding (tests/test_lm_head_loss.py: 1e-5
in float32, bf16 rounding under autocast): the same matmuls in the same dtype, the same float32
softmax, and the logits' gradient cast back to the compute dtype as autocast's
backward casts it.
"""

from __future__ import annotations

import threading
from typing import Optional

import torch
import torch.nn.functional as F

from vislm.kernels import cross_entropy as fused_cross_entropy
from vislm.models import onednn_linear
from vislm.objectives.lm import lm_loss

# Rows per block of the softmax pass: 64 x 30,522 float32 probabilities are 8 MB, which
# stay in the L3 cache between the softmax and the write of the gradient (measured 32-512
# rows on the benchmark's 1,216 x 30,522 bf16 head: 32 and 64 fastest, 256 nearly 2x slower).
CHUNK_ROWS = 64


def lm_loss_from_hidden(hidden: torch.Tensor, weight: torch.Tensor, input_ids: torch.Tensor,
                        attention_mask: Optional[torch.Tensor] = None,
                        chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """`lm_loss(hidden @ weight.T, input_ids, attention_mask)` without the logits tensor.

    hidden (B, T, C) final hidden states; weight (V, C) the LM head (bias-free); input_ids
    and attention_mask (B, T) as for lm_loss.
    """
    targets = input_ids[:, 1:]
    rows = hidden[:, :-1]
    if attention_mask is not None:
        real = attention_mask[:, 1:].bool()
        rows, targets = rows[real], targets[real]
    else:
        rows, targets = rows.reshape(-1, rows.size(-1)), targets.reshape(-1)
    if targets.numel() == 0:
        # No real target: let the plain path give its answer (NaN, as a mean over nothing).
        return lm_loss(F.linear(hidden, weight), input_ids, attention_mask)
    return _LinearCrossEntropy.apply(rows, weight, targets, chunk_rows)


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """What autocast would run the LM head matmul in, or the inputs' own dtype."""
    device = tensors[0].device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(tensors[0].dtype, tensors[1].dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(rows_i @ weight.T, targets_i), with its gradients computed in the forward
    (the loss is a scalar, so the backward only scales them).

    One matmul writes all logits in the compute dtype into an (n, V) buffer: a single
    large GEMM runs near the machine's peak, where 128-row blocks ran at 60% of it. Block
    by block, a float32 softmax then reads the logits and the logits' gradient
    (softmax - one_hot) / n overwrites them in place, cast to the compute dtype as
    autocast's backward casts it: two passes over each block, no float32 (n, V) tensor,
    no zero-fill. The two gradient matmuls then run once over all rows, the very ones
    autocast's backward runs.
    """

    @staticmethod
    def forward(ctx, rows, weight, targets, chunk_rows):
        dtype = _compute_dtype(rows, weight)
        loss_dtype = torch.promote_types(dtype, torch.float32)  # autocast's cross_entropy
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        with torch.autocast(rows.device.type, enabled=False):
            x, w = rows.to(dtype), weight.to(dtype)
            n = targets.numel()
            # Becomes the logits' gradient, block by block. Float32 on CPUs where oneDNN
            # beats the BLAS goes through oneDNN (vislm/models/onednn_linear.py), which
            # writes a fresh tensor; everything else reuses one buffer.
            if onednn_linear.applies(x, w):
                logits = onednn_linear.matmul_nt(x, w)
            else:
                logits = torch.mm(x, w.t(), out=_logits_buffer(n, w.size(0), dtype, x.device))
            if loss_dtype == torch.float32 and fused_cross_entropy.applies(logits):
                # bf16 on the CPU: the same, a row at a time in one C pass per row.
                total = fused_cross_entropy.cross_entropy_(logits, targets, 1.0 / n,
                                                           need_grad).sum()
            else:
                total = _blockwise(logits, targets, chunk_rows, loss_dtype, need_grad)
            grad_rows = grad_weight = None
            if ctx.needs_input_grad[0]:
                grad_rows = onednn_linear.matmul_nt(logits, w.t()).to(rows.dtype)
            if ctx.needs_input_grad[1]:
                grad_weight = onednn_linear.weight_grad(logits, x).to(weight.dtype)
        ctx.save_for_backward(grad_rows, grad_weight)
        return total / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_rows, grad_weight = ctx.saved_tensors
        if grad_loss.device.type == "cpu" and grad_loss.item() == 1.0:
            # loss.backward() on the loss itself: skip a pass over a (V, C) gradient.
            return grad_rows, grad_weight, None, None
        if grad_rows is not None:
            grad_rows = grad_rows * grad_loss.to(grad_rows.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight * grad_loss.to(grad_weight.dtype)
        return grad_rows, grad_weight, None, None


def _blockwise(logits: torch.Tensor, targets: torch.Tensor, chunk_rows: int,
               loss_dtype: torch.dtype, need_grad: bool) -> torch.Tensor:
    """Summed cross-entropy of `logits` (n, V) against `targets`, block by block of rows:
    a float32 softmax reads each block, and the logits' gradient (softmax - one_hot) / n
    overwrites it in place (where `need_grad`), cast to the logits' dtype as autocast's
    backward casts it."""
    n = targets.numel()
    total = torch.zeros((), dtype=loss_dtype, device=logits.device)
    for start in range(0, n, chunk_rows):
        block = logits[start:start + chunk_rows]
        target = targets[start:start + chunk_rows, None]
        probs = torch.softmax(block, dim=-1, dtype=loss_dtype)
        total -= _target_log_probs(block, probs, target, loss_dtype).sum()
        if need_grad:
            minus_one = torch.full(target.shape, -1.0, dtype=loss_dtype, device=logits.device)
            # Scaled by the mean's 1/n before the cast, as autocast's backward does.
            torch.mul(probs.scatter_add_(1, target, minus_one), 1.0 / n, out=block)
    return total


# One logits buffer per thread, reused by every call on the CPU. glibc hands out blocks
# over 32 MB as fresh pages that the kernel zero-fills on first touch, on every call:
# measured 20 ms for the benchmark's 74 MB bf16 buffer, as long as its logits matmul takes
# without it. Nothing outside the forward keeps a reference to the buffer (the saved
# gradients are new tensors), so the next call may overwrite it.
_workspace = threading.local()


def _logits_buffer(rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if device.type != "cpu":
        return torch.empty(rows, vocab, dtype=dtype, device=device)  # caching allocators
    buffer = getattr(_workspace, "buffer", None)
    if buffer is None or buffer.dtype != dtype or buffer.numel() < rows * vocab:
        _workspace.buffer = None  # free the old one before allocating its successor
        buffer = _workspace.buffer = torch.empty(rows * vocab, dtype=dtype)
    return buffer[:rows * vocab].view(rows, vocab)


def _target_log_probs(logits: torch.Tensor, probs: torch.Tensor, target: torch.Tensor,
                      loss_dtype: torch.dtype) -> torch.Tensor:
    """log p(target) per row from the softmax; rows whose probability underflowed (a
    target more than ~87 nats below the best logit in float32) get the exact log-softmax."""
    p_target = probs.gather(1, target)
    log_p = p_target.log()
    underflow = p_target < torch.finfo(loss_dtype).tiny
    if underflow.any():
        exact = torch.log_softmax(logits.to(loss_dtype), dim=-1).gather(1, target)
        log_p = torch.where(underflow, exact, log_p)
    return log_p
