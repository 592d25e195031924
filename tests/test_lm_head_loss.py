"""The fused, chunked LM-head loss equals the plain logits + cross-entropy path."""

import math

import pytest
import torch

from vislm.models.fusion.captioner import Captioner
from vislm.objectives.lm import lm_loss
from vislm.objectives.lm_head_loss import lm_loss_from_hidden


def _inputs(seed=0, B=3, T=7, C=16, V=50, padded=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, C, generator=g, requires_grad=True)
    weight = (torch.randn(V, C, generator=g) * 0.3).requires_grad_()
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    if padded:
        mask[0, 4:] = 0
        mask[2, 6:] = 0
    return hidden, weight, ids, mask


def _loss_and_grads(fn, hidden, weight, ids, mask, bf16=False):
    hidden.grad = weight.grad = None
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        loss = fn(hidden, weight, ids, mask)
    loss.backward()
    return loss.detach().float(), hidden.grad.clone(), weight.grad.clone()


def plain(hidden, weight, ids, mask):
    return lm_loss(hidden @ weight.t(), ids, mask)


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("chunk", [1, 4, 128])
def test_float32_matches_the_plain_path_within_1e_5(padded, chunk):
    hidden, weight, ids, mask = _inputs(padded=padded)
    mask_or_none = mask if padded else None
    fused = lambda h, w, i, m: lm_loss_from_hidden(h, w, i, m, chunk_rows=chunk)  # noqa: E731
    expected = _loss_and_grads(plain, hidden, weight, ids, mask_or_none)
    got = _loss_and_grads(fused, hidden, weight, ids, mask_or_none)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_matches_the_plain_path_within_bf16_rounding():
    hidden, weight, ids, mask = _inputs(seed=1, V=300)
    fused = lambda h, w, i, m: lm_loss_from_hidden(h, w, i, m, chunk_rows=5)  # noqa: E731
    loss_e, gh_e, gw_e = _loss_and_grads(plain, hidden, weight, ids, mask, bf16=True)
    loss_g, gh_g, gw_g = _loss_and_grads(fused, hidden, weight, ids, mask, bf16=True)
    # Same bf16 matmuls and float32 softmax; only summation order differs.
    assert loss_g.item() == pytest.approx(loss_e.item(), rel=1e-4)
    for e, g in ((gh_e, gh_g), (gw_e, gw_g)):
        assert ((g - e).norm() / e.norm()).item() < 1e-2


def test_no_grad_and_a_scaled_loss():
    hidden, weight, ids, mask = _inputs(seed=2)
    with torch.no_grad():
        assert lm_loss_from_hidden(hidden, weight, ids, mask).item() == pytest.approx(
            plain(hidden, weight, ids, mask).item(), rel=1e-6)
    # The backward scales the gradients computed in the forward by the incoming gradient.
    (3.0 * lm_loss_from_hidden(hidden, weight, ids, mask)).backward()
    fused_grad = hidden.grad.clone()
    hidden.grad = None
    (3.0 * plain(hidden, weight, ids, mask)).backward()
    torch.testing.assert_close(fused_grad, hidden.grad, rtol=1e-5, atol=1e-7)


def test_nothing_to_predict_gives_nan_like_the_plain_path():
    hidden, weight, ids, _ = _inputs()
    mask = torch.zeros_like(ids)
    mask[:, 0] = 1
    assert math.isnan(lm_loss_from_hidden(hidden, weight, ids, mask).item())
    assert math.isnan(plain(hidden, weight, ids, mask).item())


def test_captioner_loss_is_the_plain_loss():
    torch.manual_seed(0)
    model = Captioner(vision="cnn", vision_kwargs={"image_size": 16, "dim": 16, "widths": (8, 8, 16)},
                      text="decoder", text_kwargs={"vocab_size": 40, "dim": 16, "depth": 1, "heads": 2,
                                                   "max_len": 12}).eval()
    batch = {"pixel_values": torch.randn(2, 3, 16, 16), "input_ids": torch.randint(0, 40, (2, 9)),
             "attention_mask": torch.tensor([[1] * 9, [1] * 5 + [0] * 4])}
    logits, _ = model.text(batch["input_ids"], batch["attention_mask"],
                           model.image_tokens(batch["pixel_values"]))
    expected = lm_loss(logits, batch["input_ids"], batch["attention_mask"])
    assert model(batch)["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_importable_first_in_a_fresh_process():
    """lm_head_loss imports vislm.models, whose captioner imports lm_head_loss back."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "from vislm.objectives import lm_head_loss; "
                           "print(lm_head_loss.lm_loss_from_hidden.__name__)"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "lm_loss_from_hidden"
