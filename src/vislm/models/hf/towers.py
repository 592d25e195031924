"""What the Hugging Face towers share: freezing and LoRA, and a clear refusal of the
vislm-only internals that some fusions reach into."""

from __future__ import annotations

import torch.nn as nn

from vislm.errors import ConfigError
from vislm.models.hf.loading import config_to_dict
from vislm.models.hf.lora import apply_lora


def freeze_unused(model: nn.Module, prefixes) -> None:
    """Freeze the parameters under `prefixes` (paths from the model's root): parts that
    no token-level output depends on, such as a pooled-output head. Left trainable they
    would be counted as trainable and never learn. Frozen rather than deleted, so that
    every model's forward still runs unchanged."""
    for name, param in model.named_parameters():
        if name.startswith(tuple(prefixes)):
            param.requires_grad_(False)


class HFTower(nn.Module):
    """Base of every Hugging Face tower: `self.model` (the transformers model), `frozen`
    and `lora` (the adapter settings, None without)."""

    frozen: bool = False
    lora = None

    def _set_training(self, freeze: bool, lora) -> None:
        """Freeze the whole model, then add LoRA adapters (which train even when frozen:
        that is LoRA's point)."""
        self.frozen = freeze
        if freeze:
            self.model.requires_grad_(False)
        if lora:
            apply_lora(self.model, **lora)
        self.lora = dict(lora) if lora else None

    def train(self, mode: bool = True):
        # A tower frozen without adapters stays in eval mode: no dropout, so a locked tower
        # is a fixed function, and batch-norm statistics (convnets) do not drift.
        super().train(mode)
        if self.frozen and not self.lora:
            self.model.eval()
        return self


# Parts of vislm's own TextTransformer that fusions running its layers one by one (early
# fusion, co-attention, ALBEF, vislm's prefix and gated captioners) reach into.
VISLM_INTERNALS = ("blocks", "tok_emb", "positions", "ln_f", "drop", "lm_head")


class IncompatibleTower(ConfigError, AttributeError):
    """A fusion asked a Hugging Face tower for a vislm-only part. A ConfigError, so that a
    config pairing them fails in one line; an AttributeError, so `hasattr` stays False."""


class HFTextTower(HFTower):
    """Base of hf_text and hf_causal_lm."""

    registry_name = "hf"

    def export_kwargs(self) -> dict:
        """Kwargs that rebuild this tower without its checkpoint directory: the
        architecture as a config dict (the weights come from the vislm checkpoint)."""
        return {"config": config_to_dict(self.model.config), "vocab_size": self.vocab_size,
                "pad_id": self.pad_id, "max_len": self.max_len, "freeze": self.frozen,
                "attn_impl": self.attn_impl, "lora": self.lora}

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in VISLM_INTERNALS:
                raise IncompatibleTower(
                    f"text model '{self.registry_name}' is a Hugging Face model and has no "
                    f"vislm `{name}`; this fusion runs vislm's own text layers, so use text "
                    f"'encoder' or 'decoder' with it (Hugging Face LMs have their own "
                    f"bridges: hf_prefix_lm, hf_flamingo)") from None
            raise
