"""The last block computed for the pooled token only (Block(..., at=positions),
TextTransformer.encode_at, ViTEncoder.cls_embedding, DualEncoder image_pool="cls"):
the same outputs and gradients as the full computation gathered at those positions,
for fewer FLOPs."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vislm.errors import ConfigError
from vislm.models.fusion.common import encode_pooled, pool, pool_positions
from vislm.models.fusion.dual_encoder import DualEncoder
from vislm.models.layers import Block, mask_at, self_attention_mask
from vislm.models.text import TextDecoder, TextEncoder
from vislm.models.vision import ViTEncoder
from vislm.objectives.itc import itc_loss

B, T, C = 3, 7, 16


def _gather(x, positions):
    return x[torch.arange(x.size(0)), positions]


def _grads(module):
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def _assert_same_grads(full, at, atol):
    assert full.keys() == at.keys()
    for name in full:
        torch.testing.assert_close(at[name], full[name], atol=atol, rtol=1e-4, msg=name)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_block_at_positions_equals_forward_gathered(causal, cross):
    torch.manual_seed(0)
    block = Block(C, 2, cross_attention=cross)
    x = torch.randn(B, T, C)
    context = torch.randn(B, 5, C) if cross else None
    attention_mask = torch.tensor([[1] * T, [1] * 4 + [0] * 3, [1] * 6 + [0]])
    positions = torch.tensor([0, 3, 5])
    mask, is_causal = self_attention_mask(attention_mask, T, T, causal)

    full, _ = block(x, mask, is_causal, context=context)
    weights = torch.randn(B, C)
    (_gather(full, positions) * weights).sum().backward()
    grads_full = _grads(block)
    block.zero_grad(set_to_none=True)

    at, cache = block(x, mask_at(attention_mask, positions, T, causal), context=context,
                      at=positions)
    assert cache is None
    assert at.shape == (B, 1, C)
    torch.testing.assert_close(at[:, 0], _gather(full, positions), atol=1e-5, rtol=1e-5)
    (at[:, 0] * weights).sum().backward()
    _assert_same_grads(grads_full, _grads(block), atol=1e-5)


def test_mask_at_matches_the_rows_of_the_full_mask():
    attention_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    positions = torch.tensor([2, 1])
    full, _ = self_attention_mask(attention_mask, 4, 4, causal=True)
    expected = full.expand(2, 1, 4, 4)[torch.arange(2), :, positions][:, :, None]
    assert torch.equal(mask_at(attention_mask, positions, 4, causal=True), expected)
    assert mask_at(None, positions, 4, causal=False) is None


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary"])
@pytest.mark.parametrize("model_cls,how", [(TextEncoder, "first"), (TextEncoder, "last"),
                                          (TextDecoder, "last")])
def test_encode_at_equals_encode_pooled(position, model_cls, how):
    torch.manual_seed(1)
    model = model_cls(vocab_size=50, dim=C, depth=2, heads=2, max_len=T, position=position)
    ids = torch.randint(3, 50, (B, T))
    attention_mask = torch.tensor([[1] * T, [1] * 2 + [0] * 5, [1] * 5 + [0] * 2])
    full = pool(model.encode(ids, attention_mask), attention_mask, how)
    full.square().sum().backward()
    grads_full = _grads(model)
    model.zero_grad(set_to_none=True)

    positions = pool_positions(attention_mask, ids.shape, how)
    at = model.encode_at(ids, positions, attention_mask)
    torch.testing.assert_close(at, full, atol=1e-5, rtol=1e-5)
    at.square().sum().backward()
    _assert_same_grads(grads_full, _grads(model), atol=1e-5)
    assert positions.tolist() == ([0, 0, 0] if how == "first" else [6, 1, 4])


def test_encode_at_runs_the_last_block_for_one_row_only():
    model = TextEncoder(vocab_size=50, dim=32, depth=2, heads=2, max_len=16)
    ids = torch.randint(3, 50, (4, 16))

    def flops(fn):
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return counter.get_total_flops()

    full = flops(lambda: model.encode(ids))
    at = flops(lambda: model.encode_at(ids, torch.zeros(4, dtype=torch.long)))
    # Block: 12 C^2 per token in its projections and MLP; the last one keeps only the
    # 2 C^2 of its keys and values for 15 of the 16 rows.
    per_row_block = 2 * 12 * 32 * 32
    assert full - at >= 4 * 15 * (per_row_block - 2 * 2 * 32 * 32)


def test_encode_at_checks_positions_shape():
    model = TextEncoder(vocab_size=50, dim=C, depth=1, heads=2, max_len=T)
    with pytest.raises(ValueError, match=r"positions has shape \(2, 1\), expected \(3,\)"):
        model.encode_at(torch.randint(3, 50, (3, T)), torch.zeros(2, 1, dtype=torch.long))


def test_vit_cls_embedding_equals_forward_first_token():
    torch.manual_seed(2)
    vit = ViTEncoder(image_size=16, patch_size=4, dim=C, depth=2, heads=2)
    images = torch.randn(B, 3, 16, 16)
    full = vit(images)[:, 0]
    full.square().sum().backward()
    grads_full = _grads(vit)
    vit.zero_grad(set_to_none=True)
    at = vit.cls_embedding(images)
    torch.testing.assert_close(at, full, atol=1e-5, rtol=1e-5)
    at.square().sum().backward()
    _assert_same_grads(grads_full, _grads(vit), atol=1e-5)


def test_vit_cls_embedding_needs_a_cls_token():
    vit = ViTEncoder(image_size=16, patch_size=4, dim=C, depth=1, heads=2, cls_token=False)
    with pytest.raises(ValueError, match="cls_token=True"):
        vit.cls_embedding(torch.randn(1, 3, 16, 16))


def _dual(image_pool):
    torch.manual_seed(3)
    return DualEncoder(vision="vit", vision_kwargs=dict(image_size=16, patch_size=4, dim=C,
                                                        depth=2, heads=2),
                       text="encoder", text_kwargs=dict(vocab_size=50, dim=C, depth=2, heads=2,
                                                        max_len=T),
                       embed_dim=8, image_pool=image_pool)


def test_dual_encoder_cls_pool_loss_equals_the_full_towers():
    model = _dual("cls")
    batch = {"pixel_values": torch.randn(B, 3, 16, 16), "input_ids": torch.randint(3, 50, (B, T)),
             "attention_mask": torch.tensor([[1] * T, [1] * 3 + [0] * 4, [1] * T])}
    loss = model(batch)["loss"]
    # Independently: full towers, then the tokens the pools name.
    image = torch.nn.functional.normalize(model.image_head(model.vision(batch["pixel_values"])[:, 0]), dim=-1)
    text_hidden = model.text.encode(batch["input_ids"], batch["attention_mask"])
    text = torch.nn.functional.normalize(model.text_head(text_hidden[:, 0]), dim=-1)
    torch.testing.assert_close(loss, itc_loss(image, text, model.scale()), atol=1e-5, rtol=1e-5)


def test_dual_encoder_cls_pool_under_bf16_autocast():
    model = _dual("cls")
    images = torch.randn(B, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        at = model.vision.cls_embedding(images)
        full = model.vision(images)[:, 0]
    torch.testing.assert_close(at.float(), full.float(), atol=3e-2, rtol=3e-2)


def test_dual_encoder_image_pool_errors():
    with pytest.raises(ConfigError, match="image_pool must be one of"):
        _dual("max")
    with pytest.raises(ConfigError, match="needs a ViT with a CLS token; vision 'cnn'"):
        DualEncoder(vision="cnn", vision_kwargs=dict(image_size=16, dim=8, widths=(8, 8, 8)),
                    text_kwargs=dict(vocab_size=50, dim=8, depth=1, heads=2, max_len=T),
                    image_pool="cls")


def test_encode_pooled_falls_back_to_pool_of_encode():
    class Plain(torch.nn.Module):  # a text model without encode_at (an HF backbone, say)
        def encode(self, input_ids, attention_mask=None):
            return input_ids[..., None].float().expand(-1, -1, 2)

    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert encode_pooled(Plain(), ids, mask, "last").tolist() == [[7, 7], [9, 9]]
    assert encode_pooled(Plain(), ids, mask, "mean").tolist() == [[6, 6], [8.5, 8.5]]


def test_dual_encoder_cls_pool_reads_a_frozen_towers_cache():
    from vislm.models.frozen_cache import cache_frozen_outputs

    model = _dual("cls")
    model.vision.requires_grad_(False)
    images = torch.randn(B, 3, 16, 16)
    plain = model.encode_image(images)
    cache = cache_frozen_outputs(model.vision)
    model.encode_image(images)
    again = model.encode_image(images)
    assert cache.hits == B  # the second call was served from the cache
    torch.testing.assert_close(again, plain, atol=1e-6, rtol=1e-6)


def test_block_at_positions_calls_a_wrapped_qkv_projection():
    """An adapter that replaced the fused QKV layer (as LoRA does) is called, not bypassed
    through the weight it wraps."""
    torch.manual_seed(4)
    block = Block(C, 2)

    class Shifted(torch.nn.Module):  # the wrapped layer plus a visible change
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.weight, self.bias = inner.weight, inner.bias

        def forward(self, x):
            return self.inner(x) + 0.5

    block.attn.qkv = Shifted(block.attn.qkv)
    x = torch.randn(B, T, C)
    positions = torch.tensor([0, 2, 6])
    full, _ = block(x)
    at, _ = block(x, at=positions)
    torch.testing.assert_close(at[:, 0], _gather(full, positions), atol=1e-5, rtol=1e-5)
