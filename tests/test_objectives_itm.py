"""ITM hard negatives: never a matching pair (duplicate image ids included), drawn with
softmax(similarity) over the non-matching ones, and the ITM batch built from them."""

import pytest
import torch

from vislm.objectives.itm import NO_NEGATIVE, itm_loss, itm_pairs, sample_hard_negatives
from vislm.registry import OBJECTIVES


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_never_picks_a_matching_pair(scale):
    ids = torch.tensor([0, 1, 0, 2, 1, 3, 0, 4])  # images 0 and 1 have several captions
    same = ids[:, None] == ids[None, :]
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        sim = torch.randn(8, 8, generator=g)
        # Make the matching pairs by far the most similar, as after training: a sampler
        # that zeroed probabilities after the softmax would underflow to all-zero rows.
        sim = scale * (sim + 20.0 * same)
        text_for_image, image_for_text = sample_hard_negatives(sim, ids, g)
        rows = torch.arange(8)
        assert (text_for_image >= 0).all() and (image_for_text >= 0).all()
        assert not same[rows, text_for_image].any()
        assert not same[image_for_text, rows].any()


def test_without_ids_only_the_diagonal_matches():
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        t, i = sample_hard_negatives(torch.zeros(3, 3), None, g)
        assert (t != torch.arange(3)).all() and (i != torch.arange(3)).all()
        seen.update(t.tolist())
    assert seen == {0, 1, 2}


def test_draws_follow_softmax_over_the_negatives():
    # n pairs; text j has similarity f[j % 3] to every image, so image i draws a text of
    # class c with probability (number of class-c texts other than i) * e^f[c] / Z.
    n, f = 1500, torch.tensor([1.0, 2.0, 0.0])
    cls = torch.arange(n) % 3
    sim = f[cls].expand(n, n).clone()
    sim.fill_diagonal_(50.0)  # the matching pair, never drawn however similar
    text_for_image, _ = sample_hard_negatives(sim, None, torch.Generator().manual_seed(0))
    counts = torch.bincount(cls[text_for_image], minlength=3).float() / n
    others = (n // 3 - (cls[:, None] == torch.arange(3)).float()) * f.exp()  # (n, 3)
    expected = (others / others.sum(dim=1, keepdim=True)).mean(dim=0)
    assert (text_for_image != torch.arange(n)).all()
    torch.testing.assert_close(counts, expected, atol=0.04, rtol=0)  # ~4 standard errors


def test_a_row_without_any_negative_gets_none_and_is_left_out():
    ids = torch.tensor([7, 7, 7, 3])
    g = torch.Generator().manual_seed(0)
    t, i = sample_hard_negatives(torch.randn(4, 4), ids, g)
    assert t[:3].tolist() == [3, 3, 3] and i[:3].tolist() == [3, 3, 3]
    assert t[3] != 3 and i[3] != 3
    all_same = torch.zeros(3, dtype=torch.long)
    t, i = sample_hard_negatives(torch.randn(3, 3), all_same, g)
    assert (t == NO_NEGATIVE).all() and (i == NO_NEGATIVE).all()
    image_index, text_index, labels = itm_pairs(torch.randn(3, 3), all_same, g)
    assert labels.tolist() == [1, 1, 1] and torch.equal(image_index, text_index)


def test_itm_batch_and_loss():
    ids = torch.tensor([0, 1, 0, 2])
    g = torch.Generator().manual_seed(0)
    image_index, text_index, labels = itm_pairs(torch.randn(4, 4), ids, g)
    assert labels.tolist() == [1] * 4 + [0] * 8
    matching = ids[image_index] == ids[text_index]
    assert torch.equal(matching, labels.bool())  # label 1 exactly for the matching pairs
    assert image_index[4:8].tolist() == [0, 1, 2, 3]  # each image with its hard text
    assert text_index[8:].tolist() == [0, 1, 2, 3]  # each text with its hard image

    def oracle(image_index, text_index):  # a head that knows the answer
        score = 10.0 * (2.0 * (ids[image_index] == ids[text_index]).float() - 1.0)
        return torch.stack([-score, score], dim=1)

    assert itm_loss(oracle, torch.randn(4, 4), ids, g).item() < 1e-3

    def unsure(image_index, text_index):
        return torch.zeros(len(image_index), 2, requires_grad=True)

    assert itm_loss(unsure, torch.randn(4, 4), ids, g).item() == pytest.approx(0.6931, abs=1e-4)


def test_sampling_is_reproducible_and_registered():
    sim = torch.randn(6, 6)
    a = sample_hard_negatives(sim, None, torch.Generator().manual_seed(3))
    b = sample_hard_negatives(sim, None, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert "itm" in OBJECTIVES
