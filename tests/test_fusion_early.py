"""Single-stream early fusion: who attends to whom (bidirectional for VQA, prefix-LM for
captions), the rotary identity on image tokens, and the joint encoding
driving the ITM and MLM objectives."""

import pytest
import torch

import vislm.models  # noqa: F401  (registration)
from test_models_registry import assert_every_param_learns, make_batch
from vislm.models.fusion.stream import prefix_lm_mask, prepend_unrotated
from vislm.models.positions import RotaryEmbedding, apply_rotary
from vislm.objectives.itm import itm_loss
from vislm.objectives.mlm import mask_tokens, mlm_loss
from vislm.registry import FUSIONS, TEXT_MODELS


def build(name, text=None, **text_kwargs):
    kwargs = FUSIONS.tiny_kwargs(name)
    if text is not None:
        kwargs.update(text=text, text_kwargs=TEXT_MODELS.tiny_kwargs(text))
    kwargs["text_kwargs"] = {**kwargs["text_kwargs"], "depth": 2, **text_kwargs}
    torch.manual_seed(0)
    return FUSIONS.create(name, **kwargs).eval()


def test_prefix_lm_mask_pattern():
    # 2 image tokens then 3 text tokens, the last text token padding.
    mask = prefix_lm_mask(2, 5, 5, torch.tensor([[1, 1, 1, 1, 0]]))
    expected = torch.tensor([
        [1, 1, 0, 0, 0],  # image tokens see the image only
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],  # text sees the whole image and earlier text
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],  # never a padded key
    ]).bool()
    assert torch.equal(mask[0, 0], expected)
    # The last query alone (decoding with a cache) sees every key.
    assert prefix_lm_mask(2, 1, 5).all()


def test_image_tokens_are_not_rotated():
    rope = RotaryEmbedding(8, 16)(0, 3)
    cos, sin = prepend_unrotated(rope, 4)
    x = torch.randn(1, 2, 7, 8)
    rotated = apply_rotary(x, cos, sin)
    assert torch.equal(rotated[:, :, :4], x[:, :, :4])
    torch.testing.assert_close(rotated[:, :, 4:], apply_rotary(x[:, :, 4:], *rope))


def test_vqa_first_token_sees_the_image_and_the_whole_question():
    model = build("early_vqa")
    batch = make_batch(model)
    px, ids, mask = batch["pixel_values"], batch["input_ids"], batch["attention_mask"]
    logits = model.predict(px, ids, mask)
    assert logits.shape == (4, model.num_answers)
    later = ids.clone()
    later[0, 5] = 7 if ids[0, 5] != 7 else 8  # a late real token of question 0
    changed = model.predict(px, later, mask)
    assert not torch.allclose(changed[0], logits[0])  # bidirectional: [CLS] sees it
    torch.testing.assert_close(changed[1:], logits[1:])
    assert not torch.allclose(model.predict(px.flip(0), ids, mask), logits)
    # Padding is invisible.
    padded = ids.masked_fill(mask == 0, 9)
    torch.testing.assert_close(model.predict(px, padded, mask), logits)


@pytest.mark.parametrize("text", ["decoder", "encoder"])
def test_captioner_text_is_causal_and_sees_the_image(text):
    model = build("early_captioner", text)
    batch = make_batch(model)
    tokens = model.image_tokens(batch["pixel_values"])
    ids = batch["input_ids"]
    hidden, _ = model.joint(tokens, ids, batch["attention_mask"], prefix_lm=True)
    changed_ids = ids.clone()
    changed_ids[:, 4] = 5
    changed, _ = model.joint(tokens, changed_ids, batch["attention_mask"], prefix_lm=True)
    torch.testing.assert_close(changed[:, :4], hidden[:, :4])  # the past never sees the future
    other, _ = model.joint(tokens.flip(0), ids, batch["attention_mask"], prefix_lm=True)
    assert not torch.allclose(other[:, 0], hidden[:, 0])  # the first text token sees the image


def test_captioner_on_a_bert_like_encoder_ties_its_head():
    model = build("early_captioner", "encoder")
    assert model.lm_head.weight is model.text.tok_emb.weight
    model.train()
    model(make_batch(model))["loss"].backward()
    assert_every_param_learns(model)


def test_captioner_loss_ignores_padding():
    model = build("early_captioner")
    batch = make_batch(model)
    loss = model(batch)["loss"]
    batch["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 11)
    torch.testing.assert_close(model(batch)["loss"], loss)


def test_joint_encoding_drives_itm_and_mlm():
    """The early-fusion encoder as an ALBEF-style pre-training backbone."""
    model = build("early_vqa").train()
    itm_head = torch.nn.Linear(model.text.dim, 2)
    mlm_head = torch.nn.Linear(model.text.dim, model.text.vocab_size)
    batch = make_batch(model)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    tokens = model.image_tokens(batch["pixel_values"])

    def score_pairs(image_index, text_index):
        hidden, _ = model.joint(tokens[image_index], ids[text_index], mask[text_index])
        return itm_head(hidden[:, 0])

    sim = torch.randn(4, 4)
    g = torch.Generator().manual_seed(0)
    itm = itm_loss(score_pairs, sim, batch["image_ids"], g)
    corrupted, labels = mask_tokens(ids, mask, 4, model.text.vocab_size, (0, 1, 2, 3, 4),
                                    generator=g)
    hidden, _ = model.joint(tokens, corrupted, mask)
    mlm = mlm_loss(mlm_head(hidden), labels)
    (itm + mlm).backward()
    for part in (model.vision, model.text.blocks, itm_head, mlm_head):
        assert all(p.grad is not None and p.grad.any() for p in part.parameters())
