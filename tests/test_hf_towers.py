"""The Hugging Face towers compute what the transformers models compute, expose vislm's
interfaces, and decode through vislm.generation with the model's own KV cache."""

import pytest
import torch
from test_hf_support import caption_batch, images, scramble
from test_hf_support import hf_checkpoints, one_thread  # noqa: F401  (fixtures)

import vislm.models  # noqa: F401  (registration)
from vislm.errors import ConfigError
from vislm.models.fusion.stream import text_layout
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS


# -----------------------------------------------------------------------------
# Vision

def test_hf_vision_returns_the_models_hidden_states(hf_checkpoints):
    from transformers import ViTModel

    reference = ViTModel.from_pretrained(hf_checkpoints["vit"]).eval()
    px = images(2)
    with torch.no_grad():
        out = reference(pixel_values=px, output_hidden_states=True)
        last = VISION_ENCODERS.create("hf_vision", path=str(hf_checkpoints["vit"])).eval()(px)
        llava = VISION_ENCODERS.create("hf_vision", path=str(hf_checkpoints["vit"]), layer=-2,
                                       drop_cls=True).eval()
        penultimate = llava(px)
    torch.testing.assert_close(last, out.last_hidden_state, rtol=0, atol=0)
    # LLaVA's choice: the penultimate layer, patch tokens only (the CLS token dropped).
    torch.testing.assert_close(penultimate, out.hidden_states[-2][:, 1:], rtol=0, atol=0)
    assert llava.dim == 32 and llava.num_tokens() == 16 and llava.num_tokens(48) == 36


def test_hf_vision_runs_at_another_resolution(hf_checkpoints):
    tower = VISION_ENCODERS.create("hf_vision", path=str(hf_checkpoints["clip_vision"]),
                                   image_size=48)
    tokens = tower(images(1, size=48))
    assert tokens.shape == (1, tower.num_tokens(), 32) and tower.num_tokens() == 37


def test_unused_pooling_parts_are_not_trainable(hf_checkpoints):
    # A pooled output is never used: its parameters would count as trainable and never learn.
    for name in ("vit", "clip_vision"):
        tower = VISION_ENCODERS.create("hf_vision", path=str(hf_checkpoints[name]))
        tower(images(2)).square().sum().backward()
        trainable = [n for n, p in tower.named_parameters() if p.requires_grad]
        assert trainable and all(tower.get_parameter(n).grad is not None for n in trainable)


LAYERS = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
              image_size=32, patch_size=8)
CONVNET = dict(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], image_size=32)
# (config, tokens before the 16 patches of a 32-pixel image): CLS, DeiT's distillation
# token, DINOv2's register tokens, none for SigLIP.
ARCHITECTURES = {"siglip_vision_model": ({**LAYERS}, 0), "dinov2": ({**LAYERS}, 1),
                 "deit": ({**LAYERS}, 2),
                 "dinov2_with_registers": ({**LAYERS, "num_register_tokens": 2}, 3)}


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_other_vision_transformers(model_type):
    config, extra = ARCHITECTURES[model_type]
    tower = VISION_ENCODERS.create("hf_vision", config={"model_type": model_type, **config})
    assert tower(images(2)).shape == (2, 16 + extra, 32) and tower.num_tokens() == 16 + extra
    patches = VISION_ENCODERS.create("hf_vision", config={"model_type": model_type, **config},
                                     drop_cls=True)
    tokens = patches(images(1, size=48))
    assert tokens.shape == (1, 36, 32) and patches.num_tokens(48) == 36
    tokens.square().sum().backward()
    assert all(p.grad is not None for p in patches.parameters() if p.requires_grad)


@pytest.mark.parametrize("model_type", ["convnext", "resnet"])
def test_convnets_give_one_token_per_feature_map_cell(model_type):
    config = {"model_type": model_type, **CONVNET}
    if model_type == "resnet":
        config["embedding_size"] = 8
    tower = VISION_ENCODERS.create("hf_vision", config=config)
    tokens = tower(images(2, size=64))  # stride 32: a 2 x 2 grid
    assert tokens.shape == (2, 4, 64) and tower.num_tokens(64) == 4 and tower.dim == 64
    tokens.square().sum().backward()
    assert all(p.grad is not None for p in tower.parameters() if p.requires_grad)


def test_a_frozen_tower_stays_in_eval_mode(hf_checkpoints):
    tower = VISION_ENCODERS.create("hf_vision", path=str(hf_checkpoints["vit"]), freeze=True)
    tower.train()
    assert tower.training and not tower.model.training
    assert not any(p.requires_grad for p in tower.parameters())


# -----------------------------------------------------------------------------
# Text encoder

