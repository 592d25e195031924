"""The exact greedy choice from a float32 LM head, reading half of its bytes.

Greedy decoding needs only argmax_v h . w_v over the vocabulary. At decoding batch
sizes the float32 head is limited by reading its (V, C) weight: on 2 AVX-512 cores the
30,522 x 256 head took 2.8 ms of a 6 ms decoding step at batch 16. A bfloat16 copy of the
weight scores every token approximately, at half the bytes and the bf16 GEMM rate; a
rigorous bound on the error of those scores leaves a few candidate tokens per row, and
their exact float32 scores decide. The choice is the float32 argmax, up to ties within
float32 rounding (as for any change of summation order).

The bound, per row h (bf16 copy h~) and token weight w (bf16 copy w~), by Cauchy-Schwarz:

    |h.w - h~.w~| <= |h| |w - w~| + |h - h~| |w~|

plus what the bf16 GEMM adds: float32 accumulation and rounding its output to bf16
(relative 2^-9 of a score at most |h~| |w~|), covered with room by 2^-7 |h~| max|w~|.
A token is a candidate when its approximate score is within twice the bound of the row's
best approximate score: no other token can beat the exact best. The candidates are the
first of a top-16 of the approximate scores; a row with more falls back to the plain head.

Used only where it pays and is exact: float32 weights and hidden states on a CPU with
native bf16 dot products (AVX512-BF16 or AMX), outside autocast. Everywhere else the
plain float32 logits and argmax run.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

# Tokens per row scored exactly at most; rows with more candidates than this fall back
# to the plain float32 head.
CANDIDATES = 16

# Error allowance of the bf16 GEMM relative to |h~| max|w~| (output rounding 2^-9, with
# float32 accumulation far below it).
GEMM_SLACK = 2.0 ** -7


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (otherwise bf16 GEMMs emulate slowly)."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


class ExactArgmaxHead:
    """argmax(hidden @ weight.T, dim=-1) for a tied or untied (V, C) LM head weight.

    Keeps a bf16 copy of the weight, rebuilt whenever the weight changes (new storage or
    an in-place update such as an optimizer step or load_state_dict).
    """

    def __init__(self):
        self._key: Optional[tuple] = None
        self._weight_bf16: Optional[torch.Tensor] = None
        # A score's error bound is _per_norm |h| + _per_rounding |h - h~|.
        self._per_norm = 0.0
        self._per_rounding = 0.0

    def __call__(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """hidden (B, C), weight (V, C) -> token ids (B,)."""
        if not self._applies(hidden, weight):
            return _plain_argmax(hidden, weight)
        self._prepare(weight)
        hidden_bf16 = hidden.to(torch.bfloat16)
        approx = F.linear(hidden_bf16, self._weight_bf16)  # (B, V) bf16
        # The candidates are the top approximate scores down to the threshold; a top-k
        # finds them faster than a comparison over the whole vocabulary.
        top, tokens = approx.topk(CANDIDATES, dim=-1)  # descending
        top = top.float()
        bound = (self._per_norm * hidden.norm(dim=-1)
                 + self._per_rounding * (hidden - hidden_bf16.float()).norm(dim=-1))
        below = top < (top[:, :1] - 2 * bound[:, None])
        if not below[:, -1].all():
            # More candidates than the top-k holds (near-ties everywhere, as in an
            # untrained model), or non-finite hidden states: score every token exactly.
            return _plain_argmax(hidden, weight)
        exact = torch.einsum("bkc,bc->bk", weight[tokens], hidden)
        exact.masked_fill_(below, float("-inf"))
        # The best exact score; among exact ties the lowest token id, as argmax picks.
        best_exact = exact == exact.amax(dim=-1, keepdim=True)
        return tokens.masked_fill_(~best_exact, weight.size(0)).amin(dim=-1)

    @staticmethod
    def _applies(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
        return (hidden.device.type == "cpu" and weight.device.type == "cpu"
                and hidden.dtype == torch.float32 and weight.dtype == torch.float32
                and hidden.dim() == 2 and weight.size(0) > CANDIDATES
                and not torch.is_autocast_enabled("cpu")
                and not (hidden.requires_grad and torch.is_grad_enabled())
                and native_bf16())

    def _prepare(self, weight: torch.Tensor) -> None:
        key = (weight.data_ptr(), weight._version, tuple(weight.shape))
        if key == self._key:
            return
        with torch.no_grad():
            w = weight.detach()
            w_bf16 = w.to(torch.bfloat16)
            max_rounding = (w - w_bf16.float()).norm(dim=-1).max().item()  # max |w - w~|
            max_norm = w_bf16.float().norm(dim=-1).max().item()  # max |w~|
        # |h~| <= (1 + 2^-9) |h| (round to nearest) bounds the GEMM's allowance by |h|.
        self._per_norm = max_rounding + (1 + 2.0 ** -9) * max_norm * GEMM_SLACK
        self._per_rounding = max_norm
        self._weight_bf16, self._key = w_bf16, key


def _plain_argmax(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(hidden, weight).argmax(dim=-1)
