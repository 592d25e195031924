"""LoRA (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models") through
peft, plus the parameter bookkeeping every freezing choice needs.

    apply_lora(tower.model, r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"])
    merge_lora(model)        # fold the adapters into the weights, for export
    parameter_counts(model)  # {"trainable", "frozen", "total"}

Adapters are injected into the module in place (peft's `inject_adapter_in_model`), so a
vislm tower keeps its class and its place in the model; the base weights of the adapted
module are frozen and only the low-rank matrices train. B starts at zero, so an adapted
model computes exactly what it did before, until it learns.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence

import torch.nn as nn

from vislm.errors import ConfigError

log = logging.getLogger(__name__)

LORA_KEYS = ("r", "alpha", "dropout", "target_modules")
# Attention projections by their usual names, for models peft has no default for
# (vision transformers): the first set found whole is adapted.
_USUAL_TARGETS = (("q_proj", "v_proj"), ("query", "value"), ("c_attn",), ("qkv",))


def apply_lora(module: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0,
               target_modules: Optional[Sequence[str]] = None, **unknown) -> nn.Module:
    """Inject LoRA adapters into `module` (in place) and freeze everything else in it."""
    if unknown:
        raise ConfigError(f"lora: unknown key(s) {', '.join(sorted(unknown))}; "
                          f"valid keys: {', '.join(LORA_KEYS)}")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ConfigError(f"lora.r must be a positive integer, got {r!r}")
    from peft import LoraConfig, inject_adapter_in_model

    targets = list(target_modules) if target_modules else _default_targets(module)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        fan_in_fan_out=_transposed_linear(module, targets))
    try:
        return inject_adapter_in_model(config, module)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        raise ConfigError(f"lora.target_modules: {str(exc).splitlines()[0]}") from None


def _default_targets(module: nn.Module) -> list:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(getattr(module, "config", None), "model_type", None)
    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
    leaves = {name.rsplit(".", 1)[-1] for name, _ in module.named_modules()}
    for names in _USUAL_TARGETS:
        if set(names) <= leaves:
            return list(names)
    raise ConfigError(f"lora: no default target modules for '{model_type}'; "
                      f"set lora.target_modules (e.g. [q_proj, v_proj])")


def _transposed_linear(module: nn.Module, targets: Sequence[str]) -> bool:
    """GPT-2 style Conv1D stores its weight as (in, out): peft must know, or it warns and
    guesses."""
    wanted = set(targets)
    return any(type(m).__name__ == "Conv1D" for name, m in module.named_modules()
               if name.rsplit(".", 1)[-1] in wanted)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter in `model` into its base weight and remove the adapter
    modules (in place), so the model exports as plain weights with the same outputs.
    vislm towers that carried a `lora` setting forget it: rebuilt from their exported
    config they no longer add adapters."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [name for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name in adapted:
        layer = model.get_submodule(name)
        layer.merge(safe_merge=True)  # safe: refuses to write NaN/inf into the weights
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    for module in model.modules():
        if getattr(module, "lora", None) is not None and hasattr(module, "export_kwargs"):
            module.lora = None
    return model


def parameter_counts(model: nn.Module) -> Dict[str, int]:
    """Trainable, frozen and total parameters; tied weights counted once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "total": total}


def log_parameter_counts(model: nn.Module, name: str) -> Dict[str, int]:
    counts = parameter_counts(model)
    log.info("%s: %s parameters, %s trainable, %s frozen", name, f"{counts['total']:,}",
             f"{counts['trainable']:,}", f"{counts['frozen']:,}")
    return counts
