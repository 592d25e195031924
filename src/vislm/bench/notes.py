"""The prose of BENCHMARKS.md: what the measured vislm path does to be fast, and, for
each goal the run missed, what limits it, in the run's own numbers."""

from __future__ import annotations

OPTIMISATIONS = """\
## What the measured vislm path does

Each item changes speed, not results; each has a test of equivalence with the plain path.

- **Float32 matmuls through oneDNN** (vislm/models/onednn_linear.py): PyTorch runs float32
  linear layers on the CPU through its BLAS; where oneDNN, which PyTorch also ships, is
  faster (decided by a timing at the first call; on this AMD CPU the BLAS reaches about half
  of oneDNN's float32 rate, see the GEMM peaks above), vislm's linear layers, ViT patch
  embedding and LM-head loss run their forward and both backward matmuls through oneDNN's
  linear kernel (tests/test_onednn_linear.py: equal to F.linear within 1e-5). The peer runs
  PyTorch's default: no PyTorch setting sends full-precision float32 matmuls to oneDNN
  (`torch.backends.mkldnn.matmul.fp32_precision` offers only reduced precisions), so the
  fp32 ratios include this choice of kernel. bf16 autocast already runs oneDNN on both sides.
- **bf16 linear layers with the bias in the kernel** (same file): under bf16 autocast PyTorch
  computes a linear layer as addmm, which first copies the bias into every row of the
  output and then accumulates the product onto it. While training, vislm's linear layers
  cast as autocast does and hand the bias to oneDNN's linear kernel, which adds it in its
  epilogue: one pass fewer over the largest activations (tests/test_onednn_linear.py: the
  same gradients as autocast's F.linear, the output within one bf16 rounding step).
- **bf16 attention** (vislm/train/precision.py): under bf16 autocast on CPU the backward of
  `scaled_dot_product_attention` is several times slower than plain softmax(QK^T)V, so the
  trainer runs bf16 training with the "math" attention and restores the model's setting
  after (tests/test_precision.py: same loss and gradients within bf16 rounding). fp32 keeps
  the fused kernel (equal speed there).
  That plain path is one autograd Function while training (`_MathAttention` in
  vislm/models/layers.py): q, k and v, strided views of the fused projection, are each
  copied once (q already scaled), the batched products read transposed operands in place,
  and the backward is written out, where autograd's matmuls copied each operand again
  (tests/test_layers.py: equal to the plain path, fully masked rows included). Its softmax
  over 16-31 keys (a short text) runs in float32, forward and backward: PyTorch's bf16 CPU
  kernel handles such rows on its scalar path, 2-5x slower (tests/test_layers.py: the
  float32 softmax and gradient up to bf16 rounding).
- **Fused LM head + cross-entropy** (vislm/objectives/lm_head_loss.py): the captioner's loss
  is computed from the hidden states: one GEMM writes all logits in the compute dtype into
  a buffer the process keeps (so no step pays page faults for it), and blocks of 64
  rows turn their logits into their gradient in place with a float32 softmax: no float32
  (B, T, V) logits, no copy for the shift, no zero-filled gradient; the last position and
  padded targets never reach the LM head. Same matmuls in the same dtype
  (tests/test_lm_head_loss.py: 1e-5 in fp32, bf16 rounding under autocast).
- **Screened greedy head** (vislm/models/argmax_head.py): greedy decoding needs only the
  argmax of the float32 logits. A bf16 copy of the LM head scores the vocabulary at half
  the bytes; a rigorous bound on its error leaves a few candidates per row, whose exact
  float32 scores decide. Same tokens as the float32 argmax (tests/test_argmax_head.py,
  including differences bf16 cannot see; the generation table checks it in this run).
  The head's few rows are computed as W x^T, which streams W once instead of packing it.
- **Last block for the pooled token only** (`Block(..., at=positions)` in vislm/models/layers.py,
  ViTEncoder.cls_embedding, TextTransformer.encode_at): a tower pooled by one token (the
  ViT's CLS token with the dual encoder's `image_pool: cls`, as the peer pools it; a text
  encoder's first token; a causal text model's last real token) has only that row of its
  last block read. vislm computes that block's keys and values for every token and its
  queries, attention, output projection and MLP for the pooled row alone; the peer
  computes the block for every token and keeps one row. In the benchmark's 4-layer dual
  encoder that is about a fifth of the FLOPs (the GFLOP column). Same outputs and
  gradients (tests/test_pooled_last_block.py: within 1e-5; the FLOP counts drop).
- **Patch embedding as a matmul** (vislm/models/vision.py): the ViT's stride-p convolution
  is the linear map it is, run as one GEMM (tests/test_layers.py: equal to the
  convolution within 1e-5).
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
- **torch.compile** (`train.compile=inductor`, vislm/train/trainer.py through Accelerate's
  dynamo plugin): off by default; the torch.compile section shows when it pays. Checkpoints
  keep the model's own parameter names (tests/test_trainer.py: losses within 1e-5 of eager).
- **Freed memory kept** (`train.allocator: keep`, vislm/train/allocator.py): the trainer
  raises glibc's mmap and trim thresholds, so a step reuses the memory of the last one
  instead of taking fresh, zero-filled pages from the kernel (tests/test_allocator.py). It
  is process-wide, so the benchmark measures it for both sides (the allocator section).
- **Fused LayerNorm, GELU and cross-entropy** (vislm/kernels, C built on first use with the machine's
  compiler; `VISLM_NATIVE_KERNELS=off` turns them off): in bf16 autocast training a block
  adds each branch to the residual stream, normalises the sum and casts it to bf16 in one
  pass, forward and backward, the MLP branch's add joining the next block's first
  LayerNorm; the MLP computes GELU and its derivative in one pass, the backward's
  product with it running inside the input-gradient matmul; and the captioner's loss
  turns each row of bf16 logits into its gradient in one call. Same arithmetic up to
  rounding (tests/test_kernels_*.py: within one bf16 step).
- **Data pipeline**: images are decoded once into the in-memory ImageCache by the tasks;
  the data table shows what decoding every epoch would cost instead.
"""


