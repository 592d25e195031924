"""Beam search: exactness against brute-force enumeration on toy models, the length
penalty and n-gram blocking on constructed tables, and greedy / cache equivalences on
randomly initialised tiny captioners."""

import itertools
import math

import pytest
import torch

import vislm.models  # noqa: F401  (registration)
from vislm.generation import beam_search, decode, greedy_decode
from vislm.registry import FUSIONS

# -----------------------------------------------------------------------------
# A toy model: next-token logits looked up in a fixed table by the last token or, for a
# (V, V, V) table, by the last two tokens, which makes it depend on its cache.


def table_step(table):
    """model_step over a table of next-token logits. Its cache is the tokens seen so far,
    so with a 3-D table a cache reordered by the wrong beam gives wrong logits."""

    def step(input_ids, past, use_cache):
        history = input_ids if past is None else torch.cat([past, input_ids], dim=1)
        if table.dim() == 2:
            logits = table[history[:, -1]]
        else:
            logits = table[history[:, -2], history[:, -1]]
        return logits[:, None], (history if use_cache else None)  # (R, 1, V)

    return step


def brute_force(table, prompt, max_len, eos, length_penalty, no_repeat=0):
    """Best (score, tokens) over every sequence the decoder could output: ending in EOS
    at any length <= max_len, or max_len tokens without EOS."""
    logprobs = torch.log_softmax(table.double(), dim=-1)
    context = table.dim() - 1
    best = (-math.inf, None)
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(table.size(0)), repeat=n):
            if eos in seq[:-1] or (n < max_len and seq[-1] != eos):
                continue
            full = tuple(prompt) + seq
            grams = [full[i:i + no_repeat] for i in range(len(full) - no_repeat + 1)]
            if no_repeat and len(set(grams)) < len(grams):
                continue
            total = sum(logprobs[full[i - context:i] + (full[i],)].item()
                        for i in range(len(prompt), len(full)))
            score = total / n ** length_penalty
            if score > best[0]:
                best = (score, list(seq))
    return best


def strip(row, eos, pad):
    """A decoded row without its padding (pad ids only ever follow EOS)."""
    out = []
    for t in row:
        if t == pad:
            break
        out.append(t)
        if t == eos:
            break
    return out


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0, -0.5])
@pytest.mark.parametrize("no_repeat", [0, 2])
def test_wide_beam_finds_the_brute_force_best(length_penalty, no_repeat):
    V, L, EOS, PAD = 4, 3, 3, -1
    for seed in range(3):
        # Logits depend on the last two tokens, so the cache must follow the beams.
        table = torch.randn(V, V, V, generator=torch.Generator().manual_seed(seed)) * 2
        # Three different prompts: distinct searches in one batch.
        prompts = torch.tensor([[0, 1], [1, 2], [2, 0]])
        ids, scores = beam_search(table_step(table), prompts, L, EOS, PAD, num_beams=V ** L,
                                  length_penalty=length_penalty, no_repeat_ngram_size=no_repeat,
                                  return_scores=True)
        for b in range(3):
            score, tokens = brute_force(table, prompts[b].tolist(), L, EOS, length_penalty,
                                        no_repeat)
            assert strip(ids[b].tolist(), EOS, PAD) == tokens
            assert scores[b].item() == pytest.approx(score, abs=1e-5)


def test_cached_and_uncached_agree_on_the_toy():
    table = torch.randn(6, 6, 6, generator=torch.Generator().manual_seed(3)) * 2
    prompts = torch.tensor([[0, 4], [1, 5]])
    args = (prompts, 5, 2, -1)
    cached = beam_search(table_step(table), *args, num_beams=3, use_cache=True)
    full = beam_search(table_step(table), *args, num_beams=3, use_cache=False)
    assert torch.equal(cached, full)


# -----------------------------------------------------------------------------
# Constructed tables: the length penalty and n-gram blocking

BOS, EOS, A, B = 0, 1, 2, 3


def chain_table(stop_at_once=0.4):
    """From BOS: EOS `stop_at_once`, else A. From A: A 0.45, EOS 0.5, B 0.05 (and B mirrors
    A). With 0.4, ending at once is the most likely caption (0.4 > 0.6 * 0.5) though
    greedy starts with A; each further A costs little, so the larger the length bonus
    the longer the best caption."""
    probs = torch.full((4, 4), 1e-9)
    probs[BOS, EOS], probs[BOS, A] = stop_at_once, 1 - stop_at_once
    probs[A, A], probs[A, EOS], probs[A, B] = 0.45, 0.5, 0.05
    probs[B, B], probs[B, EOS], probs[B, A] = 0.45, 0.5, 0.05
    probs[EOS] = 0.25
    return probs.log()


