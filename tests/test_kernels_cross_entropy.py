"""The bf16 cross-entropy kernel (vislm/kernels/cross_entropy.py) against PyTorch's
block-wise path in vislm/objectives/lm_head_loss.py."""

import pytest
import torch

from vislm.kernels import cross_entropy as fused
from vislm.objectives import lm_head_loss

pytestmark = pytest.mark.skipif(fused._library() is None, reason="no C compiler for vislm's kernels")


def _steps(a: torch.Tensor, b: torch.Tensor) -> int:
    steps = (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()
    steps[(a.float() - b.float()).abs() <= 1e-9] = 0
    return int(steps.max())


@pytest.mark.parametrize("n,vocab", [(3, 37), (70, 1003), (300, 4096)])
def test_losses_and_gradient_match_the_blockwise_path(n, vocab):
    g = torch.Generator().manual_seed(n)
    logits = (torch.randn(n, vocab, generator=g) * 4).bfloat16()
    targets = torch.randint(0, vocab, (n,), generator=g)
    mine, theirs = logits.clone(), logits.clone()
    losses = fused.cross_entropy_(mine, targets, 1.0 / n)
    total = lm_head_loss._blockwise(theirs, targets, 64, torch.float32, True)
    torch.testing.assert_close(losses.sum(), total, rtol=1e-5, atol=1e-4)
    exact = -torch.log_softmax(logits.double(), dim=-1).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(losses.double(), exact, rtol=1e-5, atol=1e-5)
    assert mine.dtype == torch.bfloat16
    assert _steps(mine, theirs) <= 1
    assert (mine == theirs).float().mean() > 0.999
    # The gradient sums to zero per row (softmax sums to one, minus the one-hot target),
    # up to the bf16 rounding of its elements: their magnitudes add up to 2 / n at most.
    assert mine.double().sum(dim=1).abs().max() < 2.0 / n * 2 ** -8


def test_a_target_far_below_the_best_logit_gets_its_exact_loss():
    logits = torch.zeros(2, 50)
    logits[:, 3] = 120.0  # the target (0) lies 120 nats below: its probability underflows
    logits = logits.bfloat16()
    losses = fused.cross_entropy_(logits.clone(), torch.tensor([0, 3]), 0.5)
    torch.testing.assert_close(losses, torch.tensor([120.0, 49 * torch.exp(torch.tensor(-120.0))]),
                               rtol=1e-5, atol=1e-6)


def test_only_the_losses_leave_the_logits_untouched():
    logits = torch.randn(4, 40).bfloat16()
    copy = logits.clone()
    fused.cross_entropy_(logits, torch.tensor([1, 2, 3, 4]), 0.25, write_gradient=False)
    assert torch.equal(logits, copy)


def test_a_target_outside_the_vocabulary_is_refused():
    logits = torch.randn(2, 40).bfloat16()
    with pytest.raises(IndexError, match=r"outside the vocabulary \[0, 40\)"):
        fused.cross_entropy_(logits, torch.tensor([1, 40]), 0.5)


def test_applies_to_contiguous_bf16_logits_on_the_cpu():
    assert fused.applies(torch.zeros(3, 8, dtype=torch.bfloat16))
    assert not fused.applies(torch.zeros(3, 8))
    assert not fused.applies(torch.zeros(8, 3, dtype=torch.bfloat16).t())
    assert not fused.applies(torch.zeros(2, 3, 8, dtype=torch.bfloat16))


def test_the_lm_loss_trains_the_same_with_and_without_the_kernel(monkeypatch):
    torch.manual_seed(0)
    hidden = torch.randn(4, 9, 32, requires_grad=True)
    weight = torch.randn(500, 32, requires_grad=True)
    ids = torch.randint(0, 500, (4, 9))
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[1, 6:] = 0

    def run(use_kernel):
        monkeypatch.setattr(fused, "applies", lambda logits: use_kernel)
        hidden.grad = weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = lm_head_loss.lm_loss_from_hidden(hidden, weight, ids, mask)
        loss.backward()
        return loss.detach(), hidden.grad.clone(), weight.grad.clone()

    got, want = run(True), run(False)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-2, atol=1e-4)
    torch.testing.assert_close(got[2], want[2], rtol=1e-2, atol=1e-4)


def test_not_under_torch_compile(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not fused.applies(torch.zeros(3, 8, dtype=torch.bfloat16))
