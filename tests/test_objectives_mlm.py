"""BERT masking for MLM: the 15% / 80-10-10 proportions on a large batch, special and pad
tokens never touched, labels only where selected, and the loss over those positions."""

import torch
import torch.nn.functional as F

from vislm.objectives.lm import IGNORE
from vislm.objectives.mlm import mask_tokens, mlm_loss

PAD, UNK, BOS, EOS, MASK = 0, 1, 2, 3, 4
SPECIAL = (PAD, UNK, BOS, EOS, MASK)
V = 1000


def batch(B=64, T=200, seed=0):
    """BOS text EOS, right-padded; the text also contains UNK tokens, which are special."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ids = torch.randint(5, V, (B, T), generator=g)
    ids[torch.rand(B, T, generator=g) < 0.05] = UNK
    ids[:, 0] = BOS
    ids[torch.arange(B), lengths - 1] = EOS
    return ids.masked_fill(mask == 0, PAD), mask


def test_proportions():
    ids, mask = batch()
    corrupted, labels = mask_tokens(ids, mask, MASK, V, SPECIAL,
                                    generator=torch.Generator().manual_seed(1))
    eligible = (mask == 1) & ~torch.isin(ids, torch.tensor(SPECIAL))
    selected = labels != IGNORE
    n_eligible, n_selected = eligible.sum().item(), selected.sum().item()
    assert n_eligible > 8000
    # Standard errors: ~0.004 for the 15%, ~0.01 for the 80%, ~0.007 for each 10%.
    assert abs(n_selected / n_eligible - 0.15) < 0.015
    to_mask = (corrupted == MASK) & selected
    unchanged = (corrupted == ids) & selected
    to_random = selected & ~to_mask & ~unchanged
    assert abs(to_mask.sum().item() / n_selected - 0.8) < 0.04
    assert abs(unchanged.sum().item() / n_selected - 0.1) < 0.03
    assert abs(to_random.sum().item() / n_selected - 0.1) < 0.03
    # Random replacements spread over the vocabulary and are never special.
    replaced = corrupted[to_random]
    assert not torch.isin(replaced, torch.tensor(SPECIAL)).any()
    assert replaced.unique().numel() > 0.8 * replaced.numel()


def test_special_and_pad_tokens_are_never_selected_or_changed():
    for seed in range(5):
        ids, mask = batch(B=16, T=40, seed=seed)
        corrupted, labels = mask_tokens(ids, mask, MASK, V, SPECIAL,
                                        generator=torch.Generator().manual_seed(seed))
        special = torch.isin(ids, torch.tensor(SPECIAL)) | (mask == 0)
        assert (labels[special] == IGNORE).all()
        assert torch.equal(corrupted[special], ids[special])
        # Outside the selected positions nothing changes; labels hold the originals.
        selected = labels != IGNORE
        assert torch.equal(corrupted[~selected], ids[~selected])
        assert torch.equal(labels[selected], ids[selected])


def test_every_row_with_a_real_token_gets_a_target():
    ids = torch.tensor([[BOS, 9, EOS, PAD, PAD], [BOS, 7, 8, 6, EOS], [BOS, EOS, PAD, PAD, PAD]])
    mask = (ids != PAD).long()
    for seed in range(20):
        _, labels = mask_tokens(ids, mask, MASK, V, SPECIAL,
                                generator=torch.Generator().manual_seed(seed))
        selected = labels != IGNORE
        assert selected[0].tolist() == [False, True, False, False, False]
        assert selected[1].any()
        assert not selected[2].any()  # nothing there to mask


def test_loss_is_over_selected_positions_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 10)
    labels = torch.tensor([[IGNORE, 3, IGNORE, IGNORE], [5, IGNORE, IGNORE, 7]])
    picked = torch.stack([logits[0, 1], logits[1, 0], logits[1, 3]])
    expected = F.cross_entropy(picked, torch.tensor([3, 5, 7]))
    torch.testing.assert_close(mlm_loss(logits, labels), expected)
    empty = torch.full((2, 4), IGNORE)
    logits.requires_grad_(True)
    loss = mlm_loss(logits, empty)
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph
