"""Training checkpoints: everything needed to continue a run exactly where it stopped.

Layout, one directory per saved optimizer step:

    run_dir/checkpoints/step_00001200/
        model.safetensors    weights (safetensors; tied weights stored once)
        optimizer.pt         optimizer.state_dict()   } torch.save of plain tensors and
        scheduler.pt         scheduler.state_dict()   } numbers, read back with
        rng.pt               python, numpy, torch RNGs } torch.load(weights_only=True)
        trainer_state.json   {"epoch", "step_in_epoch", "global_step", "metric", ...}
        COMPLETE             written last: marks the checkpoint as whole

A checkpoint is written into a hidden temporary directory next to its final place, every
file is fsynced, and only then is the directory renamed into place, so a crash while saving
never leaves a half-written `step_*` directory that a resume would pick up.

Under FSDP (vislm/train/fsdp.py) checkpoints hold the full, unsharded state too, gathered
from every process and written by the main one: model.safetensors is the file a single
process writes; optimizer.pt holds the full optimizer state keyed by parameter name, the
layout of torch.distributed.checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from vislm.errors import CheckpointError

CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "trainer_state.json"
MARKER_FILE = "COMPLETE"
_PREFIX = "step_"
_TEMP_PREFIX = ".tmp-"


def checkpoint_dir(run_dir: str | Path, global_step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"{_PREFIX}{global_step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first; partial and temporary ones are skipped."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _step_of(p) is not None and (p / MARKER_FILE).is_file()]
    return sorted(found, key=_step_of)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def best_checkpoint(run_dir: str | Path, greater_is_better: bool = True) -> Path | None:
    """The complete checkpoint saved with the best metric, or None if none has a metric."""
    scored = [(m, p) for p in list_checkpoints(run_dir) if (m := _metric_of(p)) is not None]
    if not scored:
        return None
    pick = max if greater_is_better else min
    return pick(scored, key=lambda mp: mp[0])[1]


def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith(_PREFIX) or not name[len(_PREFIX) :].isdigit():
        return None
    return int(name[len(_PREFIX) :])


def _metric_of(path: Path) -> float | None:
    # Pruning must not fail because an old checkpoint's state is unreadable; such a
    # checkpoint simply cannot be the best one.
    try:
        metric = json.loads((path / STATE_FILE).read_text()).get("metric")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(metric, (int, float)) and not isinstance(metric, bool) and math.isfinite(metric):
        return float(metric)
    return None


# ---------------------------------------------------------------------------------------
# Saving


def save_checkpoint(
    run_dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | dict,
    scheduler: Any,
    state: dict,
    keep_last: int = 2,
    metric: float | None = None,
    greater_is_better: bool = True,
) -> Path:
    """Write a checkpoint for `state["global_step"]`, then prune old ones.

    `model` must be the unwrapped module; `optimizer` an optimizer, or the state dict to
    save for it (FSDP: gathered from every process). `metric` (if given) ranks this
    checkpoint: the best one survives pruning besides the `keep_last` newest (`keep_last <= 0`
    keeps all).
    Saving the same step twice replaces the earlier checkpoint.
    """
    final = checkpoint_dir(run_dir, int(state["global_step"]))
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    temp = root / f"{_TEMP_PREFIX}{final.name}-{os.getpid()}"
    temp.mkdir()
    save_model(model, str(temp / MODEL_FILE))
    optimizer_state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    torch.save(optimizer_state, temp / OPTIMIZER_FILE)
    torch.save(scheduler.state_dict(), temp / SCHEDULER_FILE)
    torch.save(get_rng_state(), temp / RNG_FILE)
    (temp / STATE_FILE).write_text(json.dumps({**state, "metric": metric}, indent=1))
    for name in (MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE, STATE_FILE):
        _fsync_file(temp / name)
    # The marker goes last: a directory holding it was fully written before the rename.
    (temp / MARKER_FILE).write_text("ok\n")
    _fsync_file(temp / MARKER_FILE)
    _fsync_dir(temp)
    _move_into_place(temp, final)
    _fsync_dir(root)
    prune_checkpoints(run_dir, keep_last, greater_is_better)
    return final


def _move_into_place(temp: Path, final: Path) -> None:
    if not final.exists():
        os.rename(temp, final)
        return
    # rename() cannot replace a non-empty directory: move the old one aside first, so a
    # complete copy exists on disk at every moment.
    old = final.parent / f"{_TEMP_PREFIX}old-{final.name}-{os.getpid()}"
    os.rename(final, old)
    os.rename(temp, final)
    shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    """Delete temporary directories and marker-less `step_*` directories of crashed saves."""
    for path in root.iterdir():
        partial = _step_of(path) is not None and not (path / MARKER_FILE).is_file()
        if path.is_dir() and (path.name.startswith(_TEMP_PREFIX) or partial):
            shutil.rmtree(path, ignore_errors=True)


def prune_checkpoints(run_dir: str | Path, keep_last: int, greater_is_better: bool = True) -> list[Path]:
    """Delete all complete checkpoints but the `keep_last` newest and the best; return the deleted."""
    if keep_last <= 0:
        return []
    checkpoints = list_checkpoints(run_dir)
    keep = set(checkpoints[-keep_last:])
    best = best_checkpoint(run_dir, greater_is_better)
    if best is not None:
        keep.add(best)
    deleted = [p for p in checkpoints if p not in keep]
    for path in deleted:
        shutil.rmtree(path, ignore_errors=True)
    return deleted


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable. Some filesystems refuse to fsync a directory; the
    # files are already synced then, which is the part that matters most.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------
# Loading


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | Callable[[dict], Any] | None = None,
    scheduler: Any = None,
    restore_rng: bool = True,
    device: str | torch.device = "cpu",
) -> dict:
    """Restore what is given (model always) from checkpoint `path`; return its trainer state.

    `optimizer` may also be a function, given the saved optimizer state once the model's
    weights are loaded (FSDP: it hands each process its shard)."""
    path = Path(path)
    if not (path / MARKER_FILE).is_file():
        raise CheckpointError(f"checkpoint {path} is missing or incomplete (no {MARKER_FILE} marker)")
    state = read_trainer_state(path)
    model_file = path / MODEL_FILE
    try:
        missing, unexpected = load_model(model, str(model_file), strict=False, device=str(device))
    except Exception as err:  # safetensors raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read weights {model_file}: {_reason(err)}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"weights {model_file} do not match the model: "
            f"missing {_names(missing)}; unexpected {_names(unexpected)}"
        )
    if optimizer is not None:
        _restore(path / OPTIMIZER_FILE, optimizer if callable(optimizer) else optimizer.load_state_dict)
    if scheduler is not None:
        _restore(path / SCHEDULER_FILE, scheduler.load_state_dict)
    if restore_rng:
        _restore(path / RNG_FILE, set_rng_state)
    return state


def _restore(file: Path, apply: Any) -> None:
    content = _torch_load(file)
    try:
        apply(content)
    except Exception as err:  # e.g. an optimizer saved for a different model
        raise CheckpointError(f"checkpoint file {file} does not fit this run: {_reason(err)}") from None


def read_trainer_state(path: str | Path) -> dict:
    state_file = Path(path) / STATE_FILE
    try:
        state = json.loads(state_file.read_text())
    except OSError as err:
        raise CheckpointError(f"cannot read {state_file}: {err.strerror or err}") from None
    except ValueError as err:
        raise CheckpointError(f"{state_file} is not valid JSON: {err}") from None
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        raise CheckpointError(f"{state_file} must be an object with an integer 'global_step'")
    return state


def _torch_load(file: Path) -> Any:
    try:
        # weights_only: a checkpoint from elsewhere cannot run code when loaded.
        return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {file} is missing") from None
    except Exception as err:  # truncated zip, foreign pickle, ...
        raise CheckpointError(f"checkpoint file {file} is corrupt: {_reason(err)}") from None


def _reason(err: Exception) -> str:
    first_line = (str(err).strip().splitlines() or [""])[0][:120]
    return f"{type(err).__name__}: {first_line}" if first_line else type(err).__name__


def _names(names: Any) -> str:
    names = sorted(names)
    if not names:
        return "none"
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


# ---------------------------------------------------------------------------------------
# Random number generators, as plain lists and tensors so weights_only loading accepts them


def get_rng_state() -> dict:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    # A run resumed on a machine with a different GPU count keeps its CPU streams exact;
    # the GPU streams are only restored when they line up one to one.
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
