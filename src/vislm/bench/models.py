"""The contenders: vislm's dual encoder and captioner, and their Hugging Face peers built
from configs with the same dimensions and random weights (nothing is downloaded).

Pairs:
    dual     vislm dual_encoder (vit + encoder)  vs  VisionTextDualEncoderModel (ViT + BERT)
    caption  vislm captioner (vit + decoder)     vs  VisionEncoderDecoderModel (ViT + GPT-2
                                                     with cross-attention)

Every model gets the same training step (`train_step`): forward under the precision's
autocast, backward, vislm's fused AdamW (same parameter groups), zero_grad. Dropout is
0 on both sides (vislm's default; the peers' configs default to 0.1 in places).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch

PAIRS = ("dual", "caption")


@dataclass(frozen=True)
class Sizes:
    image_size: int = 64
    patch_size: int = 8
    dim: int = 256
    depth: int = 4
    heads: int = 4
    vocab_size: int = 30522
    seq_len: int = 20
    batch_size: int = 64
    embed_dim: int = 256

    def as_dict(self) -> dict:
        return asdict(self)


FULL = Sizes()
QUICK = Sizes(image_size=16, patch_size=8, dim=32, depth=1, heads=2, vocab_size=64, seq_len=8,
              batch_size=4, embed_dim=16)

BOS_ID = 1  # token ids 0..4 are left to specials; random text draws from 5..V-1


# -----------------------------------------------------------------------------
# vislm

def _vislm_vision(s: Sizes) -> dict:
    return dict(image_size=s.image_size, patch_size=s.patch_size, dim=s.dim, depth=s.depth,
                heads=s.heads)


def _vislm_text(s: Sizes) -> dict:
    return dict(vocab_size=s.vocab_size, dim=s.dim, depth=s.depth, heads=s.heads,
                max_len=s.seq_len)


def vislm_model(pair: str, s: Sizes) -> torch.nn.Module:
    import vislm.models  # noqa: F401  (registration)
    from vislm.registry import FUSIONS

    if pair == "dual":
        return FUSIONS.create("dual_encoder", vision="vit", vision_kwargs=_vislm_vision(s),
                              text="encoder", text_kwargs=_vislm_text(s), embed_dim=s.embed_dim,
                              image_pool="cls")
    return FUSIONS.create("captioner", vision="vit", vision_kwargs=_vislm_vision(s),
                          text="decoder", text_kwargs=_vislm_text(s))


# -----------------------------------------------------------------------------
# Hugging Face

def _vit_config(s: Sizes, attn: str):
    from transformers import ViTConfig

    return ViTConfig(image_size=s.image_size, patch_size=s.patch_size, hidden_size=s.dim,
                     num_hidden_layers=s.depth, num_attention_heads=s.heads,
                     intermediate_size=4 * s.dim, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, attn_implementation=attn)


def peer_model(pair: str, s: Sizes, attn: str) -> torch.nn.Module:
    """The Hugging Face peer with attention implementation `attn` ("sdpa" or "eager")."""
    import transformers as tf

    vision = _vit_config(s, attn)
    if pair == "dual":
        text = tf.BertConfig(vocab_size=s.vocab_size, hidden_size=s.dim, num_hidden_layers=s.depth,
                             num_attention_heads=s.heads, intermediate_size=4 * s.dim,
                             max_position_embeddings=s.seq_len, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0, attn_implementation=attn)
        config = tf.VisionTextDualEncoderConfig.from_vision_text_configs(
            vision, text, projection_dim=s.embed_dim)
        return tf.VisionTextDualEncoderModel(config=config)
    # GPT-2's defaults name token 50256 as BOS/EOS; this vocabulary is smaller.
    text = tf.GPT2Config(vocab_size=s.vocab_size, n_embd=s.dim, n_layer=s.depth, n_head=s.heads,
                         n_positions=s.seq_len + 1, add_cross_attention=True, resid_pdrop=0.0,
                         embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=BOS_ID, eos_token_id=2,
                         attn_implementation=attn)
    config = tf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(vision, text)
    config.decoder_start_token_id, config.pad_token_id = BOS_ID, 0
    return tf.VisionEncoderDecoderModel(config=config)


# -----------------------------------------------------------------------------
# Batches and steps

def batch(s: Sizes, seed: int = 0) -> dict:
    """Random images and full-length token sequences (no padding: both models do the
    same work per row)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(s.batch_size, 3, s.image_size, s.image_size, generator=g),
        "input_ids": torch.randint(5, s.vocab_size, (s.batch_size, s.seq_len), generator=g),
        "attention_mask": torch.ones(s.batch_size, s.seq_len, dtype=torch.long),
        "image_ids": torch.arange(s.batch_size),
    }


def loss_fn(lib: str, pair: str, model: torch.nn.Module, data: dict) -> Callable[[], torch.Tensor]:
    """A closure computing the training loss of `model` on `data`."""
    if lib == "vislm":
        return lambda: model(data)["loss"]
    if pair == "dual":
        return lambda: model(input_ids=data["input_ids"], attention_mask=data["attention_mask"],
                             pixel_values=data["pixel_values"], return_loss=True).loss
    # labels = the caption; the model shifts them right behind its start token itself.
    return lambda: model(pixel_values=data["pixel_values"], labels=data["input_ids"]).loss


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def train_step(lib: str, pair: str, model: torch.nn.Module, data: dict,
               precision: str) -> Callable[[], None]:
    """One optimizer step as the trainer takes it (without clipping and logging)."""
    from vislm.train.optim import build_optimizer

    model.train()
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.05)
    loss = loss_fn(lib, pair, model, data)

    def step() -> None:
        with autocast(precision):
            value = loss()
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def count_flops(lib: str, pair: str, model: torch.nn.Module, data: dict, precision: str) -> int:
    """FLOPs of one forward + backward, as torch's FlopCounterMode counts them (matmuls,
    convolutions and attention; elementwise work is free in this count, as in MFU)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        with autocast(precision):
            value = loss_fn(lib, pair, model, data)()
        value.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()