def test_hf_text_matches_bert_and_has_the_encoder_interface(hf_checkpoints):
    from transformers import BertModel

    tokenizer = hf_checkpoints["tokenizer"]
    batch = caption_batch(tokenizer)
    text = TEXT_MODELS.create("hf_text", path=str(hf_checkpoints["bert"])).eval()
    reference = BertModel.from_pretrained(hf_checkpoints["bert"]).eval()
    with torch.no_grad():
        want = reference(input_ids=batch["input_ids"],
                         attention_mask=batch["attention_mask"]).last_hidden_state
        got = text.encode(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (text.dim, text.causal, text.pad_id, text.vocab_size) == (32, False, 0,
                                                                     tokenizer.vocab_size)


def test_hf_text_refuses_what_a_pretrained_model_cannot_do(hf_checkpoints):
    path = str(hf_checkpoints["bert"])
    with pytest.raises(ConfigError, match="cross-attention"):
        TEXT_MODELS.create("hf_text", path=path, cross_attention=True)
    with pytest.raises(ConfigError, match="position"):
        TEXT_MODELS.create("hf_text", path=path, position="rotary")
    text = TEXT_MODELS.create("hf_text", path=path)
    with pytest.raises(ConfigError, match="cross-attention"):
        text.encode(torch.ones(1, 3, dtype=torch.long), image_tokens=torch.zeros(1, 2, 32))
    # Fusions that run vislm's own text layers fail in one line at build time.
    assert not hasattr(text, "blocks")
    with pytest.raises(ConfigError, match="no vislm `blocks`"):
        text_layout(text)
    kwargs = {**FUSIONS.tiny_kwargs("coattention_vqa"), "text": "hf_text",
              "text_kwargs": {"path": path}}
    with pytest.raises(ConfigError, match="hf_text"):
        FUSIONS.create("coattention_vqa", **kwargs)


def test_a_tokenizer_with_extra_tokens_grows_the_embeddings(hf_checkpoints):
    text = TEXT_MODELS.create("hf_causal_lm", path=str(hf_checkpoints["gpt2"]),
                              vocab_size=hf_checkpoints["tokenizer"].vocab_size + 2)
    assert text.vocab_size == hf_checkpoints["tokenizer"].vocab_size + 2
    logits, _ = text(torch.tensor([[text.vocab_size - 1]]))
    assert logits.shape == (1, 1, text.vocab_size)


# -----------------------------------------------------------------------------
# Causal LMs and decoding

@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_causal_lm_logits_match_the_model(hf_checkpoints, name):
    from transformers import AutoModelForCausalLM

    lm = TEXT_MODELS.create("hf_causal_lm", path=str(hf_checkpoints[name])).eval()
    reference = AutoModelForCausalLM.from_pretrained(hf_checkpoints[name]).eval()
    batch = caption_batch(hf_checkpoints["tokenizer"])
    with torch.no_grad():
        logits, past = lm(batch["input_ids"], batch["attention_mask"])
        want = reference(input_ids=batch["input_ids"],
                         attention_mask=batch["attention_mask"]).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(logits[mask], want[mask], rtol=0, atol=1e-6)
    assert past is None and lm.causal and lm.dim == 32


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_cached_decoding_equals_uncached(hf_checkpoints, name):
    lm = scramble(TEXT_MODELS.create("hf_causal_lm", path=str(hf_checkpoints[name])), std=0.5)
    lm.eval()
    prompt = torch.tensor([[2, 10, 11], [2, 30, 31], [2, 12, 40]])
    greedy = [lm.generate(prompt, 12, eos_id=-1, use_cache=c, return_logits=True)
              for c in (True, False)]
    assert torch.equal(greedy[0][0], greedy[1][0]) and greedy[0][0].shape == (3, 12)
    close(greedy[0][1], greedy[1][1])
    assert sum(len(set(row)) > 2 for row in greedy[0][0].tolist()) >= 2, "sequences vary"
    # Beam search reorders the transformers Cache; sampling draws the same numbers.
    beams = [lm.generate(prompt, 6, eos_id=3, num_beams=3, use_cache=c) for c in (True, False)]
    assert torch.equal(*beams)
    samples = [lm.generate(prompt, 6, eos_id=3, do_sample=True, top_k=10, use_cache=c,
                           generator=torch.Generator().manual_seed(0)) for c in (True, False)]
    assert torch.equal(*samples)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_left_padded_prefix_computes_what_each_row_computes_alone(hf_checkpoints, name):
    lm = scramble(TEXT_MODELS.create("hf_causal_lm", path=str(hf_checkpoints[name])), std=0.5)
    lm.eval()
    short, long = torch.tensor([[2, 10]]), torch.tensor([[2, 30, 31, 32]])
    padded = torch.cat([torch.cat([torch.zeros(1, 2, dtype=torch.long), short], 1), long])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    with torch.no_grad():
        step = lm.step_function(lm.embed(padded), mask)
        batch_logits, past = step(torch.tensor([[5], [6]]), None, True)
        next_logits, _ = step(torch.tensor([[7], [8]]), past, True)
        for row, (ids, first, then) in enumerate([(short, 5, 7), (long, 6, 8)]):
            alone = lm.step_function(lm.embed(ids), torch.ones_like(ids))
            want, want_past = alone(torch.tensor([[first]]), None, True)
            close(batch_logits[row, -1], want[0, -1])
            want, _ = alone(torch.tensor([[then]]), want_past, True)
            close(next_logits[row, -1], want[0, -1])


def close(got, want):
    # Padding changes the shapes of the matmuls, hence float rounding: relative to the
    # (large, scrambled-weight) logits.
    scale = max(1.0, want.abs().max().item())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * scale)
