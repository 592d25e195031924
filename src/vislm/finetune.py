"""Start a task from another run's weights, and freeze what should not learn.

Parameter names are shared across fusions (`vision.*` for the image tower, `text.*` for
the text model), so a captioner's or a pre-trained ALBEF's image tower initialises a VQA
model's by name. Only tensors whose name and shape both match are copied; the rest keep
their fresh initialisation, and the counts are returned so a run can say what it took.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from vislm.errors import CheckpointError

log = logging.getLogger(__name__)


def _weights_file(source: str | Path) -> Path:
    source = Path(source)
    for candidate in (source, source / "model.safetensors", source / "model" / "model.safetensors"):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"{source}: no model.safetensors here or in {source}/model; "
                          "expected a run directory or a saved model")


def _selected(name: str, prefixes: Sequence[str]) -> bool:
    return not prefixes or any(name.startswith(p) for p in prefixes)


def initialise_from(model: torch.nn.Module, source: str | Path, modules: Sequence[str] = ()) -> Dict[str, int]:
    """Copy matching tensors from a saved model into `model`; returns what was copied."""
    path = _weights_file(source)
    try:
        saved = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read weights ({exc})") from exc
    own = model.state_dict()
    taken = {name: tensor for name, tensor in saved.items()
             if _selected(name, modules) and name in own and own[name].shape == tensor.shape}
    if not taken:
        raise CheckpointError(f"{path}: no tensor matches this model by name and shape"
                              + (f" under {list(modules)}" if modules else ""))
    model.load_state_dict(taken, strict=False)
    counts = {"copied": len(taken), "kept": len([n for n in own if _selected(n, modules)]) - len(taken)}
    log.info("initialised %d tensors from %s (%d selected tensors had no match)", counts["copied"], path,
             counts["kept"])
    return counts


def freeze(model: torch.nn.Module, prefixes: Sequence[str]) -> int:
    """requires_grad=False on every parameter under the prefixes; returns how many froze.

    A frozen tower with BatchNorm would still update its running statistics in training
    mode, so those modules get momentum 0: their statistics stay exactly as loaded.
    """
    frozen = 0
    for name, parameter in model.named_parameters():
        if any(name.startswith(p) for p in prefixes):
            parameter.requires_grad_(False)
            frozen += 1
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and any(name.startswith(p) for p in prefixes):
            module.momentum = 0.0
    if prefixes and not frozen:
        raise CheckpointError(f"model.freeze: no parameter name starts with any of {list(prefixes)}")
    return frozen
