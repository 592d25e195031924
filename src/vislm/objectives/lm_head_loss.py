"""Next-token loss straight from hidden states: the LM head and the cross-entropy, fused
and computed a block of rows at a time.

Why: the plain path `lm_loss(lm_head(hidden), ...)` materialises (B, T, V) logits: for a
64 x 20 batch and BERT's 30,522-token vocabulary that is 156 MB in float32. It then copies
them for the one-token shift, casts them to float32 for the loss (under bf16 autocast),
and the backward writes as much again, zero-filled first. All of it is memory traffic,
and on the benchmark's captioner it took over a third of a bf16 training step. Here each
block of rows computes its logits, its loss and the gradients of both inputs while the
block is still in cache; no float32 (B, T, V) tensor ever exists.

Two rows never reach the LM head at all: the last position (it has no next token) and
positions whose target is padding. Both are computed and then discarded by the plain path.

The result equals the plain path up to float rounding (tests/test_lm_head_loss.py: 1e-5
in float32, bf16 rounding under autocast): the same matmuls in the same dtype, the same float32
log-softmax, and the logits' gradient cast back to the compute dtype as autocast's
backward casts it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from vislm.objectives.lm import lm_loss

# Rows per block: 128 x 30,522 float32 logits are 16 MB, which stay in the L3 cache while
# the block's log-softmax passes over them (measured 64-512 rows; 128 was fastest, 2x the
# plain path in bf16 for 1,216 rows).
CHUNK_ROWS = 128


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

    Block by block: logits in the compute dtype, log-softmax in float32, and the logits'
    gradient (softmax - one_hot) / n written into one (n, V) buffer in the compute dtype:
    half the size of the float32 logits in bf16, and never zero-filled. The two gradient
    matmuls then run once over all rows, the very ones autocast's backward runs.
    """

    @staticmethod
    def forward(ctx, rows, weight, targets, chunk_rows):
        dtype = _compute_dtype(rows, weight)
        loss_dtype = torch.promote_types(dtype, torch.float32)  # autocast's cross_entropy
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        with torch.autocast(rows.device.type, enabled=False):
            x, w = rows.to(dtype), weight.to(dtype)
            n = targets.numel()
            total = torch.zeros((), dtype=loss_dtype, device=rows.device)
            grad_logits = x.new_empty(n, w.size(0)) if need_grad else None
            for start in range(0, n, chunk_rows):
                stop = min(start + chunk_rows, n)
                target = targets[start:stop, None]
                logprobs = torch.log_softmax((x[start:stop] @ w.t()).to(loss_dtype), dim=-1)
                total -= logprobs.gather(1, target).sum()
                if need_grad:
                    minus_one = torch.full(target.shape, -1.0, dtype=loss_dtype, device=x.device)
                    # In place: exp of the log-softmax is the softmax; scaled by the mean's
                    # 1/n before the cast, as autocast's backward casts it.
                    grad = logprobs.exp_().scatter_add_(1, target, minus_one).mul_(1.0 / n)
                    grad_logits[start:stop] = grad
            grad_rows = grad_weight = None
            if ctx.needs_input_grad[0]:
                grad_rows = (grad_logits @ w).to(rows.dtype)
            if ctx.needs_input_grad[1]:
                grad_weight = (grad_logits.t() @ x).to(weight.dtype)
        ctx.save_for_backward(grad_rows, grad_weight)
        return total / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_rows, grad_weight = ctx.saved_tensors
        if grad_rows is not None:
            grad_rows = grad_rows * grad_loss.to(grad_rows.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight * grad_loss.to(grad_weight.dtype)
        return grad_rows, grad_weight, None, None

