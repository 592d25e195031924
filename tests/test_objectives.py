"""Losses against independent hand-written computations, and how task models use them."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vislm.models  # noqa: F401  (registration)
from vislm.objectives.itc import itc_loss, itc_targets
from vislm.objectives.lm import lm_loss
from vislm.objectives.vqa import vqa_soft_bce
from vislm.registry import FUSIONS


def _unit(x):
    return F.normalize(x, dim=-1)


# -----------------------------------------------------------------------------
# ITC

def itc_by_hand(image_emb, text_emb, scale, image_ids):
    """Loops over rows in float64 numpy; positives are pairs with equal image ids."""
    img, txt = image_emb.double().numpy(), text_emb.double().numpy()
    ids = image_ids.numpy()
    sims = scale * img @ txt.T
    B = len(ids)

    def direction(logits):
        total = 0.0
        for i in range(B):
            log_probs = logits[i] - math.log(sum(math.exp(x) for x in logits[i]))
            positives = [j for j in range(B) if ids[j] == ids[i]]
            total += -sum(log_probs[j] for j in positives) / len(positives)
        return total / B

    return 0.5 * (direction(sims) + direction(sims.T))


def test_itc_with_distinct_images_is_clip_loss():
    torch.manual_seed(0)
    img, txt = _unit(torch.randn(5, 8)), _unit(torch.randn(5, 8))
    expected = itc_by_hand(img, txt, 14.0, torch.arange(5))
    assert itc_loss(img, txt, 14.0).item() == pytest.approx(expected, rel=1e-5)
    assert itc_loss(img, txt, 14.0, torch.arange(5) * 3).item() == pytest.approx(expected, rel=1e-5)


def test_itc_treats_captions_of_one_image_as_positives():
    torch.manual_seed(0)
    img, txt = _unit(torch.randn(6, 8)), _unit(torch.randn(6, 8))
    ids = torch.tensor([4, 7, 4, 9, 7, 4])
    scale = torch.tensor(10.0)
    expected = itc_by_hand(img, txt, 10.0, ids)
    assert itc_loss(img, txt, scale, ids).item() == pytest.approx(expected, rel=1e-5)
    assert itc_loss(img, txt, scale).item() != pytest.approx(expected, rel=1e-3)


def test_itc_targets_spread_uniformly_over_positives():
    targets = itc_targets(torch.tensor([4, 7, 4, 4]))
    expected = torch.tensor([[1, 0, 1, 1], [0, 3, 0, 0], [1, 0, 1, 1], [1, 0, 1, 1]]) / 3
    torch.testing.assert_close(targets, expected.float())


# -----------------------------------------------------------------------------
# LM

def test_lm_loss_matches_manual_mean_over_real_targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6)
    ids = torch.tensor([[1, 3, 4, 2], [1, 5, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    log_probs = logits.double().log_softmax(-1)
    terms = [-log_probs[b, t, ids[b, t + 1]] for b in range(2) for t in range(3) if mask[b, t + 1]]
    expected = sum(terms) / len(terms)
    assert lm_loss(logits, ids, mask).item() == pytest.approx(expected.item(), rel=1e-5)


def test_lm_loss_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.tensor([[1, 3, 4, 2, 0], [1, 5, 2, 0, 0]])
    mask = (ids != 0).long()
    base = lm_loss(logits, ids, mask)
    other_pad = ids.masked_fill(mask == 0, 6)
    assert torch.equal(lm_loss(logits, other_pad, mask), base)
    # Logits at positions whose target is padding do not matter either.
    noisy = logits.clone()
    noisy[1, 2:] = 100.0
    assert torch.equal(lm_loss(noisy, ids, mask), base)


def _caption_batch(model, pad_value):
    g = torch.Generator().manual_seed(0)
    size = model.vision.image_size
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, pad_value, pad_value]])
    return {"pixel_values": torch.randn(2, 3, size, size, generator=g), "input_ids": ids,
            "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}


def test_captioner_loss_does_not_depend_on_pad_tokens():
    torch.manual_seed(0)
    model = FUSIONS.create("captioner", **FUSIONS.tiny_kwargs("captioner")).eval()
    a = model(_caption_batch(model, 0))["loss"]
    b = model(_caption_batch(model, 9))["loss"]
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


# -----------------------------------------------------------------------------
# VQA

def test_vqa_soft_bce_matches_manual_formula():
    torch.manual_seed(0)
    logits = torch.randn(3, 5).double()
    scores = torch.tensor([[1.0, 0.3, 0, 0, 0], [0, 0, 0.6, 0, 0], [0, 0, 0, 0, 0]]).double()
    p = 1 / (1 + np.exp(-logits.numpy()))
    s = scores.numpy()
    per_answer = -(s * np.log(p) + (1 - s) * np.log(1 - p))
    expected = per_answer.sum(axis=1).mean()  # summed over answers, mean over questions
    assert vqa_soft_bce(logits, scores).item() == pytest.approx(expected, rel=1e-10)


def test_vqa_classifier_uses_soft_bce():
    torch.manual_seed(0)
    model = FUSIONS.create("vqa_classifier", **FUSIONS.tiny_kwargs("vqa_classifier")).eval()
    size, n = model.vision.image_size, model.num_answers
    batch = {"pixel_values": torch.randn(2, 3, size, size),
             "input_ids": torch.tensor([[1, 4, 5, 2], [1, 6, 2, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
             "answer_scores": torch.rand(2, n)}
    out = model(batch)
    assert out["logits"].shape == (2, n)
    torch.testing.assert_close(out["vqa_loss"], vqa_soft_bce(out["logits"], batch["answer_scores"]))
    torch.testing.assert_close(model.predict(batch["pixel_values"], batch["input_ids"],
                                             batch["attention_mask"]), out["logits"])


# -----------------------------------------------------------------------------
# Dual encoder

def _dual_batch(model):
    g = torch.Generator().manual_seed(0)
    size = model.vision.image_size
    return {"pixel_values": torch.randn(3, 3, size, size, generator=g),
            "input_ids": torch.tensor([[1, 4, 5, 2], [1, 6, 2, 0], [1, 7, 8, 2]]),
            "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]]),
            "image_ids": torch.tensor([3, 8, 3])}


def test_dual_encoder_embeddings_and_temperature():
    torch.manual_seed(0)
    model = FUSIONS.create("dual_encoder", **FUSIONS.tiny_kwargs("dual_encoder")).eval()
    batch = _dual_batch(model)
    img = model.encode_image(batch["pixel_values"])
    txt = model.encode_text(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    expected = itc_by_hand(img.detach(), txt.detach(), 1 / 0.07, batch["image_ids"])
    assert model(batch)["itc_loss"].item() == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0)
