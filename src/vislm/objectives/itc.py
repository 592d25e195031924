"""Image-text contrastive loss: symmetric InfoNCE of CLIP (Radford et al. 2021, "Learning
Transferable Visual Models From Natural Language Supervision")."""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vislm.registry import OBJECTIVES


def itc_targets(image_ids: torch.Tensor) -> torch.Tensor:
    """(B, B) soft targets: row i spreads its mass uniformly over the captions whose
    image is the same as row i's, so two captions of one image are both positives."""
    same = (image_ids[:, None] == image_ids[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def itc_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale,
             image_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of the image->text and text->image cross-entropies.

    image_emb, text_emb: (B, E), L2-normalised, row i of each from the same example.
    logit_scale: the multiplier applied to cosine similarities (already exponentiated).
    image_ids: (B,) optional; without it only the diagonal pairs are positives.
    """
    logits = logit_scale * image_emb @ text_emb.t()  # (B images, B texts)
    if image_ids is None:
        targets = torch.arange(logits.size(0), device=logits.device)
    else:
        # The "same image" relation is symmetric, so one target matrix serves both ways.
        targets = itc_targets(image_ids.to(logits.device)).to(logits.dtype)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


# -----------------------------------------------------------------------------
# Across processes, as OpenCLIP (Ilharco et al. 2021) does it: `gather_features` with
# gather_with_grad=True, then `local_loss`. Every rank needs the same local batch size
# (drop the last, smaller batch), or the all_gather fails.

def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_no_grad(t: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each rank -> (R * B, ...) in rank order, without autograd."""
    t = t.contiguous()
    out = t.new_empty((dist.get_world_size() * t.size(0),) + t.shape[1:])
    dist.all_gather_into_tensor(out, t)
    return out


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for each shard at its owner.

    Written here rather than taken from `torch.distributed.nn.functional.all_gather`
    (deprecated): that one keeps a reference to the process group after the graph is
    freed, so `destroy_process_group` cannot stop the group's worker threads, and a
    worker thread that releases its last collective while the interpreter shuts down
    aborts the process (pytorch/pytorch#190489).
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        return _gather_no_grad(t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Summing the whole (R B, ...) gradient over ranks and keeping this rank's rows
        # moves R times more than a reduce-scatter, but works on every backend (gloo has
        # no reduce-scatter) and the gathered tensors are embeddings, (R B, E).
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce is in place
        dist.all_reduce(grad)
        B = grad.size(0) // dist.get_world_size()
        return grad[dist.get_rank() * B:(dist.get_rank() + 1) * B]


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each of R ranks -> (R * B, ...), rank order, on every rank.

    Autograd-aware: the backward of this all_gather sends each rank's gradient for every
    shard back to the shard's owner and sums it there, so the local rows learn from the
    loss terms of all ranks. Every rank must pass the same B. Identity when not distributed.
    """
    if not _distributed():
        return t
    return _GatherWithGrad.apply(t)


def distributed_itc_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale,
                         image_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ITC of this rank's rows against the columns of every rank (OpenCLIP's local_loss).

    Each rank scores its B images against all R * B texts and its B texts against all
    images, so the global (R B) x (R B) logit matrix is never built on one rank. The mean
    of this loss over ranks equals `itc_loss` over the global batch; under DDP, which
    averages gradients over ranks, training is therefore that of the global batch. Not
    distributed (or one rank): exactly `itc_loss`.
    """
    if not _distributed():
        return itc_loss(image_emb, text_emb, logit_scale, image_ids)
    all_image, all_text = gather_with_grad(image_emb), gather_with_grad(text_emb)
    image_to_text = logit_scale * image_emb @ all_text.t()  # (B local, R B global)
    text_to_image = logit_scale * text_emb @ all_image.t()
    B = image_emb.size(0)
    if image_ids is None:
        # The positive of local row i is global column rank * B + i.
        targets = torch.arange(B, device=image_emb.device) + dist.get_rank() * B
    else:
        image_ids = image_ids.to(image_emb.device)
        same = (image_ids[:, None] == _gather_no_grad(image_ids)[None, :]).to(image_to_text.dtype)
        targets = same / same.sum(dim=1, keepdim=True)  # the local rows of itc_targets
    return 0.5 * (F.cross_entropy(image_to_text, targets) + F.cross_entropy(text_to_image, targets))


@OBJECTIVES.register("itc")
def itc(**kwargs):
    """The loss function `itc_loss(image_emb, text_emb, logit_scale, image_ids)`."""
    return partial(itc_loss, **kwargs)


@OBJECTIVES.register("itc_distributed")
def itc_distributed(**kwargs):
    """`distributed_itc_loss`, same arguments as `itc_loss`."""
    return partial(distributed_itc_loss, **kwargs)
