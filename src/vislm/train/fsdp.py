"""FSDP: the trainer trains a sharded copy of the model and moves its full state in and out.

`accelerate launch --use_fsdp --fsdp_version 2` shards with PyTorch's fully_shard (FSDP2):
each process holds a shard of every parameter, of its gradient and of its optimizer state.
fully_shard shards the module it is given in place, so the trainer gives it a copy
(shardable_copy) and keeps the caller's module whole. Weights cross between the two in full,
under the caller's names (torch.distributed.checkpoint gathers and scatters them), so
evaluation, checkpoints and the saved model see an ordinary single-process model.

fully_shard cannot shard a 0-d parameter (a CLIP logit scale, a gate). The copy stores each
one with shape (1,), and a parametrization still shows its module a 0-d tensor; `renamed`
maps its name in the copy, `<module>.parametrizations.<name>.original`, to the caller's.
Optimizer states are left under the copy's names: only an FSDP run reads them back.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.nn.utils import parametrize

from vislm.train.checkpoint import load_checkpoint

# Full tensors, not each process's shard. With cpu_offload only the main process receives
# them, on its CPU: what checkpoints need, without a full copy on every accelerator.
_FULL = StateDictOptions(full_state_dict=True)
_FULL_ON_MAIN = StateDictOptions(full_state_dict=True, cpu_offload=True)


class _StoredAsVector(nn.Module):
    """Parametrization of a 0-d parameter kept with shape (1,), which fully_shard can shard."""

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.reshape(())

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value.reshape(1)


def shardable_copy(model: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    """A copy of `model` that fully_shard accepts, and `renamed`: the names of its 0-d
    parameters in the copy's state dicts -> their names in `model`'s."""
    shardable = copy.deepcopy(model)
    renamed = {}
    for path, module in list(shardable.named_modules()):
        for name, param in list(module.named_parameters(recurse=False)):
            if param.dim() == 0:
                parametrize.register_parametrization(module, name, _StoredAsVector())
                prefix = f"{path}." if path else ""
                renamed[f"{prefix}parametrizations.{name}.original"] = prefix + name
    return shardable, renamed


def full_weights(model: nn.Module, renamed: dict[str, str], everywhere: bool = False) -> dict[str, torch.Tensor]:
    """The full weights of the sharded `model`, under the unsharded model's names and shapes:
    on every process (on its device) if `everywhere`, else on the main process's CPU ({} on
    the others). Every process must call this: each one sends its shards."""
    weights = get_model_state_dict(model, options=_FULL if everywhere else _FULL_ON_MAIN)
    return {renamed.get(name, name): value.reshape(()) if name in renamed else value
            for name, value in weights.items()}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The full optimizer state of the sharded `model`, keyed by parameter name, on the main
    process's CPU ({} on the others). Every process must call this."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL_ON_MAIN)


def load_sharded_checkpoint(
    path: str | Path,
    whole: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    renamed: dict[str, str],
) -> dict:
    """Resume the sharded `model` and its optimizer from checkpoint `path`; return its trainer state.

    Every process reads the full state, the weights into `whole` (the unsharded model, as
    load_checkpoint checks them), and keeps its own shard. Reading on every process, rather
    than on one and broadcasting, makes a bad file fail on all of them alike instead of
    leaving the others waiting for a broadcast that never comes.
    """
    stored = {caller: name for name, caller in renamed.items()}

    def into_shards(optimizer_state: dict) -> None:
        # load_checkpoint calls this once `whole` holds the checkpoint's weights.
        weights = {stored.get(name, name): value.reshape(1) if name in stored else value
                   for name, value in whole.state_dict().items()}
        set_model_state_dict(model, weights, options=_FULL)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=_FULL)

    return load_checkpoint(path, whole, into_shards, scheduler)
