"""Config loading: defaults -> YAML -> dotted overrides, with one-line errors naming the key."""

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import pytest

from vislm.config import Config, TrainConfig, from_dict, load_config, save_config, to_dict
from vislm.errors import ConfigError


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "errors must be one line"
    return message


def test_defaults_without_file_or_overrides():
    cfg = load_config(None, [])
    assert cfg == Config()
    assert cfg.train.betas == [0.9, 0.98]
    assert cfg.data.eval_splits == ["test"]
    # default factories give every config its own list
    assert Config().data.eval_splits is not Config().data.eval_splits


def test_yaml_values_replace_defaults_and_keep_the_rest(tmp_path):
    path = write(
        tmp_path,
        "task: vqa\n"
        "train:\n  epochs: 3\n  lr: 1e-3\n  betas: [0.8, 0.9]\n"
        "model:\n  vision_kwargs: {depth: 2}\n"
        "data:\n  eval_splits: [test, comp_test]\n",
    )
    cfg = load_config(path, [])
    assert cfg.task == "vqa"
    assert cfg.train.epochs == 3
    # YAML 1.1 reads `1e-3` as a string; it must still become the float 0.001
    assert cfg.train.lr == 0.001 and isinstance(cfg.train.lr, float)
    assert cfg.train.betas == [0.8, 0.9]
    assert cfg.model.vision_kwargs == {"depth": 2}
    assert cfg.data.eval_splits == ["test", "comp_test"]
    assert cfg.train.batch_size == TrainConfig().batch_size
    assert cfg.data.root == "data/shapes"


def test_overrides_win_over_yaml_and_reach_nested_dicts_and_lists(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\nmodel:\n  vision_kwargs: {depth: 2}\n")
    cfg = load_config(
        path,
        [
            "train.epochs=5",
            "train.lr=1",  # an int is accepted for a float field
            "model.vision_kwargs.dim=64",
            "model.text_kwargs={layers: 2, act: gelu}",
            "data.eval_splits=[test,comp_test]",
            "train.precision=bf16",
            "tokenizer.path=",  # empty means the empty string, not null
        ],
    )
    assert cfg.train.epochs == 5
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.vision_kwargs == {"depth": 2, "dim": 64}
    assert cfg.model.text_kwargs == {"layers": 2, "act": "gelu"}
    assert cfg.data.eval_splits == ["test", "comp_test"]
    assert cfg.train.precision == "bf16"
    assert cfg.tokenizer.path == ""


def test_unknown_key_names_the_dotted_key_and_lists_valid_keys(tmp_path):
    message = config_error(None, ["train.epochz=3"])
    assert "'train.epochz'" in message
    assert "epochs" in message and "batch_size" in message

    message = config_error(write(tmp_path, "data:\n  rooot: x\n"), [])
    assert "'data.rooot'" in message and "root" in message

    message = config_error(None, ["trian.epochs=3"])
    assert "'trian'" in message and "train" in message


def test_wrong_type_names_key_expected_type_and_value():
    message = config_error(None, ["train.epochs=three"])
    assert "train.epochs" in message and "int" in message and "three" in message

    # bool is a subclass of int in Python, but `epochs: true` is a mistake
    message = config_error(None, ["train.epochs=true"])
    assert "train.epochs" in message and "int" in message

    message = config_error(None, ["train.lr=fast"])
    assert "train.lr" in message and "float" in message

    message = config_error(None, ["data.eval_splits=[test, 3]"])
    assert "data.eval_splits[1]" in message and "str" in message

    message = config_error(None, ["model.vision_kwargs=5"])
    assert "model.vision_kwargs" in message and "dict" in message

    message = config_error(None, ["train=3"])
    assert "'train'" in message and "mapping" in message


def test_literal_choices_are_validated():
    message = config_error(None, ["train.precision=fp16"])
    assert "train.precision" in message and "fp32" in message and "bf16" in message and "fp16" in message
    assert load_config(None, ["task=retrieval"]).task == "retrieval"


def test_override_syntax_errors():
    assert "key=value" in config_error(None, ["train.epochs"])
    assert "'train.epochs'" in config_error(None, ["train.epochs.x=1"])


def test_from_dict_is_generic_with_optional_literal_and_nested_types():
    @dataclass
    class Inner:
        size: Optional[int] = None

    @dataclass
    class Outer:
        mode: Literal["a", "b"] = "a"
        inner: Inner = field(default_factory=Inner)
        extra: dict[str, Any] = field(default_factory=dict)

    cfg = from_dict(Outer, {"mode": "b", "inner": {"size": 3}, "extra": {"k": [1]}})
    assert cfg == Outer(mode="b", inner=Inner(size=3), extra={"k": [1]})
    assert from_dict(Outer, {"inner": {"size": None}}).inner.size is None
    with pytest.raises(ConfigError, match=r"'sec\.inner\.size' expects Optional\[int\]"):
        from_dict(Outer, {"inner": {"size": "big"}}, prefix="sec")


def test_bad_yaml_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n  lr: [1, 2\n", name="broken.yaml")
    message = config_error(path, [])
    assert "broken.yaml" in message and "line" in message


def test_yaml_top_level_must_be_a_mapping(tmp_path):
    message = config_error(write(tmp_path, "- a\n- b\n", name="list.yaml"), [])
    assert "list.yaml" in message and "mapping" in message


def test_missing_file_names_it(tmp_path):
    assert "nope.yaml" in config_error(tmp_path / "nope.yaml", [])


def test_empty_file_and_empty_section_mean_defaults(tmp_path):
    assert load_config(write(tmp_path, ""), []) == Config()
    assert load_config(write(tmp_path, "train:\n", name="b.yaml"), []) == Config()


def test_save_then_load_round_trips(tmp_path):
    cfg = load_config(
        None,
        [
            "train.epochs=2",
            "train.lr=0.0003",
            "model.vision_kwargs={dim: 64, blocks: [1, 2]}",
            "data.eval_splits=[a,b]",
        ],
    )
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    again = load_config(path, [])
    assert again == cfg
    assert to_dict(again)["model"]["vision_kwargs"] == {"dim": 64, "blocks": [1, 2]}
