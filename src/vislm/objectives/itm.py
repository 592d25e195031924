"""Image-text matching with hard negatives mined from the contrastive similarities (ALBEF,
Li et al. 2021, "Align before Fuse: Vision and Language Representation Learning with
Momentum Distillation").

A binary head on the fusion encoder's multimodal [CLS] says whether an image and a text
belong together. Random negatives are too easy once ITC has trained a little, so for each
image ALBEF draws one non-matching text of the batch, and for each text one non-matching
image, with probability softmax(ITC similarity): the pairs the contrastive model confuses
most are drawn most often. "Non-matching" means another image id, not just another row:
two captions of one image in a batch must never become each other's negatives.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from vislm.registry import OBJECTIVES

NO_NEGATIVE = -1


def _matches(image_ids: Optional[torch.Tensor], B: int, device) -> torch.Tensor:
    """(B, B) True where image i and text j belong together (row i's own pair included)."""
    if image_ids is None:
        return torch.eye(B, dtype=torch.bool, device=device)
    image_ids = image_ids.to(device)
    return image_ids[:, None] == image_ids[None, :]


def _draw(logits: torch.Tensor, matches: torch.Tensor, generator) -> torch.Tensor:
    """One column per row, from softmax over the non-matching columns only."""
    # Masking the logits (rather than zeroing softmax probabilities, as ALBEF's code does)
    # draws from the same distribution but cannot underflow to an all-zero row.
    logits = logits.masked_fill(matches, float("-inf"))
    has_negative = ~matches.all(dim=1)
    # A row without candidates gets a dummy uniform row, so that one draw serves all rows;
    # its pick is discarded below.
    logits = logits.masked_fill(~has_negative[:, None], 0.0)
    picks = torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)
    return picks.masked_fill(~has_negative, NO_NEGATIVE)


def sample_hard_negatives(sim: torch.Tensor, image_ids: Optional[torch.Tensor] = None,
                          generator: Optional[torch.Generator] = None):
    """Hard negatives of a batch of B image-text pairs.

    sim: (B images, B texts) ITC logits, pair (i, i) matching; no gradient flows back.
    image_ids: (B,); pairs whose image ids are equal match as well. None: only (i, i).
    Returns (text_for_image, image_for_text), each (B,) long: a text index per image and
    an image index per text, never a matching one; NO_NEGATIVE (-1) where the batch holds
    no non-matching candidate (every text of the batch describes that image).
    """
    sim = sim.detach().float()
    matches = _matches(image_ids, sim.size(0), sim.device)
    # The relation is symmetric, so the text side uses the transposed matrix as is.
    return _draw(sim, matches, generator), _draw(sim.t(), matches.t(), generator)


def itm_pairs(sim: torch.Tensor, image_ids: Optional[torch.Tensor] = None,
              generator: Optional[torch.Generator] = None):
    """(image_index, text_index, label) of the ITM batch: the B matching pairs (label 1),
    then (image i, its hard text) and (its hard image, text j) (label 0)."""
    B = sim.size(0)
    text_for_image, image_for_text = sample_hard_negatives(sim, image_ids, generator)
    rows = torch.arange(B, device=sim.device)
    keep_t, keep_i = text_for_image != NO_NEGATIVE, image_for_text != NO_NEGATIVE
    image_index = torch.cat([rows, rows[keep_t], image_for_text[keep_i]])
    text_index = torch.cat([rows, text_for_image[keep_t], rows[keep_i]])
    labels = torch.cat([torch.ones(B, dtype=torch.long, device=sim.device),
                        torch.zeros(image_index.numel() - B, dtype=torch.long, device=sim.device)])
    return image_index, text_index, labels


def itm_loss(score_pairs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             sim: torch.Tensor, image_ids: Optional[torch.Tensor] = None,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Cross-entropy of the match / no-match head over positives and hard negatives.

    score_pairs(image_index, text_index) -> (n, 2) logits (class 1 = match): the model
    runs its fusion encoder on those pairs, all at once, and applies its ITM head.
    """
    image_index, text_index, labels = itm_pairs(sim, image_ids, generator)
    return F.cross_entropy(score_pairs(image_index, text_index), labels)


@OBJECTIVES.register("itm")
def itm(**kwargs):
    """The loss function `itm_loss(score_pairs, sim, image_ids, generator)`."""
    return partial(itm_loss, **kwargs)
