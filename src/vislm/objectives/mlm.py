"""Masked language modelling conditioned on the image (BERT's masking, Devlin et al. 2019,
"BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding", as
used by ALBEF and ViLT): the text is corrupted, the fusion encoder sees it with the image,
and the loss asks for the original tokens at the corrupted positions only.

Of the real, non-special tokens each is selected with probability 15%; a selected token
becomes [MASK] 80% of the time, a random token 10%, and stays itself 10% (so the model
cannot assume that an unmasked token is never a target).
"""

from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from vislm.objectives.lm import IGNORE
from vislm.registry import OBJECTIVES


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_id: int,
                vocab_size: int, special_ids: Sequence[int], mask_prob: float = 0.15,
                generator: Optional[torch.Generator] = None):
    """(corrupted input_ids, labels): labels hold the original id where selected, else -100.

    Padding (attention_mask 0) and `special_ids` (pad, BOS/[CLS], EOS/[SEP], [MASK], ...)
    are never selected, and random replacements are never special tokens. A sequence with
    any eligible token gets at least one selected: short captions would otherwise often
    have none, and a batch with no target at all gives no MLM signal.
    """
    device = input_ids.device
    special = torch.tensor(sorted(set(special_ids)) + [mask_id], device=device)
    eligible = attention_mask.bool() & ~torch.isin(input_ids, special)

    def uniform():
        return torch.rand(input_ids.shape, generator=generator, device=device)

    selected = (uniform() < mask_prob) & eligible
    missed = eligible.any(dim=1) & ~selected.any(dim=1)
    if missed.any():
        # A uniformly random eligible position of each row that got none.
        position = (uniform() * eligible).argmax(dim=1)
        selected[missed, position[missed]] = True
    labels = input_ids.masked_fill(~selected, IGNORE)

    action = uniform()
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)  # the last 10% stay as they are
    vocabulary = torch.arange(vocab_size, device=device)
    ordinary = vocabulary[~torch.isin(vocabulary, special)]
    random_ids = ordinary[torch.randint(len(ordinary), input_ids.shape, generator=generator,
                                        device=device)]
    corrupted = input_ids.masked_fill(to_mask, mask_id)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return corrupted, labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the selected positions; logits (B, T, V), labels (B, T).

    With no selected position at all (e.g. only special tokens) the loss is 0, still
    connected to the graph, rather than the NaN of an empty mean.
    """
    if not (labels != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=IGNORE)


@OBJECTIVES.register("mlm")
def mlm(**kwargs):
    """The loss function `mlm_loss(logits, labels)`; corrupt the text with `mask_tokens`."""
    return partial(mlm_loss, **kwargs)
