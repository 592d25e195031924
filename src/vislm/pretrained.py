"""Save a trained model as a directory and load it back: config, weights, tokenizer.

The directory holds `config.json` (the resolved vislm config plus what the task needs,
such as the answer vocabulary), `model.safetensors` and the tokenizer files. Weights go
through safetensors only, so loading a directory from a stranger cannot run code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from vislm.config import Config, from_dict, to_dict
from vislm.data.tokenizer import TextTokenizer
from vislm.errors import CheckpointError
from vislm.registry import FUSIONS


@dataclass
class Pretrained:
    model: torch.nn.Module
    tokenizer: TextTokenizer
    config: Config
    state: dict


def build_model(cfg: Config, tokenizer: TextTokenizer, **task_kwargs) -> torch.nn.Module:
    import vislm.models  # noqa: F401  (registers the components)

    vision_kwargs = {"image_size": cfg.data.image_size, **cfg.model.vision_kwargs}
    text_kwargs = {"vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.pad_id,
                   "max_len": cfg.data.max_text_len, **cfg.model.text_kwargs}
    return FUSIONS.create(cfg.model.fusion, vision=cfg.model.vision, vision_kwargs=vision_kwargs,
                          text_kwargs=text_kwargs, **cfg.model.fusion_kwargs, **task_kwargs)


def save_pretrained(model: torch.nn.Module, cfg: Config, tokenizer: TextTokenizer,
                    directory: str | Path, state: dict | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"vislm_config": to_dict(cfg), "state": state or {}}
    (directory / "config.json").write_text(json.dumps(payload, indent=2))
    # save_model copes with tied weights (the LM head shares the token embedding).
    save_model(model, str(directory / "model.safetensors"))
    tokenizer.save(directory / "tokenizer")
    return directory


def load(directory: str | Path) -> Pretrained:
    """Load a directory written by `save_pretrained` (every `vislm train` run writes one)."""
    directory = Path(directory)
    config_file = directory / "config.json"
    weights = directory / "model.safetensors"
    for needed in (config_file, weights, directory / "tokenizer" / "tokenizer.json"):
        if not needed.is_file():
            raise CheckpointError(f"{needed}: missing; expected a directory written by save_pretrained")
    try:
        payload = json.loads(config_file.read_text())
        cfg = from_dict(Config, payload["vislm_config"])
    except (json.JSONDecodeError, KeyError) as exc:
        raise CheckpointError(f"{config_file}: not a vislm model config ({exc})") from exc
    tokenizer = TextTokenizer.load(directory / "tokenizer")
    state = payload.get("state", {})
    task_kwargs = {"num_answers": len(state["answers"])} if "answers" in state else {}
    model = build_model(cfg, tokenizer, **task_kwargs)
    try:
        load_model(model, str(weights))
    except Exception as exc:  # safetensors raises several kinds; all mean "bad file"
        raise CheckpointError(f"{weights}: cannot load weights ({str(exc).splitlines()[0]})") from exc
    model.eval()
    return Pretrained(model, tokenizer, cfg, state)