def test_length_penalty_moves_the_preferred_length_in_its_direction():
    table, lengths = chain_table(), {}
    for length_penalty in [-1.0, 0.0, 1.0, 3.0]:
        ids = beam_search(table_step(table), torch.tensor([[BOS]]), 6, EOS, -1, num_beams=2,
                          length_penalty=length_penalty)
        tokens = strip(ids[0].tolist(), EOS, -1)
        # Two beams suffice here: the search agrees with enumerating every caption.
        assert tokens == brute_force(table, [BOS], 6, EOS, length_penalty)[1]
        lengths[length_penalty] = len(tokens)
    # Plain log-probability (and a penalty on length) prefers stopping at once; a length
    # bonus prefers "A EOS", a strong one runs to the length limit.
    assert lengths == {-1.0: 1, 0.0: 1, 1.0: 2, 3.0: 6}


def test_one_beam_searches_past_a_greedy_eos_when_length_is_rewarded():
    # Early stopping must be exact: the first finished hypothesis (greedy's "EOS") is not
    # final while a live beam could still score better under the length bonus. Stopping
    # as soon as num_beams hypotheses have finished would return "EOS" here.
    table = chain_table(stop_at_once=0.6)
    step, prompt = table_step(table), torch.tensor([[BOS]])
    assert greedy_decode(step, prompt, 6, EOS, -1).tolist() == [[EOS]]
    ids = beam_search(step, prompt, 6, EOS, -1, num_beams=1, length_penalty=2.0)
    assert ids.tolist() == [[A] * 5 + [EOS]]
    assert ids[0].tolist() == brute_force(table, [BOS], 6, EOS, 2.0)[1]


def test_no_repeat_ngram_blocks_the_repeat_the_model_prefers():
    # A loves to follow A: "A A A ..." unconstrained.
    probs = torch.full((4, 4), 0.01)
    probs[BOS, A], probs[A, A], probs[A, B], probs[B, A] = 1.0, 1.0, 0.5, 0.5
    table = probs.log()
    step, prompt = table_step(table), torch.tensor([[BOS]])
    free = beam_search(step, prompt, 6, EOS, -1, num_beams=2)
    assert free.tolist() == [[A] * 6]
    for n in [1, 2]:
        ids, score = beam_search(step, prompt, 6, EOS, -1, num_beams=16,
                                 no_repeat_ngram_size=n, return_scores=True)
        row = [BOS] + strip(ids[0].tolist(), EOS, -1)
        grams = [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]
        assert len(set(grams)) == len(grams), row
        # The table has ties (A A B A and A B A A use the same transitions): compare
        # the score with the best allowed caption's, not the tokens.
        assert score.item() == pytest.approx(brute_force(table, [BOS], 6, EOS, 1.0, n)[0])


# -----------------------------------------------------------------------------
# Tiny captioners with scrambled weights


def tiny_captioner(seed, position="rotary", depth=2):
    torch.manual_seed(seed)
    kwargs = FUSIONS.tiny_kwargs("captioner")
    kwargs["text_kwargs"] = {**kwargs["text_kwargs"], "depth": depth, "position": position}
    model = FUSIONS.create("captioner", **kwargs)
    # At its real init a tied-embedding decoder just repeats its input token; large
    # random weights make the decoded sequences (and the beams) vary.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0)
    return model.eval()


def images_for(model, B, seed):
    size = model.vision.image_size
    return torch.randn(B, 3, size, size, generator=torch.Generator().manual_seed(seed))


def captioner_step(model, images, num_beams=1):
    tokens = model.image_tokens(images).repeat_interleave(num_beams, dim=0)

    def step(input_ids, past, use_cache):
        return model.text(input_ids, image_tokens=tokens, past=past, use_cache=use_cache)

    return step


def sequence_logprob(model, images, row, bos, eos):
    """Teacher-forced log-probability of one decoded row (up to its EOS) per image."""
    tokens = strip(row, eos, model.text.pad_id)
    ids = torch.tensor([[bos] + tokens])
    logits, _ = model.text(ids, image_tokens=model.image_tokens(images))
    logprobs = torch.log_softmax(logits[0, :-1].double(), dim=-1)
    return logprobs.gather(1, ids[0, 1:, None]).sum().item()


def bos_and_eos(model, images):
    """An EOS that greedy decoding reaches early on the first image, so that some
    captions end before the length limit."""
    free = model.generate(images, max_new_tokens=8, bos_id=1, eos_id=-1)
    return 1, int(free[0, 2])


