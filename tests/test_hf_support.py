"""Tiny random Hugging Face checkpoints for the test_hf_* files, written once per session
the way a downloaded model looks (save_pretrained + tokenizer.json + preprocessor config):
ViT, CLIP vision, BERT, GPT-2 and Llama, all 32 wide with 2 layers, images of 32 pixels.

Other test files import the fixtures (`hf_checkpoints`, and `one_thread`, which must be
imported for its autouse to apply) and the helpers from here.
"""

import json

import pytest
import torch

from vislm.data.tokenizer import train_tokenizer

CORPUS = [
    "a red circle to the left of a blue square", "two shapes: a green star and a white cross",
    "a small yellow triangle in the top left", "what colour is the circle", "is there a star",
    "red", "blue", "green", "yes", "no", "a purple diamond above an orange circle",
]
IMAGE = 32
# The CLIP-like preprocessing: resize the shorter side, centre-crop, CLIP's statistics.
CLIP_PREPROCESSOR = {"do_resize": True, "size": {"shortest_edge": IMAGE}, "do_center_crop": True,
                     "crop_size": {"height": IMAGE, "width": IMAGE}, "do_normalize": True,
                     "image_mean": [0.4815, 0.4578, 0.4082], "image_std": [0.2686, 0.2613, 0.2758]}
VIT_PREPROCESSOR = {"do_resize": True, "size": {"height": IMAGE, "width": IMAGE},
                    "do_normalize": True, "image_mean": [0.4, 0.45, 0.5],
                    "image_std": [0.2, 0.25, 0.3]}


@pytest.fixture(autouse=True)
def one_thread():
    """Run each test on one thread. On a shared 2-core machine two OpenMP threads working
    on 32-wide matrices spend far longer waiting for each other than computing (measured:
    8 ms instead of 0.015 ms per linear layer under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_tokenizer():
    return train_tokenizer(CORPUS, vocab_size=96)


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """{name: directory} for vit, clip_vision, bert, gpt2, llama, plus "tokenizer" (the
    TextTokenizer every text checkpoint carries)."""
    from transformers import (BertConfig, BertModel, CLIPVisionConfig, CLIPVisionModel,
                              GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                              ViTConfig, ViTModel)

    root = tmp_path_factory.mktemp("hf_checkpoints")
    tokenizer = make_tokenizer()
    V = tokenizer.vocab_size
    special = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                   pad_token_id=tokenizer.pad_id)
    layers = dict(num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    models = {
        "vit": ViTModel(ViTConfig(hidden_size=32, image_size=IMAGE, patch_size=8, **layers)),
        "clip_vision": CLIPVisionModel(CLIPVisionConfig(hidden_size=32, image_size=IMAGE,
                                                        patch_size=8, **layers)),
        "bert": BertModel(BertConfig(hidden_size=32, vocab_size=V, max_position_embeddings=64,
                                     pad_token_id=tokenizer.pad_id, **layers)),
        "gpt2": GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=V,
                                           n_positions=64, **special)),
        "llama": LlamaForCausalLM(LlamaConfig(hidden_size=32, num_key_value_heads=1,
                                              vocab_size=V, max_position_embeddings=64,
                                              **layers, **special)),
    }
    paths = {}
    for name, model in models.items():
        directory = root / name
        model.save_pretrained(directory)
        paths[name] = directory
    (paths["vit"] / "preprocessor_config.json").write_text(json.dumps(VIT_PREPROCESSOR))
    (paths["clip_vision"] / "preprocessor_config.json").write_text(json.dumps(CLIP_PREPROCESSOR))
    for name in ("bert", "gpt2", "llama"):
        tokenizer.save(paths[name])
    paths["tokenizer"] = tokenizer
    return paths


def scramble(model, seed=0, std=1.0):
    """Large random weights (matrices only), so that greedy decoding does not collapse
    onto one token and a wrong cache or mask shows in the generated ids."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


def images(n=2, seed=0, size=IMAGE):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def caption_batch(tokenizer, n=2, seed=0, size=IMAGE):
    texts = ["a red circle to the left of a blue square", "is there a star",
             "two shapes: a green star and a white cross"][:n]
    ids, mask = tokenizer(texts, 16)
    return {"pixel_values": images(n, seed, size), "input_ids": ids, "attention_mask": mask}


def test_checkpoints_look_like_downloads(hf_checkpoints):
    for name in ("vit", "clip_vision", "bert", "gpt2", "llama"):
        assert (hf_checkpoints[name] / "config.json").is_file()
        assert (hf_checkpoints[name] / "model.safetensors").is_file()
    assert (hf_checkpoints["gpt2"] / "tokenizer.json").is_file()
