"""ALBEF pre-training model: the three objectives and their weights, the ITC term being
the dual encoder's, the ITM batch, and state dicts that fine-tune into task models."""

import pytest
import torch

import vislm.models  # noqa: F401  (registration)
from test_models_registry import make_batch
from vislm.errors import ConfigError
from vislm.objectives.itc import itc_loss
from vislm.registry import FUSIONS, TEXT_MODELS


def build(**extra):
    torch.manual_seed(0)
    return FUSIONS.create("albef_pretrain", **{**FUSIONS.tiny_kwargs("albef_pretrain"), **extra})


def run(model, batch, seed=0):
    torch.manual_seed(seed)  # the same hard negatives and MLM masks on every call
    return model(batch)


def test_returns_the_three_weighted_terms():
    model = build().eval()
    batch = make_batch(model)
    out = run(model, batch)
    assert set(out) == {"loss", "itc_loss", "itm_loss", "mlm_loss"}
    torch.testing.assert_close(out["loss"], out["itc_loss"] + out["itm_loss"] + out["mlm_loss"])
    # The ITC term is exactly the dual encoder's loss on encode_image / encode_text.
    img = model.encode_image(batch["pixel_values"])
    txt = model.encode_text(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(out["itc_loss"], itc_loss(img, txt, model.scale(),
                                                         batch["image_ids"]))
    # Without ITM (whose sampling would shift the random MLM masks), scale the others.
    out1 = run(build(loss_weights={"itm": 0.0}).eval(), batch)
    out2 = run(build(loss_weights={"itc": 2.0, "itm": 0.0, "mlm": 0.5}).eval(), batch)
    assert set(out2) == {"loss", "itc_loss", "mlm_loss"}  # weight 0: not even computed
    torch.testing.assert_close(out2["itc_loss"], 2.0 * out["itc_loss"])
    torch.testing.assert_close(out2["mlm_loss"], 0.5 * out1["mlm_loss"])
    torch.testing.assert_close(out2["loss"], out2["itc_loss"] + out2["mlm_loss"])


def test_itm_scores_positives_and_one_hard_negative_each_way():
    model = build()
    batch = make_batch(model)
    seen = []
    model.itm_head.register_forward_hook(lambda m, inputs, out: seen.append(out.shape[0]))
    run(model, batch)["loss"].backward()
    assert seen == [3 * 4]  # 4 positives, a hard text per image, a hard image per text
    assert model.itm_head.weight.grad.any() and model.fusion.blocks[0].cross.kv.weight.grad.any()


def test_mlm_only_learns_through_the_fusion_encoder_and_the_text():
    model = build(loss_weights={"itc": 0, "itm": 0, "mlm": 1})
    run(model, make_batch(model))["loss"].backward()
    assert model.mlm_head.dense.weight.grad.any() and model.text.tok_emb.weight.grad.any()
    assert model.vision.to_tokens.weight.grad.any()  # MLM is conditioned on the image
    assert model.image_head.weight.grad is None and model.itm_head.weight.grad is None


def test_towers_transfer_to_task_models():
    albef = build()
    state = albef.state_dict()
    dual = FUSIONS.create("dual_encoder", **{**FUSIONS.tiny_kwargs("dual_encoder"), "embed_dim": 8})
    result = dual.load_state_dict(state, strict=False)
    assert result.missing_keys == []  # every dual-encoder weight comes from ALBEF
    assert all(k.split(".")[0] in {"fusion", "itm_head", "mlm_head"}
               for k in result.unexpected_keys)
    albef.eval()
    dual.eval()
    batch = make_batch(albef)
    torch.testing.assert_close(dual.encode_image(batch["pixel_values"]),
                               albef.encode_image(batch["pixel_values"]))
    vqa = FUSIONS.create("vqa_classifier", **FUSIONS.tiny_kwargs("vqa_classifier"))
    missing = vqa.load_state_dict(state, strict=False).missing_keys
    # Only the cross-attention inside the VQA text tower and the VQA head start afresh.
    assert missing and all(".cross." in k or ".ln_cross." in k or k.startswith("head.")
                           for k in missing)


def test_config_errors():
    with pytest.raises(ConfigError, match="bidirectional"):
        build(text="decoder", text_kwargs=TEXT_MODELS.tiny_kwargs("decoder"))
    with pytest.raises(ConfigError, match="unknown"):
        build(loss_weights={"itc": 1, "lm": 1})
    with pytest.raises(ConfigError, match="all 0"):
        build(loss_weights={"itc": 0, "itm": 0, "mlm": 0})