def _train_limit(results: dict, pair: str, precision: str, target: float) -> str:
    r = results["train"][f"{pair}_{precision}"]
    head = (f"- **{pair} training, {precision}: {r['ratio']:.2f}x.** A step counts "
            f"{r['vislm_gflop_per_step']:.0f} GFLOP of matmuls in vislm and "
            f"{r['peer_gflop_per_step']:.0f} in the peer, which runs at {r['peer_mfu']:.0%} of the measured {precision} GEMM peak, "
            f"so a vislm step running at 100% of that peak would be {r['ceiling_ratio']:.2f}x the "
            f"peer's")
    if r["ceiling_ratio"] < target:
        return (head + f": no implementation of this model reaches {target}x here. vislm runs "
                f"at {r['vislm_mfu']:.0%}.")
    text = head + f"; vislm runs at {r['vislm_mfu']:.0%}."
    if "vislm_matmul_ms" in r:
        budget = results["sizes"]["batch_size"] / r["peer_samples_per_s"] / target * 1e3
        text += (f" Per step (torch.profiler), vislm spends {r['vislm_matmul_ms']:.0f} ms in "
                 f"matmul kernels and {r['vislm_other_ms']:.0f} ms on everything else; the peer "
                 f"{r['peer_matmul_ms']:.0f} + {r['peer_other_ms']:.0f} ms. At {target}x the peer "
                 f"a vislm step would have to take {budget:.0f} ms, leaving "
                 f"{budget - r['vislm_matmul_ms']:.0f} ms beside its matmuls for the LayerNorms, "
                 f"GELUs, softmaxes, " + ("autocast's casts, " if precision == "bf16" else "")
                 + "residual adds and the AdamW update, all memory-bound and each its own pass "
                 "over memory in eager PyTorch (see the torch.compile section for what fusing "
                 "them gains).")
    fresh = r.get("vislm_fresh_mb_per_step")
    if fresh is not None:
        text += (f" A step also takes {fresh:.0f} MB of fresh pages from the kernel (the peer "
                 f"{r['peer_fresh_mb_per_step']:.0f} MB)")
        tuned = results.get("allocator", {}).get("pairs", {}).get(f"{pair}_{precision}")
        text += (f"; with glibc keeping freed memory for both sides the ratio is "
                 f"{tuned['ratio']:.2f}x." if tuned else ".")
    return text


