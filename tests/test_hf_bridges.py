"""LLaVA-style prefix and Flamingo-style gated bridges into Hugging Face causal LMs:
which parameters a training step changes under each freezing/LoRA setting, generation
through vislm's decoding with the LM's cache, the chat template, and Flamingo's exact
identity at initialisation."""

import pytest
import torch
import torch.nn.functional as F
from test_hf_support import caption_batch, images, scramble
from test_hf_support import hf_checkpoints, one_thread  # noqa: F401  (fixtures)

import vislm.models  # noqa: F401  (registration)
from vislm.models.hf.bridges import insert_at
from vislm.models.hf.causal_lm import positions_from_mask
from vislm.objectives.lm import IGNORE
from vislm.registry import FUSIONS

GPT2_LORA = {"r": 4, "alpha": 8, "target_modules": ["c_attn"]}
LLAMA_LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
VIT_LORA = {"r": 4, "alpha": 8}  # default targets: the attention q and v projections


def build(ckpt, fusion, vision="vit", text="gpt2", vision_kwargs=None, text_kwargs=None,
          **kwargs):
    torch.manual_seed(0)
    text_model = "hf_text" if text == "bert" else "hf_causal_lm"
    return FUSIONS.create(fusion, vision="hf_vision",
                          vision_kwargs={"path": str(ckpt[vision]), **(vision_kwargs or {})},
                          text=text_model,
                          text_kwargs={"path": str(ckpt[text]), **(text_kwargs or {})},
                          **kwargs)


