"""Models with Hugging Face towers save through vislm.pretrained.save_pretrained and load
back in a fresh process to identical outputs, with the original checkpoints deleted: the
architecture comes from config.json (export_config), the weights from model.safetensors."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_hf_support import caption_batch, scramble
from test_hf_support import hf_checkpoints, one_thread  # noqa: F401  (fixtures)

import vislm.models  # noqa: F401  (registration)
from vislm.config import Config, DataConfig, ModelConfig
from vislm.data.tokenizer import TextTokenizer
from vislm.errors import CheckpointError
from vislm.models.hf import export_config, merge_lora
from vislm.pretrained import build_model, load, save_pretrained

GPT2_LORA = {"r": 4, "alpha": 8, "target_modules": ["c_attn"]}


def configs(ckpt):
    """name -> (task, model config): every tower type, LoRA kept and LoRA merged."""
    llava = ModelConfig(fusion="hf_prefix_lm", vision="hf_vision",
                        vision_kwargs={"path": str(ckpt["vit"]), "layer": -2, "drop_cls": True},
                        text_kwargs={"path": str(ckpt["gpt2"]), "lora": GPT2_LORA},
                        fusion_kwargs={"projector": "mlp", "freeze_lm": False})
    return {
        "llava_lora": ("caption", llava),
        "llava_merged": ("caption", llava),
        "flamingo": ("caption", ModelConfig(
            fusion="hf_flamingo", vision="hf_vision",
            vision_kwargs={"path": str(ckpt["clip_vision"])},
            text_kwargs={"path": str(ckpt["llama"])},
            fusion_kwargs={"resampler_latents": 3, "gate_init": 0.2})),
        "dual_encoder": ("retrieval", ModelConfig(
            fusion="dual_encoder", vision="hf_vision", vision_kwargs={"path": str(ckpt["vit"])},
            text_kwargs={"path": str(ckpt["bert"])},
            fusion_kwargs={"text": "hf_text", "embed_dim": 16})),
    }


@torch.no_grad()
def outputs(model, batch, bos_id, eos_id):
    """What each kind of model computes, as a flat dict of tensors."""
    model.eval()
    if hasattr(model, "encode_text"):
        return {"image": model.encode_image(batch["pixel_values"]),
                "text": model.encode_text(batch["input_ids"], batch["attention_mask"])}
    return {"loss": model(batch)["loss"],
            "ids": model.generate(batch["pixel_values"], 6, bos_id=bos_id, eos_id=eos_id)}


FRESH_PROCESS = textwrap.dedent("""
    import sys, torch
    from safetensors.torch import load_file, save_file
    sys.path.insert(0, sys.argv[1])
    from test_hf_pretrained import outputs
    from vislm.pretrained import load
    batch = load_file(sys.argv[2])
    results = {}
    for directory in sys.argv[4:]:
        loaded = load(directory)
        for key, value in outputs(loaded.model, batch, loaded.tokenizer.bos_id,
                                  loaded.tokenizer.eos_id).items():
            results[directory.rsplit("/", 1)[-1] + "." + key] = value.contiguous()
    save_file(results, sys.argv[3])
""")


def test_round_trip_in_a_fresh_process_without_the_original_checkpoints(hf_checkpoints,
                                                                       tmp_path, request):
    originals = tmp_path / "originals"
    ckpt = {name: shutil.copytree(hf_checkpoints[name], originals / name)
            for name in ("vit", "clip_vision", "bert", "gpt2", "llama")}
    tokenizer = TextTokenizer.load(ckpt["gpt2"])
    batch = caption_batch(tokenizer, n=2)
    expected, saved = {}, []
    for name, (task, model_cfg) in configs(ckpt).items():
        cfg = Config(task=task, data=DataConfig(image_size=32, max_text_len=16), model=model_cfg)
        torch.manual_seed(0)
        model = scramble(build_model(cfg, tokenizer), seed=len(saved), std=0.2)
        if name == "llava_merged":
            merge_lora(model)
        directory = save_pretrained(model, export_config(model, cfg), tokenizer, tmp_path / name)
        saved.append(str(directory))
        for key, value in outputs(model, batch, tokenizer.bos_id, tokenizer.eos_id).items():
            expected[f"{name}.{key}"] = value
    shutil.rmtree(originals)  # a loaded model must not need them

    save_file(batch, str(tmp_path / "batch.safetensors"))
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(request.path.parent),
                             str(tmp_path / "batch.safetensors"), str(tmp_path / "out.safetensors"),
                             *saved], capture_output=True, text=True, timeout=300,
                            # The same thread count: float sums must be done alike.
                            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    assert result.returncode == 0, result.stderr[-3000:]
    got = load_file(str(tmp_path / "out.safetensors"))
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    # The merged model saved plain weights: no adapter in the file or the config.
    merged = load(tmp_path / "llava_merged")
    assert merged.config.model.text_kwargs["lora"] is None
    assert not any("lora_" in k for k in merged.model.state_dict())


def test_a_corrupt_weights_file_is_a_one_line_checkpoint_error(hf_checkpoints, tmp_path):
    tokenizer = hf_checkpoints["tokenizer"]
    cfg = Config(task="caption", data=DataConfig(image_size=32, max_text_len=16),
                 model=configs(hf_checkpoints)["flamingo"][1])
    model = build_model(cfg, tokenizer)
    directory = save_pretrained(model, export_config(model, cfg), tokenizer, tmp_path / "m")
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError) as error:
        load(directory)
    assert "\n" not in str(error.value) and "model.safetensors" in str(error.value)


def test_a_bridge_trains_and_reloads_through_the_vislm_run(hf_checkpoints, tmp_path):
    from vislm.config import EvalConfig, TokenizerConfig, TrainConfig
    from vislm.data.shapes import generate_shapes_world
    from vislm.tasks.run import train

    world = generate_shapes_world(tmp_path / "world", 0, sizes={"train": 8, "test": 3})
    cfg = Config(
        task="caption",
        data=DataConfig(root=str(world), image_size=32, max_text_len=16),
        tokenizer=TokenizerConfig(path=str(hf_checkpoints["gpt2"])),  # the LM's own
        model=ModelConfig(fusion="hf_prefix_lm", vision="hf_vision",
                          vision_kwargs={"path": str(hf_checkpoints["vit"])},
                          text_kwargs={"path": str(hf_checkpoints["gpt2"]), "lora": GPT2_LORA}),
        train=TrainConfig(max_steps=2, batch_size=4, warmup_steps=1, progress=False),
        eval=EvalConfig(max_new_tokens=4, meteor=False))
    handles = {}
    result = train(cfg, tmp_path / "run", task_out=handles)
    assert set(result["metrics"]["test"]) >= {"BLEU-4", "CIDEr"}
    loaded = load(tmp_path / "run" / "model")
    batch = caption_batch(loaded.tokenizer, n=2)
    model = handles["model"].eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(batch)["loss"], model(batch)["loss"])
