"""ViLBERT-style co-attention: each stream reads the other, padding stays invisible, and
the two directions of one layer are simultaneous."""

import torch

import vislm.models  # noqa: F401  (registration)
from test_models_registry import assert_every_param_learns, make_batch
from vislm.models.fusion.coattention import CoAttentionLayer
from vislm.registry import FUSIONS


def build(layers=2):
    torch.manual_seed(0)
    kwargs = {**FUSIONS.tiny_kwargs("coattention_vqa"), "coattention_layers": layers}
    return FUSIONS.create("coattention_vqa", **kwargs)


def test_streams_shapes_and_training():
    model = build()
    batch = make_batch(model)
    text, image = model.streams(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    assert text.shape == (4, 7, model.text.dim)
    assert image.shape == (4, model.vision.num_tokens(), model.text.dim)
    out = model(batch)
    assert out["logits"].shape == (4, model.num_answers)
    out["loss"].backward()
    assert_every_param_learns(model)


def test_each_stream_reads_the_other_and_never_padding():
    model = build().eval()
    batch = make_batch(model)
    px, ids, mask = batch["pixel_values"], batch["input_ids"], batch["attention_mask"]
    text, image = model.streams(px, ids, mask)
    text2, _ = model.streams(px.flip(0), ids, mask)
    assert not torch.allclose(text2, text)  # text attends to the image
    changed = ids.clone()
    changed[:, 1] = 7 if ids[0, 1] != 7 else 8
    _, image2 = model.streams(px, changed, mask)
    assert not torch.allclose(image2, image)  # the image attends to the text
    _, image3 = model.streams(px, ids.masked_fill(mask == 0, 9), mask)
    torch.testing.assert_close(image3, image)  # but never to padding


def test_both_directions_read_the_layer_inputs():
    torch.manual_seed(0)
    layer = CoAttentionLayer(8, 2).eval()
    text, image = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    new_text, new_image = layer(text, image)
    # Recompute the image update from the ORIGINAL text: it must match.
    v = image + layer.image_to_text(layer.ln_image(image), layer.ln_text(text))[0]
    expected, _ = layer.image_block(v)
    torch.testing.assert_close(new_image, expected)
