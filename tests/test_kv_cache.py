"""The pre-allocated KV cache decodes the same tokens as the concatenating cache."""

import pytest
import torch

from vislm.models.fusion.captioner import Captioner
from vislm.models.kv_cache import StaticKV, cache_length, static_cache


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Captioner(vision="vit", vision_kwargs={"image_size": 16, "patch_size": 8, "dim": 16,
                                                  "depth": 1, "heads": 2},
                     text="decoder", text_kwargs={"vocab_size": 30, "dim": 16, "depth": 2,
                                                  "heads": 2, "max_len": 12}).eval()


@pytest.mark.parametrize("options", [
    {}, {"num_beams": 3}, {"num_beams": 2, "no_repeat_ngram_size": 2}, {"do_sample": True, "top_k": 5},
])
def test_static_cache_gives_the_tokens_of_the_concatenating_cache(model, options):
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    def run(static):
        extra = {"generator": torch.Generator().manual_seed(2)} if options.get("do_sample") else {}
        return model.generate(pixels, 10, bos_id=1, eos_id=2, static_kv=static, **options, **extra)

    assert torch.equal(run(True), run(False))


def test_greedy_logits_match_the_uncached_path(model):
    pixels = torch.randn(2, 3, 16, 16)
    ids, logits = model.generate(pixels, 8, bos_id=1, eos_id=99, return_logits=True)
    ids_ref, logits_ref = model.generate(pixels, 8, bos_id=1, eos_id=99, use_cache=False,
                                         return_logits=True)
    assert torch.equal(ids, ids_ref)
    torch.testing.assert_close(logits, logits_ref, rtol=1e-5, atol=1e-5)


def test_static_kv_appends_in_place_and_reorders():
    kv = StaticKV(capacity=4)
    k = torch.arange(2 * 1 * 3 * 2, dtype=torch.float).view(2, 1, 3, 2)
    keys, values = kv.append(k, -k)
    buffer = kv.k
    keys, _ = kv.append(k[:, :, :1] + 100, -k[:, :, :1])
    assert kv.k is buffer and kv.length == 4 and keys.shape == (2, 1, 4, 2)
    assert torch.equal(keys[:, :, :3], k)
    kv.reorder(torch.tensor([1, 1]))
    assert torch.equal(kv.k[0, :, :4], kv.k[1, :, :4])
    with pytest.raises(ValueError, match="holds 4 positions"):
        kv.append(k[:, :, :1], k[:, :, :1])
    assert cache_length(static_cache(2, 5)) == 0
