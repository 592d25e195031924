"""Greedy decoding: EOS handling on a scripted step function, and the KV cache against
full recomputation on randomly initialised tiny captioners."""

import pytest
import torch

import vislm.models  # noqa: F401  (registration)
from vislm.generation import greedy_decode
from vislm.models.layers import set_attn_impl
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS

EOS, PAD, V = 2, 0, 12


def scripted_step(scripts, calls):
    """A fake model: row b emits scripts[b][t] as its t-th new token. The cache is just the
    number of positions seen, so both decoding paths can be checked against it."""

    def step(input_ids, past, use_cache):
        calls.append(input_ids.clone())
        seen = (past or 0) + input_ids.size(1)
        logits = torch.zeros(input_ids.size(0), input_ids.size(1), V)
        for b, script in enumerate(scripts):
            logits[b, -1, script[seen - 1]] = 1.0
        return logits, (seen if use_cache else None)

    return step


@pytest.mark.parametrize("use_cache", [True, False])
def test_each_sequence_stops_at_its_eos_and_is_padded(use_cache):
    scripts = [[5, EOS, 7, 7, 7], [6, 7, 8, 9, 10]]
    calls = []
    ids = greedy_decode(scripted_step(scripts, calls), torch.ones(2, 1, dtype=torch.long),
                        max_new_tokens=4, eos_id=EOS, pad_id=PAD, use_cache=use_cache)
    assert ids.tolist() == [[5, EOS, PAD, PAD], [6, 7, 8, 9]]
    if use_cache:  # the prompt once, then one new token per step
        assert [c.shape[1] for c in calls] == [1, 1, 1, 1]
        assert calls[-1].tolist() == [[PAD], [8]]
    else:  # the whole prefix every step
        assert [c.shape[1] for c in calls] == [1, 2, 3, 4]
        assert calls[-1].tolist() == [[1, 5, EOS, PAD], [1, 6, 7, 8]]


def test_decoding_ends_when_every_sequence_has_stopped():
    scripts = [[5, EOS, 3, 3], [EOS, 3, 3, 3]]
    calls = []
    ids, logits = greedy_decode(scripted_step(scripts, calls), torch.ones(2, 1, dtype=torch.long),
                                max_new_tokens=10, eos_id=EOS, pad_id=PAD, return_logits=True)
    assert ids.tolist() == [[5, EOS], [EOS, PAD]]
    assert len(calls) == 2 and logits.shape == (2, 2, V)


def test_longer_prompt_is_fed_once():
    calls = []
    prompt = torch.tensor([[1, 4, 4]])
    ids = greedy_decode(scripted_step([[0, 0, 5, 6, EOS]], calls), prompt, max_new_tokens=5,
                        eos_id=EOS, pad_id=PAD)
    assert ids.tolist() == [[5, 6, EOS]]
    assert calls[0].tolist() == [[1, 4, 4]] and calls[1].tolist() == [[5]]


# -----------------------------------------------------------------------------
# The cache on real models

def tiny_captioner(seed, position, attn_impl, vision="cnn"):
    torch.manual_seed(seed)
    kwargs = FUSIONS.tiny_kwargs("captioner")
    kwargs.update(vision=vision, vision_kwargs=VISION_ENCODERS.tiny_kwargs(vision))
    kwargs["text_kwargs"] = {**kwargs["text_kwargs"], "depth": 2, "position": position,
                             "attn_impl": attn_impl}
    model = FUSIONS.create("captioner", **kwargs)
    # At its real init (std 0.02) a tied-embedding decoder just repeats its input token,
    # which would hide position bugs: a constant sequence looks the same at any offset.
    # Large random weights make the greedy sequences vary.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0)
    # Decode in eval mode: in train mode BatchNorm would depend on the batch.
    return model.eval()


