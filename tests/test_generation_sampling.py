"""Sampling: the top-k / top-p filters on known distributions, empirical frequencies
against softmax probabilities, seeding, and its greedy limits on tiny captioners."""

import pytest
import torch

import vislm.models  # noqa: F401  (registration)
from vislm.generation import decode, filter_logits, sample_decode
from vislm.registry import FUSIONS

EOS, PAD = 2, 0


def fixed_step(logits):
    """A fake model whose next-token logits (V,) are the same for every row and step."""

    def step(input_ids, past, use_cache):
        return logits.expand(input_ids.size(0), 1, -1), None

    return step


def kept(logits, **options):
    return torch.isfinite(filter_logits(logits, **options)).nonzero().flatten().tolist()


def test_top_p_keeps_the_smallest_set_reaching_p():
    # Probabilities 0.15, 0.5, 0.05, 0.3 (deliberately not sorted).
    logits = torch.tensor([0.15, 0.5, 0.05, 0.3]).log()
    assert kept(logits, top_p=0.4) == [1]            # 0.5 alone reaches 0.4
    assert kept(logits, top_p=0.75) == [1, 3]        # 0.5 + 0.3
    assert kept(logits, top_p=0.9) == [0, 1, 3]      # + 0.15
    assert kept(logits, top_p=0.99) == [0, 1, 2, 3]
    assert kept(logits, top_p=1.0) == [0, 1, 2, 3]
    # At the boundary: one of two equal tokens (exactly 0.5 each) already reaches 0.5.
    assert len(kept(torch.zeros(2), top_p=0.5)) == 1
    # Batched rows are filtered independently; kept logits are unchanged.
    rows = torch.stack([logits, logits.flip(0)])
    out = filter_logits(rows, top_p=0.75)
    assert torch.isfinite(out).tolist() == [[False, True, False, True],
                                            [True, False, True, False]]
    assert torch.equal(out[0, [1, 3]], logits[[1, 3]])


def test_top_k_then_top_p():
    logits = torch.tensor([0.15, 0.5, 0.05, 0.3]).log()
    assert kept(logits, top_k=2) == [1, 3]
    assert kept(logits, top_k=10) == [0, 1, 2, 3]
    # top_p applies to the renormalised top-k: 0.5 / 0.8 = 0.625 reaches 0.6 alone.
    assert kept(logits, top_k=2, top_p=0.6) == [1]
    with pytest.raises(ValueError):
        filter_logits(logits, top_p=0.0)


def test_sample_frequencies_match_the_filtered_softmax():
    logits = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0, -3.0])
    N, temperature = 20000, 0.7
    g = torch.Generator().manual_seed(0)
    # One step over N rows: N independent draws from the same distribution.
    for options, support in [({}, [0, 1, 2, 3, 4, 5]),
                             ({"top_k": 3}, [0, 1, 3]),
                             ({"top_p": 0.9}, [0, 1, 3])]:
        ids = sample_decode(fixed_step(logits), torch.zeros(N, 1, dtype=torch.long), 1,
                            eos_id=-1, pad_id=PAD, temperature=temperature, generator=g,
                            **options)
        expected = torch.zeros(6, dtype=torch.float64)
        expected[support] = (logits[support].double() / temperature).softmax(0)
        if "top_p" in options:  # check the hand-picked support is the nucleus
            full = (logits.double() / temperature).softmax(0)
            assert full[support].sum() >= 0.9 > full[[3, 0]].sum()
        counts = torch.bincount(ids.flatten(), minlength=6).double()
        # Five binomial standard deviations (plus a hair): fails by chance ~1e-6.
        tolerance = 5 * (expected * (1 - expected) / N).sqrt() + 1e-9
        assert ((counts / N - expected).abs() <= tolerance).all(), (options, counts / N)
        assert (counts[expected == 0] == 0).all()


def test_sampled_rows_stop_at_eos_and_pad():
    # Row 0 is all but certain to say 5 then EOS; row 1 to say 7 forever.
    def step(input_ids, past, use_cache):
        seen = (past or 0) + input_ids.size(1)
        logits = torch.full((2, 1, 9), -50.0)
        logits[0, 0, 5 if seen == 1 else EOS] = 50.0
        logits[1, 0, 7] = 50.0
        return logits, seen

    ids = sample_decode(step, torch.ones(2, 1, dtype=torch.long), 4, EOS, PAD,
                        generator=torch.Generator().manual_seed(0))
    assert ids.tolist() == [[5, EOS, PAD, PAD], [7, 7, 7, 7]]


# -----------------------------------------------------------------------------
# Tiny captioners with scrambled weights


def tiny_captioner(seed):
    torch.manual_seed(seed)
    kwargs = FUSIONS.tiny_kwargs("captioner")
    kwargs["text_kwargs"] = {**kwargs["text_kwargs"], "depth": 2, "position": "rotary"}
    model = FUSIONS.create("captioner", **kwargs)
    # Large random weights, so that greedy captions vary (see tests/test_generation.py).
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0)
    return model.eval()


def images_for(model, B, seed):
    size = model.vision.image_size
    return torch.randn(B, 3, size, size, generator=torch.Generator().manual_seed(seed))


ARGS = dict(max_new_tokens=10, bos_id=1, eos_id=EOS)


def test_top_k_one_and_a_cold_temperature_are_greedy():
    varied = 0
    for seed in range(3):
        model = tiny_captioner(seed)
        images = images_for(model, 3, seed)
        greedy = model.generate(images, **ARGS)
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(model.generate(images, do_sample=True, top_k=1, generator=g, **ARGS),
                           greedy)
        assert torch.equal(model.generate(images, do_sample=True, temperature=1e-3,
                                          generator=g, **ARGS), greedy)
        varied += sum(len(set(row)) > 2 for row in greedy.tolist())
    assert varied >= 2, "the test needs sequences that are not constant"


def test_same_seed_same_samples_and_cache_agrees():
    model = tiny_captioner(0).double()
    images = images_for(model, 4, 0).double()

    def sample(seed, use_cache=True):
        return model.generate(images, do_sample=True, temperature=1.5, top_p=0.95,
                              generator=torch.Generator().manual_seed(seed),
                              use_cache=use_cache, **ARGS)

    first = sample(0)
    assert torch.equal(sample(0), first)
    assert torch.equal(sample(0, use_cache=False), first)
    assert not torch.equal(sample(1), first), "a different seed should sample differently"
    assert not torch.equal(first, model.generate(images, **ARGS)), "sampling is not greedy"


def test_front_door_dispatches_to_sampling():
    logits = torch.randn(7, generator=torch.Generator().manual_seed(0))
    prompt = torch.zeros(3, 1, dtype=torch.long)
    args = dict(max_new_tokens=4, eos_id=-1, pad_id=PAD, top_k=3)
    via_door = decode(fixed_step(logits), prompt, "sample",
                      generator=torch.Generator().manual_seed(5), **args)
    direct = sample_decode(fixed_step(logits), prompt,
                           generator=torch.Generator().manual_seed(5), **args)
    assert torch.equal(via_door, direct)
    assert set(via_door.flatten().tolist()) <= set(logits.topk(3).indices.tolist())
    with pytest.raises(ValueError, match="temperature"):
        sample_decode(fixed_step(logits), prompt, 4, -1, PAD, temperature=0.0)
    with pytest.raises(TypeError):  # an option of another strategy is an error, not ignored
        decode(fixed_step(logits), prompt, "greedy", max_new_tokens=4, eos_id=-1, pad_id=PAD,
               top_k=3)
