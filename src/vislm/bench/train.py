"""Training throughput and MFU: vislm against its Hugging Face peer, per pair and precision.

The peer runs twice, with attn_implementation "sdpa" and "eager", interleaved with vislm,
and the faster one is the peer's number: the ratio then compares the models, not a slow
default. vislm trains as the Trainer runs it: for bf16 the trainer's attention choice
(vislm.train.precision) applies.

MFU = model FLOPs per step (FlopCounterMode, forward + backward) x steps per second /
the GEMM peak of the same dtype measured in this process (vislm.bench.machine).
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch

from vislm.bench import models as M
from vislm.bench.timing import (fresh_pages_mb, interleaved, interleaved_rounds, medians,
                                ratio_quartiles)
from vislm.models.frozen_cache import cache_frozen_outputs
from vislm.train.precision import attention_for_precision

PEER_ATTENTION = ("sdpa", "eager")


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Ops whose self time is matrix multiplication (the rest of a step: elementwise work,
# reductions, copies, the optimizer, and dispatch).
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm",
              "aten::convolution_backward", "aten::mkldnn_convolution",
              # vislm's linear layers, float32 and bf16 (vislm/models/onednn_linear.py)
              "mkldnn::_linear_pointwise"}


def matmul_split(step, steps: int = 2) -> dict:
    """Milliseconds per step in matmul kernels and in everything else, from torch.profiler's
    self CPU times (which include its own small per-op overhead)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    matmul = total = 0.0
    for event in prof.key_averages():
        total += event.self_cpu_time_total
        if event.key in MATMUL_OPS:
            matmul += event.self_cpu_time_total
    return {"matmul_ms": matmul / steps / 1e3, "other_ms": (total - matmul) / steps / 1e3}


def run_pair(pair: str, precision: str, sizes: M.Sizes, rounds: int, warmup: int,
             peaks: Dict[str, float]) -> dict:
    torch.manual_seed(0)
    ours = M.vislm_model(pair, sizes)
    peers = {attn: M.peer_model(pair, sizes, attn) for attn in PEER_ATTENTION}
    data = M.batch(sizes)
    with attention_for_precision(ours, precision):
        steps = {"vislm": M.train_step("vislm", pair, ours, data, precision)}
        for attn, model in peers.items():
            steps[f"hf_{attn}"] = M.train_step("hf", pair, model, data, precision)
        per_round = interleaved_rounds(steps, rounds, warmup)
        seconds = medians(per_round)
        flops_ours = M.count_flops("vislm", pair, ours, data, precision)
        best = min(PEER_ATTENTION, key=lambda attn: seconds[f"hf_{attn}"])
        fresh = {"vislm": fresh_pages_mb(steps["vislm"]),
                 "peer": fresh_pages_mb(steps[f"hf_{best}"])}
        split = {"vislm": matmul_split(steps["vislm"]), "peer": matmul_split(steps[f"hf_{best}"])}
    flops_peer = M.count_flops("hf", pair, peers[best], data, precision)

    def rate(name: str) -> float:
        return sizes.batch_size / seconds[name]

    peak = peaks[precision] * 1e9
    result = {
        "vislm_samples_per_s": rate("vislm"),
        **{f"hf_{attn}_samples_per_s": rate(f"hf_{attn}") for attn in PEER_ATTENTION},
        "peer_attention": best,
        "peer_samples_per_s": rate(f"hf_{best}"),
        "ratio": rate("vislm") / rate(f"hf_{best}"),
        # Quartiles of the ratio round by round (vislm and the peer ran in the same round).
        "ratio_quartiles": ratio_quartiles(per_round["vislm"], per_round[f"hf_{best}"]),
        "vislm_gflop_per_step": flops_ours / 1e9,
        "peer_gflop_per_step": flops_peer / 1e9,
        "vislm_mfu": flops_ours / seconds["vislm"] / peak,
        "peer_mfu": flops_peer / seconds[f"hf_{best}"] / peak,
        # What vislm would reach running its FLOPs at the GEMM peak, against this peer.
        "ceiling_ratio": seconds[f"hf_{best}"] * peak / flops_ours,
        "vislm_matmul_ms": split["vislm"]["matmul_ms"],
        "vislm_other_ms": split["vislm"]["other_ms"],
        "peer_matmul_ms": split["peer"]["matmul_ms"],
        "peer_other_ms": split["peer"]["other_ms"],
        "vislm_fresh_mb_per_step": fresh["vislm"],
        "peer_fresh_mb_per_step": fresh["peer"],
        "vislm_params": _parameters(ours),
        "peer_params": _parameters(peers[best]),
    }
    return result


def run_frozen_vision(sizes: M.Sizes, rounds: int, warmup: int, precision: str = "bf16") -> dict:
    """The captioner with a frozen ViT, its tokens recomputed every step or taken from
    the cache of frozen outputs (vislm.models.frozen_cache) as from the second epoch on:
    the first (warm-up) round fills the cache."""
    torch.manual_seed(0)
    plain = M.vislm_model("caption", sizes)
    cached = M.vislm_model("caption", sizes)
    cached.load_state_dict(plain.state_dict())
    for model in (plain, cached):
        model.vision.requires_grad_(False)
    cache = cache_frozen_outputs(cached.vision)
    data = M.batch(sizes)
    with attention_for_precision(plain, precision), attention_for_precision(cached, precision):
        steps = {"plain": M.train_step("vislm", "caption", plain, data, precision),
                 "cached": M.train_step("vislm", "caption", cached, data, precision)}
        seconds = interleaved(steps, rounds, max(warmup, 1))
    return {"precision": precision,
            "uncached_samples_per_s": sizes.batch_size / seconds["plain"],
            "cached_samples_per_s": sizes.batch_size / seconds["cached"],
            "speedup": seconds["plain"] / seconds["cached"], "cache_hits": cache.hits}


def run(sizes: M.Sizes, rounds: int, warmup: int, peaks: Dict[str, float],
        precisions: Sequence[str] = ("fp32", "bf16"), pairs: Sequence[str] = M.PAIRS,
        log=print) -> dict:
    results = {}
    for precision in precisions:
        for pair in pairs:
            key = f"{pair}_{precision}"
            results[key] = run_pair(pair, precision, sizes, rounds, warmup, peaks)
            r = results[key]
            log(f"train {key}: vislm {r['vislm_samples_per_s']:.1f}/s, peer "
                f"({r['peer_attention']}) {r['peer_samples_per_s']:.1f}/s, "
                f"ratio {r['ratio']:.2f}, MFU {r['vislm_mfu']:.1%}")
    frozen = run_frozen_vision(sizes, rounds, warmup)
    log(f"train caption, frozen ViT: {frozen['speedup']:.2f}x with cached image tokens")
    return {**results, "frozen_vision": frozen}