def _images(model, B, seed):
    size = model.vision.image_size
    return torch.randn(B, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("attn_impl", ["sdpa", "math"])
@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary"])
def test_cached_greedy_equals_uncached(position, attn_impl, dtype):
    varied = 0
    for seed in range(3):
        model = tiny_captioner(seed, position, attn_impl).to(dtype)
        images = _images(model, 3, seed).to(dtype)
        args = dict(max_new_tokens=10, bos_id=1, eos_id=EOS)
        cached, cached_logits = model.generate(images, use_cache=True, return_logits=True, **args)
        full, full_logits = model.generate(images, use_cache=False, return_logits=True, **args)
        assert cached.shape[0] == 3 and cached.shape[1] <= 10
        assert torch.equal(cached, full)
        # The scrambled weights make logits large (tens); 1e-5 is relative to their size.
        scale = max(1.0, full_logits.abs().max().item())
        torch.testing.assert_close(cached_logits, full_logits, atol=1e-5 * scale, rtol=1e-5)
        varied += sum(len(set(row)) > 2 for row in cached.tolist())
    assert varied >= 2, "the test needs sequences that are not constant"


@pytest.mark.parametrize("vision", ["cnn", "vit"])
def test_cached_greedy_stops_at_eos_like_uncached(vision):
    model = tiny_captioner(0, "rotary", "sdpa", vision)
    images = _images(model, 3, 0)
    free = model.generate(images, max_new_tokens=8, bos_id=1, eos_id=-1)
    # Make the third token of the first caption the EOS, so at least one row stops early.
    eos = int(free[0, 2])
    cached = model.generate(images, max_new_tokens=8, bos_id=1, eos_id=eos)
    full = model.generate(images, max_new_tokens=8, bos_id=1, eos_id=eos, use_cache=False)
    assert torch.equal(cached, full)
    row = cached[0].tolist()
    stop = row.index(eos)
    assert stop <= 2 and all(t == model.text.pad_id for t in row[stop + 1:])


def test_cached_logits_equal_full_forward_logits():
    torch.manual_seed(0)
    kwargs = {**TEXT_MODELS.tiny_kwargs("decoder"), "depth": 2, "position": "rotary",
              "cross_attention": True}
    model = TEXT_MODELS.create("decoder", **kwargs).eval()
    ids = torch.randint(0, model.vocab_size, (2, 7))
    image = torch.randn(2, 3, model.dim)
    full, _ = model(ids, image_tokens=image)
    # Prompt of 3, then one token, then a chunk of 3; image keys/values come from the cache.
    chunks, past, pieces = [(0, 3), (3, 4), (4, 7)], None, []
    for start, end in chunks:
        logits, past = model(ids[:, start:end], image_tokens=image if past is None else None,
                             past=past, use_cache=True)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert past[0][0].shape[2] == 7 and past[0][2].shape[2] == 3  # self keys grow, cross fixed


def test_cache_with_padding_mask_covers_past_and_new_tokens():
    torch.manual_seed(0)
    model = TEXT_MODELS.create("decoder", **TEXT_MODELS.tiny_kwargs("decoder")).eval()
    ids = torch.randint(0, model.vocab_size, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    full, _ = model(ids, mask)
    first, past = model(ids[:, :3], mask[:, :3], use_cache=True)
    rest, _ = model(ids[:, 3:], mask, past=past, use_cache=True)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids[:, 3:], mask[:, 3:], past=past)


def test_generation_is_capped_at_max_len():
    model = tiny_captioner(0, "learned", "sdpa")
    ids = model.generate(_images(model, 2, 0), max_new_tokens=100, bos_id=1, eos_id=-1)
    assert ids.shape == (2, model.text.max_len)


def test_switching_attn_impl_after_building_keeps_outputs():
    model = tiny_captioner(1, "rotary", "sdpa")
    images = _images(model, 2, 1)
    a = model.generate(images, max_new_tokens=6, bos_id=1, eos_id=EOS)
    b = set_attn_impl(model, "math").generate(images, max_new_tokens=6, bos_id=1, eos_id=EOS)
    assert torch.equal(a, b)
