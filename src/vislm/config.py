"""Typed run configuration: dataclass defaults, then a YAML file, then `a.b=value` overrides.

    cfg = load_config("configs/shapes.yaml", ["train.epochs=3", "data.eval_splits=[test,comp_test]"])

Every value is checked against the field's type annotation, so a typo or a wrong type
fails at start-up with a one-line `ConfigError` naming the dotted key, not an hour into
a run. The functions are generic over dataclasses (`from_dict(TrainConfig, {...})`), so
other modules can define their own config sections.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from vislm.errors import ConfigError

T = TypeVar("T")


@dataclass
class DataConfig:
    dataset: str = "shapes"  # which reader
    root: str = "data/shapes"  # data directory
    image_size: int = 64
    max_text_len: int = 40
    cache_images: bool = True
    num_workers: int = 0
    train_split: str = "train"
    eval_splits: list[str] = field(default_factory=lambda: ["test"])
    limit: int = 0  # 0 = all records; >0 keeps the first N (smoke tests)
    captions_per_image: int = 0  # 0 = all; k > 0 keeps each image's first k captions
    # Where a reader finds its files (each data set's defaults: vislm/tasks/data.py). Relative
    # paths are under root; "{split}" is replaced by the split name; "" = the default.
    annotations: str = ""  # annotation file, or shard folder (webdataset)
    questions: str = ""  # VQAv2 questions file
    images: str = ""  # image folder; VQAv2: a file pattern with {image_id}
    columns: dict[str, str] = field(default_factory=dict)  # CSV/JSONL renames, e.g. {caption: text}
    val_holdout: int = 0  # >0: "val" = this many train images (chosen with split_seed), removed from "train"
    split_seed: int = 0
    # A bad training sample (unreadable image, text empty once cleaned): "skip" drops and
    # counts it, "raise" stops the run. Evaluation always raises. More than
    # max_skip_fraction of the training samples bad stops the run anyway (vislm/data/bad_data.py).
    on_error: Literal["raise", "skip"] = "skip"
    max_skip_fraction: float = 0.01


@dataclass
class TokenizerConfig:
    path: str = ""  # a saved tokenizer directory; empty = train one on the training text
    kind: Literal["wordpiece", "bpe"] = "wordpiece"
    vocab_size: int = 1000
    lowercase: bool = True


@dataclass
class ModelConfig:
    fusion: str = "captioner"  # a name in vislm.registry.FUSIONS
    vision: str = "cnn"  # a name in vislm.registry.VISION_ENCODERS
    vision_kwargs: dict[str, Any] = field(default_factory=dict)
    text_kwargs: dict[str, Any] = field(default_factory=dict)
    fusion_kwargs: dict[str, Any] = field(default_factory=dict)
    # Fine-tuning: start from a saved model (a run's model/ directory, or the run itself),
    # copying the parameters under these name prefixes (empty = every one whose name and
    # shape match), and freeze the parameters under the `freeze` prefixes (e.g. "vision.").
    init_from: str = ""
    init_modules: list[str] = field(default_factory=list)
    freeze: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int = 0  # >0 stops after this many optimizer steps (and shortens the schedule)
    batch_size: int = 64  # per micro-batch, per process
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_steps: int = 100
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping
    grad_accum_steps: int = 1
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = bf16 autocast, fp32 weights
    seed: int = 0
    log_every: int = 10  # optimizer steps between log lines
    eval_every: int = 1  # epochs; 0 = only at the end
    save_every_steps: int = 0  # 0 = at each epoch end only
    keep_last: int = 2  # checkpoints kept besides the best; 0 = keep all
    progress: bool = True
    max_bad_steps: int = 10  # non-finite losses in a row before the run stops
    # Steps per epoch of a streamed (iterable) training set, which has no len(); 0 = from len()
    steps_per_epoch: int = 0
    # A frozen vision tower (model.freeze) runs once per image, in eval mode; later epochs
    # and evaluation take its tokens from memory (vislm/models/frozen_cache.py).
    cache_frozen_vision: bool = True
    # Batches of similar text lengths (less padding; same results per example), vislm/data/bucketing.py
    length_bucketing: bool = False
    # torch.compile the model for training, with this backend: "inductor" generates fused
    # kernels (it pays on GPUs and long runs; on a small CPU see BENCHMARKS.md's
    # torch.compile section); "aot_eager" and "eager" only capture graphs, for debugging.
    compile: Literal["off", "inductor", "aot_eager", "eager"] = "off"
    # "keep": glibc keeps freed memory for the next step instead of returning it to the
    # kernel (no page faults on each step's large tensors; vislm/train/allocator.py);
    # "system": the C library's defaults.
    allocator: Literal["keep", "system"] = "keep"


@dataclass
class EvalConfig:
    batch_size: int = 128
    max_new_tokens: int = 32
    num_beams: int = 1
    length_penalty: float = 1.0
    meteor: bool = True              # METEOR starts a JVM (about 12 s); off for quick runs
    # Retrieval with an ITM head (albef_pretrain): re-rank each query's top k ITC candidates
    # with ITM and report "itm_" recalls too (vislm/tasks/rerank.py); 0 = off.
    rerank_k: int = 0


@dataclass
class Config:
    task: Literal["caption", "retrieval", "vqa"] = "caption"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------------------
# Building a dataclass from plain data, with type checks


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping; missing keys keep their defaults.

    `prefix` is the dotted path of this section (e.g. "train"), used in error messages.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(prefix)} expects a mapping, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values = {}
    for key, value in data.items():
        dotted = _join(prefix, str(key))
        if key not in fields:
            valid = ", ".join(fields)
            raise ConfigError(f"unknown config key '{dotted}'; valid keys in {_where(prefix)}: {valid}")
        values[key] = _coerce(value, hints[key], dotted)
    return cls(**values)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` checked (and, for int -> float, converted) against annotation `tp`."""
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        # A YAML section whose keys are all commented out (`train:`) reads as null.
        return from_dict(tp, {} if value is None else value, prefix=key)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise _type_error(key, _type_name(tp), value)
    if origin is Literal:
        if value not in args:
            choices = " | ".join(str(a) for a in args)
            raise ConfigError(f"config key '{key}' must be one of {choices}, got {_show(value)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, _type_name(tp), value)
        item_type = args[0] if args else Any
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(key, _type_name(tp), value)
        key_type, item_type = args if args else (Any, Any)
        return {
            _coerce(k, key_type, key): _coerce(v, item_type, _join(key, str(k))) for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise _type_error(key, "bool", value)
        return value
    if tp is int:
        # bool is a subclass of int in Python, but `epochs: true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(key, "int", value)
        return value
    if tp is float:
        if isinstance(value, bool):
            raise _type_error(key, "float", value)
        if isinstance(value, (int, float)):
            return float(value)
        # PyYAML follows YAML 1.1, where `1e-3` (no dot) is a string, not a float;
        # writing lr: 1e-3 is too common to reject, so accept strings that parse as floats.
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise _type_error(key, "float", value) from None
            if math.isfinite(number):
                return number
        raise _type_error(key, "float", value)
    if tp is str:
        if not isinstance(value, str):
            raise _type_error(key, "str", value)
        return value
    raise ConfigError(f"config key '{key}' has an unsupported annotation {tp!r}")


def _type_error(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"config key '{key}' expects {expected}, got {_show(value)}")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _where(prefix: str) -> str:
    return f"'{prefix}'" if prefix else "the top level"


# ---------------------------------------------------------------------------------------
# Files and overrides


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), cls: type[T] = Config
) -> T:
    """Defaults of `cls`, updated by the YAML file at `path` (if any), then by `overrides`.

    An override is `dotted.key=value`; the value is parsed as YAML, so `3`, `0.5`, `true`,
    `[a,b]` and `{dim: 64}` become int, float, bool, list and dict.
    """
    data = _read_yaml(Path(path)) if path is not None else {}
    for override in overrides:
        _apply_override(data, override)
    return from_dict(cls, data)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"invalid YAML in {path}{line}: {problem}") from None
    if data is None:  # an empty file means "all defaults"
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {kind}")
    return data


def _apply_override(data: dict, override: str) -> None:
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override '{override}' must look like section.key=value")
    # `tokenizer.path=` means the empty string; YAML would read an empty value as null.
    if raw.strip() == "":
        value: Any = ""
    else:
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override '{override}': the value is not valid YAML") from None
    *sections, leaf = key.split(".")
    node = data
    for depth, part in enumerate(sections):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(sections[: depth + 1])
            raise ConfigError(f"override '{override}': '{where}' holds a value, not a section")
        node = child
    node[leaf] = value


def to_dict(cfg: Any) -> dict:
    """Plain nested dicts and lists, ready for YAML or JSON."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write `cfg` as YAML; `load_config(path, [], type(cfg))` reads back an equal config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
    path.write_text(text, encoding="utf-8")
