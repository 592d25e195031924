"""Every generating fusion decodes the same captions with and without its KV cache.

Each model is built tiny with scrambled (large, random) weights: at the real init a tied
decoder tends to repeat one token, and constant sequences would hide a wrong position
or mask in the cached path.
"""

import pytest
import torch

import vislm.models  # noqa: F401  (registration)
from vislm.models.fusion.stream import CaptionGenerator
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS

EOS = 2

# (fusion, extra fusion kwargs, text model): every captioning fusion and its variants
# whose cached path differs (resampler, sparse gated layers, ClipCap prefix, BERT-like
# text model behind a prefix-LM mask).
GENERATORS = [
    ("early_captioner", {}, "decoder"),
    ("early_captioner", {}, "encoder"),
    # Small gates: large ones let the (position-free) image term swamp the text, and
    # the scrambled model then repeats one token.
    ("gated_captioner", {"gate_init": 0.1}, "decoder"),
    ("gated_captioner", {"gate_init": 0.1, "resampler_latents": 0, "cross_every": 2}, "decoder"),
    ("prefix_captioner", {}, "decoder"),
    ("prefix_captioner", {"prefix_tokens": 3, "projector": "linear"}, "decoder"),
]


def scrambled(name, extra, text, position, vision="cnn", seed=0):
    torch.manual_seed(seed)
    kwargs = {**FUSIONS.tiny_kwargs(name), **extra, "vision": vision,
              "vision_kwargs": VISION_ENCODERS.tiny_kwargs(vision), "text": text,
              "text_kwargs": {**TEXT_MODELS.tiny_kwargs(text), "depth": 2, "position": position}}
    model = FUSIONS.create(name, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0)
    return model.eval()  # BatchNorm must not depend on the batch


def images(model, B, seed):
    size = model.vision.image_size
    return torch.randn(B, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_every_fusion_using_the_generator_mixin_is_covered():
    using = {n for n in FUSIONS.names()
             if isinstance(FUSIONS.create(n, **FUSIONS.tiny_kwargs(n)), CaptionGenerator)}
    assert using == {name for name, _, _ in GENERATORS}


@pytest.mark.parametrize("position", ["learned", "rotary"])
@pytest.mark.parametrize("name,extra,text", GENERATORS,
                         ids=[f"{n}-{t}-{'-'.join(e) or 'default'}" for n, e, t in GENERATORS])
def test_cached_greedy_equals_uncached(name, extra, text, position):
    varied = 0
    for seed in range(2):
        model = scrambled(name, extra, text, position, seed=seed)
        px = images(model, 3, seed)
        args = dict(max_new_tokens=10, bos_id=1, eos_id=EOS)
        cached, cached_logits = model.generate(px, use_cache=True, return_logits=True, **args)
        full, full_logits = model.generate(px, use_cache=False, return_logits=True, **args)
        assert cached.shape[0] == 3 and 1 <= cached.shape[1] <= 10
        assert torch.equal(cached, full)
        scale = max(1.0, full_logits.abs().max().item())
        torch.testing.assert_close(cached_logits, full_logits, atol=1e-5 * scale, rtol=1e-5)
        varied += sum(len(set(row)) > 2 for row in cached.tolist())
    assert varied >= 2, "the test needs sequences that are not constant"


@pytest.mark.parametrize("name,extra,text", GENERATORS[::2])
def test_generation_depends_on_the_image_and_is_capped_at_max_len(name, extra, text):
    model = scrambled(name, extra, text, "sinusoidal", vision="vit")
    ids, logits = model.generate(images(model, 2, 0), max_new_tokens=100, bos_id=1, eos_id=-1,
                                 return_logits=True)
    assert ids.shape == (2, model.text.max_len)
    _, other = model.generate(images(model, 2, 1), max_new_tokens=1, bos_id=1, eos_id=-1,
                              return_logits=True)
    # The first token's distribution already depends on the image.
    assert not torch.allclose(logits[:, 0], other[:, 0])


@pytest.mark.parametrize("name,extra,text", GENERATORS,
                         ids=[f"{n}-{t}-{'-'.join(e) or 'default'}" for n, e, t in GENERATORS])
def test_beam_search_and_sampling_cached_equal_uncached(name, extra, text):
    # Beam search reorders the cache every step (vislm.generation.reorder_cache over the
    # model's nested cache); sampling draws from the same generator state either way.
    model = scrambled(name, extra, text, "rotary", seed=1)
    px = images(model, 2, 1)
    args = dict(max_new_tokens=6, bos_id=1, eos_id=EOS)
    beams = [model.generate(px, num_beams=3, use_cache=c, **args) for c in (True, False)]
    assert torch.equal(*beams) and beams[0].shape[0] == 2
    samples = [model.generate(px, do_sample=True, top_k=5, use_cache=c,
                              generator=torch.Generator().manual_seed(0), **args)
               for c in (True, False)]
    assert torch.equal(*samples)
