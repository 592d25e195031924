"""The prose of BENCHMARKS.md: what the measured vislm path does to be fast, and, for
each goal the run missed, what limits it, in the run's own numbers."""

from __future__ import annotations

OPTIMISATIONS = """\
## What the measured vislm path does

Each item changes speed, not results; each has a test of equivalence with the plain path.

- **bf16 attention** (vislm/train/precision.py): under bf16 autocast on CPU the backward of
  `scaled_dot_product_attention` is several times slower than plain softmax(QK^T)V, so the
  trainer runs bf16 training with the "math" attention and restores the model's setting
  after (tests/test_precision.py: same loss and gradients within bf16 rounding). fp32 keeps
  the fused kernel (equal speed there).
- **Fused LM head + cross-entropy** (vislm/objectives/lm_head_loss.py): the captioner's loss
  is computed from the hidden states in blocks of 128 rows: no float32 (B, T, V) logits, no
  copy for the shift, no zero-filled gradient; the last position and padded targets never
  reach the LM head. Same matmuls in the same dtype (tests/test_lm_head_loss.py: 1e-5 in
  fp32).
- **Fused QKV**: one Linear for the three self-attention projections and one for the
  cross-attention keys/values (vislm/models/layers.py); the peers run three separate ones.
- **Fused AdamW** for both libraries (vislm.train.optim.build_optimizer, checked by
  tests/test_precision.py), so the optimizer is not part of the ratio.
- **Static KV cache** (vislm/models/kv_cache.py): decoding writes each step's keys and values
  into buffers allocated once, instead of concatenating the whole cache every step (same
  tokens: tests/test_kv_cache.py). The generation table shows both caches.
- **Cached frozen image tokens** (vislm/models/frozen_cache.py): with a frozen vision tower,
  its output per image is kept after the first epoch (equal to the plain forward:
  tests/test_frozen_cache.py).
- **No padding waste**: collation pads to the longest caption of the batch, and
  `train.length_bucketing` groups similar lengths (vislm/data/bucketing.py,
  tests/test_bucketing.py). The training benchmark uses full-length captions on both sides,
  so its ratios do not include this; the data section shows the padding it removes.
- **Data pipeline**: images are decoded once into the in-memory ImageCache by the tasks;
  the data table shows what decoding every epoch would cost instead.
"""


def _train_limit(results: dict, pair: str, precision: str, target: float) -> str:
    r = results["train"][f"{pair}_{precision}"]
    head = (f"- **{pair} training, {precision}: {r['ratio']:.2f}x.** Both models do the same "
            f"matmuls ({r['vislm_gflop_per_step']:.0f} vs {r['peer_gflop_per_step']:.0f} GFLOP per "
            f"step) and the peer runs at {r['peer_mfu']:.0%} of the measured {precision} GEMM peak, "
            f"so a vislm step running at 100% of that peak would be {r['ceiling_ratio']:.2f}x the "
            f"peer's")
    if r["ceiling_ratio"] < target:
        return (head + f": no implementation of this model reaches {target}x here. vislm runs "
                f"at {r['vislm_mfu']:.0%}.")
    casts = "autocast's casts, " if precision == "bf16" else ""
    return (head + f"; vislm runs at {r['vislm_mfu']:.0%}. Its matmuls, with an inner "
            f"dimension of {results['sizes']['dim']}, run below the large-matmul peak, and the "
            f"rest of its step is elementwise work in eager mode ({casts}LayerNorm, GELU, "
            f"softmax) that only a compiler fuses (see the torch.compile section).")


def _limits(results: dict) -> list:
    """One paragraph per missed goal, built from the numbers of this run."""
    lines = []
    for goal in results.get("goals", []):
        key = goal["key"]
        if goal["met"]:
            continue
        if key.startswith("train_ratio_"):
            _, _, pair, precision = key.split("_")
            lines.append(_train_limit(results, pair, precision, goal["target"]))
        elif key.startswith("gen_ratio_"):
            batch = key.rsplit("_", 1)[1]
            r = results["generate"][batch]
            images, tokens = int(batch[1:]), results["sizes"]["seq_len"]
            seconds = images * tokens / r["vislm_greedy_tokens_per_s"]
            achieved = r["greedy_gflop"] / seconds
            peak = results["peak_gflops"]["fp32"]
            lines.append(
                f"- **Greedy decoding, batch {images}: {r['ratio_greedy']:.2f}x.** Both libraries "
                f"decode in fp32 through the same matmuls, {r['greedy_gflop']:.1f} GFLOP per call: "
                f"the ViT over the images and, at every step, the "
                f"{results['sizes']['vocab_size']:,}-way LM head and the decoder layers on "
                f"{images} rows. vislm runs them at {achieved:.0f} GFLOP/s, {achieved / peak:.0%} "
                f"of the large-matmul peak (a {images}-row matmul cannot fill the kernels); "
                f"even at the full peak it would be {r.get('greedy_ceiling_ratio', 0):.2f}x the "
                f"peer. transformers' own per-step overhead is small next to these matmuls at "
                f"this batch size (compare batch 1, where it counts for more).")
        elif key == "mfu_bf16_dual":
            r = results["train"]["dual_bf16"]
            lines.append(f"- **bf16 MFU {r['vislm_mfu']:.0%}**: the rest of the step is eager "
                         f"elementwise work (see above).")
        elif key == "retrieval_eval_seconds":
            lines.append(f"- **Retrieval evaluation {results['retrieval_eval_seconds']:.1f} s**: "
                         f"two passes of 5,000 x 25,000 scores on a shared CPU.")
    if not lines:
        return []
    return ["## What limits the goals that were missed", ""] + lines + [""]


def notes(results: dict) -> list:
    lines = OPTIMISATIONS.splitlines() + [""]
    return lines + _limits(results)
