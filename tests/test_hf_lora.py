"""LoRA through peft: applying, merging for export, and the parameter counts."""

import logging

import pytest
import torch
from test_hf_support import caption_batch
from test_hf_support import hf_checkpoints, one_thread  # noqa: F401  (fixtures)

import vislm.models  # noqa: F401  (registration)
from vislm.errors import ConfigError
from vislm.models.hf import merge_lora, parameter_counts
from vislm.registry import FUSIONS, TEXT_MODELS


def lora_lm(ckpt, name="llama", **lora):
    torch.manual_seed(0)
    settings = {"r": 4, "alpha": 8, **lora}
    return TEXT_MODELS.create("hf_causal_lm", path=str(ckpt[name]), lora=settings)


def train_adapters(model):
    """Give the B matrices values, as training would (at init B = 0 changes nothing)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_merging_keeps_the_outputs_and_leaves_plain_weights(hf_checkpoints, name):
    lm = lora_lm(hf_checkpoints, name).eval()
    plain = TEXT_MODELS.create("hf_causal_lm", path=str(hf_checkpoints[name])).eval()
    batch = caption_batch(hf_checkpoints["tokenizer"])
    with torch.no_grad():
        # At init an adapted model is the plain model.
        untrained, _ = lm(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(untrained, plain(batch["input_ids"], batch["attention_mask"])[0],
                                   rtol=0, atol=1e-6)
        train_adapters(lm)
        before, _ = lm(batch["input_ids"], batch["attention_mask"])
        assert not torch.allclose(before, untrained)
        merge_lora(lm)
        after, _ = lm(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert lm.lora is None and lm.export_kwargs()["lora"] is None
    # The merged model has exactly the plain model's weights, names and shapes.
    assert {k: v.shape for k, v in lm.state_dict().items()} == \
        {k: v.shape for k, v in plain.state_dict().items()}


def test_parameter_counts(hf_checkpoints):
    lm = lora_lm(hf_checkpoints, "gpt2")
    counts = parameter_counts(lm)
    adapters = sum(p.numel() for n, p in lm.named_parameters() if "lora_" in n)
    # c_attn maps 32 -> 96 in each of 2 layers: A is 4 x 32, B is 96 x 4.
    assert adapters == 2 * (4 * 32 + 96 * 4)
    assert counts["trainable"] == adapters
    assert counts["frozen"] + counts["trainable"] == counts["total"]
    # GPT-2 ties its LM head to the token embedding: counted once.
    unique = {id(p): p.numel() for p in lm.parameters()}
    assert counts["total"] == sum(unique.values())
    merge_lora(lm)
    assert parameter_counts(lm) == {"trainable": 0, "frozen": counts["total"] - adapters,
                                    "total": counts["total"] - adapters}


def test_bridge_logs_its_parameter_counts_once(hf_checkpoints, caplog):
    caplog.set_level(logging.INFO, logger="vislm.models.hf.lora")
    torch.manual_seed(0)
    model = FUSIONS.create("hf_prefix_lm", vision="hf_vision",
                           vision_kwargs={"path": str(hf_checkpoints["vit"])},
                           text_kwargs={"path": str(hf_checkpoints["gpt2"])})
    counts = parameter_counts(model)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hf_prefix_lm")]
    assert lines == [f"hf_prefix_lm: {counts['total']:,} parameters, {counts['trainable']:,} "
                     f"trainable, {counts['frozen']:,} frozen"]
    assert counts["trainable"] == sum(p.numel() for p in model.projector.parameters())


def test_bad_lora_settings_are_config_errors(hf_checkpoints):
    with pytest.raises(ConfigError, match="unknown key"):
        lora_lm(hf_checkpoints, rank=4)
    with pytest.raises(ConfigError, match="target_modules"):
        lora_lm(hf_checkpoints, target_modules=["no_such_layer"])
    with pytest.raises(ConfigError, match="lora.r"):
        lora_lm(hf_checkpoints, r=0)