def changed_by_one_step(model, batch):
    """Names (state-dict keys) whose values a plain SGD step changes, and the trainable
    parameter names. SGD (no weight decay, no momentum) moves exactly the parameters
    with a nonzero gradient."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(batch)["loss"].backward()
    optimizer.step()
    after = model.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}, trainable


def under(*prefixes):
    return lambda name: name.startswith(prefixes)


def lora_b(tower):
    return lambda name: name.startswith(tower + ".") and "lora_B" in name


def either(*tests):
    return lambda name: any(test(name) for test in tests)


def gates(name):
    return name.startswith("gated.") and name.endswith("_gate")


FLAMINGO = {"vision": "clip_vision", "text": "llama", "resampler_latents": 3}
# (fusion, towers and settings, which state-dict keys must change, and nothing else)
STEP_CASES = {
    # LLaVA stage 1: both towers frozen, only the projector learns.
    "prefix-frozen": ("hf_prefix_lm", {}, under("projector.")),
    # LoRA on the LM: B starts at 0, so on the first step only B (not A) has a gradient.
    "prefix-lm-lora": ("hf_prefix_lm", {"text_kwargs": {"lora": GPT2_LORA}},
                       either(under("projector."), lora_b("text"))),
    "prefix-vision-lora": ("hf_prefix_lm", {"vision_kwargs": {"lora": VIT_LORA}},
                           either(under("projector."), lora_b("vision"))),
    # LLaVA stage 2: the LM learns too (every one of its weights), the vision tower not.
    "prefix-lm-trains": ("hf_prefix_lm", {"freeze_lm": False}, under("projector.", "text.")),
    # Gates at 0: the gated blocks' output is multiplied by tanh(0), so only the gates
    # (attention and MLP, in every block) have a gradient on the first step.
    "flamingo-frozen": ("hf_flamingo", FLAMINGO, gates),
    "flamingo-lm-lora": ("hf_flamingo", {**FLAMINGO, "text_kwargs": {"lora": LLAMA_LORA}},
                         either(gates, lora_b("text"))),
    # LiT-like: BERT locked, the ViT adapted with LoRA, the heads and temperature learn.
    "dual-encoder-locked-text": ("dual_encoder", {"text": "bert", "text_kwargs": {"freeze": True},
                                                  "vision_kwargs": {"lora": VIT_LORA},
                                                  "embed_dim": 16},
                                 either(under("image_head.", "text_head.", "logit_scale"),
                                        lora_b("vision"))),
}


@pytest.mark.parametrize("case", STEP_CASES)
def test_one_training_step_changes_exactly_the_expected_parameters(hf_checkpoints, case):
    fusion, settings, expected = STEP_CASES[case]
    model = build(hf_checkpoints, fusion, **settings)
    batch = caption_batch(hf_checkpoints["tokenizer"], n=3)
    batch["image_ids"] = torch.arange(3)
    changed, trainable = changed_by_one_step(model, batch)
    want = {k for k in model.state_dict() if expected(k)}
    assert want, "the case must expect some change"
    assert changed == want
    assert {n for n in changed if n in dict(model.named_parameters())} <= trainable


# -----------------------------------------------------------------------------
# Generation

GENERATORS = {
    "prefix-vit-gpt2": ("hf_prefix_lm", {"projector": "linear"}),
    "flamingo-clip-llama": ("hf_flamingo", {"vision": "clip_vision", "text": "llama",
                                            "resampler_latents": 3, "cross_every": 2,
                                            "gate_init": 0.1}),
}


def scrambled(ckpt, name):
    fusion, settings = GENERATORS[name]
    return scramble(build(ckpt, fusion, **settings), std=0.5).eval()


@pytest.mark.parametrize("name", GENERATORS)
def test_captioning_cached_equals_uncached_and_depends_on_the_image(hf_checkpoints, name):
    model = scrambled(hf_checkpoints, name)
    tok = hf_checkpoints["tokenizer"]
    args = dict(max_new_tokens=10, bos_id=tok.bos_id, eos_id=-1)
    cached, cached_logits = model.generate(images(3), use_cache=True, return_logits=True, **args)
    full, full_logits = model.generate(images(3), use_cache=False, return_logits=True, **args)
    assert cached.shape == (3, 10) and torch.equal(cached, full)
    scale = max(1.0, full_logits.abs().max().item())
    torch.testing.assert_close(cached_logits, full_logits, rtol=0, atol=1e-5 * scale)
    assert sum(len(set(row)) > 2 for row in cached.tolist()) >= 2, "sequences vary"
    _, other = model.generate(images(3, seed=1), use_cache=True, return_logits=True, **args)
    assert not torch.allclose(cached_logits[:, 0], other[:, 0])
    beams = [model.generate(images(2), num_beams=3, use_cache=c, **args) for c in (True, False)]
    assert torch.equal(*beams)
    samples = [model.generate(images(2), do_sample=True, top_k=8, use_cache=c,
                              generator=torch.Generator().manual_seed(0), **args)
               for c in (True, False)]
    assert torch.equal(*samples)


@pytest.mark.parametrize("name", GENERATORS)
def test_chat_prompts_of_different_lengths_decode_as_if_alone(hf_checkpoints, name):
    model = scrambled(hf_checkpoints, name)
    tok = hf_checkpoints["tokenizer"]
    prompts = ["what colour is the circle", "is there a star"]
    px = images(2)
    batched = model.generate(px, 6, prompt=prompts, tokenizer=tok, eos_id=-1)
    uncached = model.generate(px, 6, prompt=prompts, tokenizer=tok, eos_id=-1, use_cache=False)
    assert torch.equal(batched, uncached)
    for row, prompt in enumerate(prompts):
        alone = model.generate(px[row:row + 1], 6, prompt=prompt, tokenizer=tok, eos_id=-1)
        assert torch.equal(batched[row:row + 1], alone)
    answers = model.chat(px, prompts, tok, max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


# -----------------------------------------------------------------------------
# Flamingo's identity at initialisation

def test_flamingo_is_exactly_the_bare_lm_at_init(hf_checkpoints):
    model = build(hf_checkpoints, "hf_flamingo", vision="clip_vision", text="llama",
                  resampler_latents=3).eval()
    tok = hf_checkpoints["tokenizer"]
    batch = caption_batch(tok, n=3)
    with torch.no_grad():
        bare, _ = model.text(batch["input_ids"], batch["attention_mask"])
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)
        bare_loss = F.cross_entropy(bare[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                    ignore_index=IGNORE)
        assert torch.equal(model(batch)["loss"], bare_loss)
        prompt = torch.full((3, 1), tok.bos_id)
        assert torch.equal(model.generate(batch["pixel_values"], 8, bos_id=tok.bos_id, eos_id=-1),
                           model.text.generate(prompt, 8, eos_id=-1))
        # Open the gates: the image now matters, and the bare LM is still untouched.
        for block in model.gated.values():
            block.attn_gate.fill_(0.5)
            block.mlp_gate.fill_(0.5)
        assert not torch.equal(model(batch)["loss"], bare_loss)
        assert torch.equal(model.text(batch["input_ids"], batch["attention_mask"])[0], bare)


# -----------------------------------------------------------------------------
# Image placement and the chat template

def test_insert_at_places_a_block_per_row():
    x = torch.tensor([[1, 2, 3], [4, 5, 6]])
    block = torch.tensor([[7, 8], [9, 10]])
    assert insert_at(x, block, torch.tensor([0, 2])).tolist() == [[7, 8, 1, 2, 3],
                                                                 [4, 5, 9, 10, 6]]


def test_chat_template_labels_only_the_answer(hf_checkpoints):
    tok = hf_checkpoints["tokenizer"]
    model = build(hf_checkpoints, "hf_prefix_lm", template="USER: <image>\n{prompt} ASSISTANT:")
    right = model.template.encode(tok, ["is there a star", "what colour"], ["yes", "red"])
    left = model.template.encode(tok, ["is there a star", "what colour"], padding_side="left")
    head = [tok.bos_id] + tok.backend.encode("USER:", add_special_tokens=False).ids
    for b, answer in enumerate(["yes", "red"]):
        real = right["attention_mask"][b].bool()
        ids, labels = right["input_ids"][b][real].tolist(), right["labels"][b][real].tolist()
        target = tok.backend.encode(answer, add_special_tokens=False).ids + [tok.eos_id]
        assert labels == [IGNORE] * (len(ids) - len(target)) + target
        assert ids[:len(head)] == head and right["image_position"][b] == len(head)
        # Left padding for generation: same prompt ids, the image index moves with them.
        pad = int((left["attention_mask"][b] == 0).sum())
        assert left["image_position"][b] == pad + len(head)
        assert left["input_ids"][b, pad:].tolist() == ids[:len(ids) - len(target)]


def test_chat_loss_covers_the_answer_tokens_after_the_image(hf_checkpoints):
    tok = hf_checkpoints["tokenizer"]
    model = build(hf_checkpoints, "hf_prefix_lm").eval()
    batch = model.template.encode(tok, ["is there a star", "what colour is the circle"],
                                  ["yes", "red"])
    batch["pixel_values"] = images(2)
    with torch.no_grad():
        loss = model(batch)["loss"]
        features = model.image_features(batch["pixel_values"])
        N = features.size(1)
        embeds = insert_at(model.text.embed(batch["input_ids"]), features, batch["image_position"])
        mask = insert_at(batch["attention_mask"], torch.ones(2, N, dtype=torch.long),
                         batch["image_position"])
        logits, _ = model.text.run(embeds, mask, positions_from_mask(mask))
    terms = []
    for b in range(2):
        for j in (batch["labels"][b] != IGNORE).nonzero().flatten().tolist():
            k = j + N if j >= batch["image_position"][b] else j  # its place after insertion
            terms.append(F.cross_entropy(logits[b, k - 1], batch["labels"][b, j]))
    torch.testing.assert_close(loss, torch.stack(terms).mean())


def test_a_deep_copy_of_flamingo_runs_its_own_gated_blocks():
    import copy

    model = FUSIONS.create("hf_flamingo", **FUSIONS.tiny_kwargs("hf_flamingo")).eval()
    twin = copy.deepcopy(model)
    batch = {"pixel_values": images(2, size=16), "input_ids": torch.randint(3, 32, (2, 5)),
             "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    with torch.no_grad():
        before = model(batch)["loss"]
        for block in twin.gated.values():
            block.attn_gate.fill_(2.0)
        assert torch.equal(model(batch)["loss"], before)
        assert not torch.equal(twin(batch)["loss"], before)
