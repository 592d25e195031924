"""Hugging Face backbones inside vislm: pretrained vision towers, text encoders and causal
LMs from transformers' Auto classes, registered by name, and bridges that feed images to
a causal LM.

  vision encoder  hf_vision     ViT, CLIP/SigLIP vision, DINOv2, convnets: (B, N, dim) tokens
  text model      hf_text       BERT, RoBERTa, MiniLM: a bidirectional encoder
  text model      hf_causal_lm  GPT-2, Llama, Qwen, Phi: a decoder for vislm's decoding
  fusion          hf_prefix_lm  LLaVA: projected image tokens in the prompt
  fusion          hf_flamingo   Flamingo: gated cross-attention between frozen LM layers

Everything loads offline (see `loading`); LoRA and parameter counts are in `lora`,
saving without the original checkpoints in `export`.
"""

from vislm.models.hf import vision, text, causal_lm  # noqa: F401  (registration, towers first)
from vislm.models.hf import bridges  # noqa: F401  (registration)
from vislm.models.hf.bridges import HFFlamingo, HFPrefixLM
from vislm.models.hf.causal_lm import HFCausalLM
from vislm.models.hf.chat import ChatTemplate
from vislm.models.hf.export import export_config
from vislm.models.hf.loading import resolve
from vislm.models.hf.lora import apply_lora, merge_lora, parameter_counts
from vislm.models.hf.text import HFTextEncoder
from vislm.models.hf.vision import HFVisionEncoder

__all__ = ["ChatTemplate", "HFCausalLM", "HFFlamingo", "HFPrefixLM", "HFTextEncoder",
           "HFVisionEncoder", "apply_lora", "export_config", "merge_lora", "parameter_counts",
           "resolve"]