def _greedy_limit(results: dict, batch: str) -> str:
    r = results["generate"][batch]
    images, tokens = int(batch[1:]), results["sizes"]["seq_len"]
    seconds = images * tokens / r["vislm_greedy_tokens_per_s"]
    peer_seconds = images * tokens / r["peer_greedy_tokens_per_s"]
    text = (f"- **Greedy decoding, batch {images}: {r['ratio_greedy']:.2f}x.** One call takes "
            f"vislm {seconds * 1e3:.0f} ms and transformers {peer_seconds * 1e3:.0f} ms for "
            f"{tokens} tokens per image, in fp32")
    encode = r.get("vislm_encode_seconds")
    if encode is None:
        return text + "."
    budget = (peer_seconds / 2 - encode) / tokens
    now = (seconds - encode) / tokens
    return (text + f". Encoding the {images} images with the ViT takes {encode * 1e3:.0f} ms of "
            f"vislm's call, a fixed cost both libraries pay, its matmuls near the fp32 GEMM "
            f"peak. At 2x the peer, vislm's decoding steps would each have to take "
            f"{budget * 1e3:.2f} ms; they take {now * 1e3:.2f} ms. At {images} rows a step is "
            f"bound by reading weights, not by arithmetic: the decoder layers' float32 weights "
            f"and the LM head (read in bf16 by the screened head), plus the per-step overhead "
            f"of eager PyTorch.")


def _kept_memory_limit(results: dict, key: str, target: float) -> list:
    """A paragraph for a training goal met with the default allocator but missed with freed
    memory kept for both sides (where the peer gains more from that setting)."""
    tuned = results.get("allocator", {}).get("pairs", {}).get(key)
    r = results["train"].get(key)
    if tuned is None or r is None or tuned["ratio"] >= target:
        return []
    pair, precision = key.split("_")
    gain = {lib: tuned[f"{lib}_samples_per_s"] / r[f"{lib}_samples_per_s"] for lib in ("vislm", "peer")}
    return [f"- **{pair} training, {precision}, freed memory kept for both sides: "
            f"{tuned['ratio']:.2f}x** (met with the default allocator, {r['ratio']:.2f}x). By "
            f"default a peer step takes {r['peer_fresh_mb_per_step']:.0f} MB of fresh pages from "
            f"the kernel and a vislm step {r['vislm_fresh_mb_per_step']:.0f} MB; keeping freed "
            f"memory makes the peer {gain['peer']:.2f}x and vislm {gain['vislm']:.2f}x faster, so "
            f"part of the default ratio is the page faults vislm's step avoids."]


def _limits(results: dict) -> list:
    """One paragraph per missed goal, built from the numbers of this run."""
    lines = []
    for goal in results.get("goals", []):
        key = goal["key"]
        if goal["met"]:
            if key.startswith("train_ratio_"):
                lines += _kept_memory_limit(results, key[len("train_ratio_"):], goal["target"])
            continue
        if key.startswith("train_ratio_"):
            _, _, pair, precision = key.split("_")
            lines.append(_train_limit(results, pair, precision, goal["target"]))
        elif key.startswith("gen_ratio_"):
            lines.append(_greedy_limit(results, key.rsplit("_", 1)[1]))
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