def test_one_beam_is_greedy_without_length_penalty():
    varied = 0
    for seed in range(3):
        model = tiny_captioner(seed)
        images = images_for(model, 3, seed)
        bos, eos = bos_and_eos(model, images)
        prompt = torch.full((3, 1), bos)
        greedy = greedy_decode(captioner_step(model, images), prompt, 10, eos, 0)
        beam = beam_search(captioner_step(model, images), prompt, 10, eos, 0, num_beams=1,
                           length_penalty=0.0)
        assert torch.equal(beam, greedy)
        varied += sum(len(set(row)) > 2 for row in greedy.tolist())
        assert (greedy == eos).any(), "some caption should end early"
    assert varied >= 2, "the test needs sequences that are not constant"


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_cached_beam_search_equals_uncached(position):
    differs_if_not_reordered = False
    for seed in range(3):
        model = tiny_captioner(seed, position)
        images = images_for(model, 2, seed)
        bos, eos = bos_and_eos(model, images)
        for options in [dict(num_beams=3), dict(num_beams=4, length_penalty=0.0,
                                                no_repeat_ngram_size=2)]:
            args = dict(max_new_tokens=10, bos_id=bos, eos_id=eos, **options)
            full = model.generate(images, use_cache=False, **args)
            # The captioner's own reorder (self-attention only) and the generic one.
            assert torch.equal(model.generate(images, use_cache=True, **args), full)
            K = options["num_beams"]
            step_args = dict(max_new_tokens=10, eos_id=eos, pad_id=model.text.pad_id,
                             **options)
            prompt = torch.full((2, 1), bos)
            generic = beam_search(captioner_step(model, images, K), prompt, **step_args)
            assert torch.equal(generic, full)
            # The comparison can catch a cache that is not reordered at all.
            stale = beam_search(captioner_step(model, images, K), prompt,
                                reorder_past=lambda past, idx: past, **step_args)
            differs_if_not_reordered |= not torch.equal(stale, full)
    assert differs_if_not_reordered


def test_beam_search_scores_at_least_greedy_and_reports_true_logprobs():
    # Not a theorem (beam search can prune greedy's path and end worse), but on these
    # models a 4-beam search at length_penalty=0 should never lose to greedy.
    improved = 0
    for seed in range(3):
        model = tiny_captioner(seed)
        images = images_for(model, 3, seed)
        bos, eos = bos_and_eos(model, images)
        greedy = model.generate(images, max_new_tokens=10, bos_id=bos, eos_id=eos)
        prompt = torch.full((3, 1), bos)
        beam, scores = beam_search(captioner_step(model, images, 4), prompt, 10, eos,
                                   model.text.pad_id, num_beams=4, length_penalty=0.0,
                                   return_scores=True)
        for b in range(3):
            image = images[b:b + 1]
            greedy_score = sequence_logprob(model, image, greedy[b].tolist(), bos, eos)
            beam_score = sequence_logprob(model, image, beam[b].tolist(), bos, eos)
            # The reported score is the caption's log-probability under the model.
            assert scores[b].item() == pytest.approx(beam_score, abs=1e-3)
            assert beam_score >= greedy_score - 1e-4
            improved += beam_score > greedy_score + 1e-3
    assert improved >= 1, "beam search should beat greedy somewhere"


def test_no_repeated_bigrams_in_captions():
    repeats_without = 0
    for seed in range(3):
        model = tiny_captioner(seed)
        images = images_for(model, 3, seed)
        args = dict(max_new_tokens=12, bos_id=1, eos_id=-1, num_beams=3)
        for no_repeat in [0, 2]:
            ids = model.generate(images, no_repeat_ngram_size=no_repeat, **args)
            for row in ids.tolist():
                bigrams = list(zip([1] + row, row))
                repeated = len(set(bigrams)) < len(bigrams)
                if no_repeat:
                    assert not repeated, row
                else:
                    repeats_without += repeated
    assert repeats_without >= 1, "the unconstrained captions should repeat a bigram"


def test_front_door_and_generate_options():
    model = tiny_captioner(0)
    images = images_for(model, 2, 0)
    step, prompt = captioner_step(model, images), torch.full((2, 1), 1)
    args = dict(max_new_tokens=5, eos_id=2, pad_id=0)
    assert torch.equal(decode(step, prompt, "greedy", **args), greedy_decode(step, prompt, **args))
    with pytest.raises(ValueError, match="strategy"):
        decode(step, prompt, "viterbi", **args)
    with pytest.raises(ValueError, match="beam sampling"):
        model.generate(images, 5, 1, 2, num_beams=2, do_sample=True)
    with pytest.raises(ValueError, match="return_logits"):
        model.generate(images, 5, 1, 2, num_beams=2, return_logits=True)
    # Capped at max_len like greedy; empty when nothing may be generated.
    assert model.generate(images, 100, 1, -1, num_beams=2).shape == (2, model.text.max_len)
    assert model.generate(images, 0, 1, -1, num_beams=2).shape == (2, 0)
