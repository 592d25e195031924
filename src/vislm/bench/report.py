"""The headline numbers, the goals, and BENCHMARKS.md, all from the results dict.

Ratios are vislm / peer throughput from one process run, interleaved; MFU is a fraction
of the GEMM peak measured by the same run. Nothing here measures anything.
"""

from __future__ import annotations

from pathlib import Path

PAIR_NAMES = {"dual": "dual encoder (ViT + text encoder, each pooled by its first token "
                     "as the peer pools them, ITC)",
              "caption": "captioner (ViT + causal decoder with cross-attention, LM loss)"}
PEERS = {"dual": "VisionTextDualEncoderModel (ViT + BERT)",
         "caption": "VisionEncoderDecoderModel (ViT + GPT-2, cross-attention)"}


# -----------------------------------------------------------------------------
# Headline keys and goals

def headline(results: dict) -> dict:
    """Flat top-level keys of bench.json (only for the sections that ran)."""
    out = {}
    for key, row in _pairs(results.get("train", {})):
        pair, precision = key.split("_")
        out[f"train_ratio_{pair}_{precision}"] = row["ratio"]
        out[f"mfu_{precision}_{pair}"] = row["vislm_mfu"]
        out[f"peer_mfu_{precision}_{pair}"] = row["peer_mfu"]
        out[f"train_samples_per_s_{pair}_{precision}"] = row["vislm_samples_per_s"]
    for batch, row in results.get("generate", {}).items():
        for strategy in ("greedy", "beam"):
            out[f"gen_ratio_{strategy}_{batch}"] = row[f"ratio_{strategy}"]
            out[f"gen_tokens_per_s_{strategy}_{batch}"] = row[f"vislm_{strategy}_tokens_per_s"]
    if "retrieval" in results:
        out["retrieval_eval_seconds"] = results["retrieval"]["score"]["seconds"]
        faiss = results["retrieval"]["faiss"]
        if "single_query_ms" in faiss:
            out["faiss_single_query_ms"] = faiss["single_query_ms"]
            out["faiss_batch_ms_per_query"] = faiss["batch_ms_per_query"]
    if "data" in results:
        for name in ("workers0", "workers2", "cached"):
            out[f"data_pairs_per_s_{name}"] = results["data"][f"{name}_pairs_per_s"]
    for key, row in results.get("memory", {}).items():
        for lib in ("vislm", "peer"):
            if "peak_delta_mb" in row[lib]:
                out[f"peak_mb_{key}_{lib}"] = row[lib]["peak_delta_mb"]
    for key, row in results.get("allocator", {}).get("pairs", {}).items():
        out[f"train_ratio_kept_memory_{key}"] = row["ratio"]
    if "frozen_vision" in results.get("train", {}):
        out["frozen_vision_cache_speedup"] = results["train"]["frozen_vision"]["speedup"]
    for pair, row in results.get("compile", {}).items():
        out[f"compile_speedup_{pair}"] = row["speedup"]
        out[f"compile_seconds_cold_{pair}"] = row["cold_compile_seconds"]
        out[f"compile_seconds_warm_{pair}"] = row["warm_compile_seconds"]
    return out


def _quartiles(pair) -> str:
    return "" if not pair else f"{pair[0]:.2f}-{pair[1]:.2f}"


def _pairs(train: dict) -> list:
    """The (pair_precision, row) entries of the train section, without extra rows."""
    return [(key, row) for key, row in train.items() if key != "frozen_vision"]


# (key, description, target, higher is better)
GOALS = [
    ("train_ratio_dual_bf16", "dual encoder training, bf16, vs HF", 2.0, True),
    ("train_ratio_caption_bf16", "captioner training, bf16, vs HF", 2.0, True),
    ("train_ratio_dual_fp32", "dual encoder training, fp32, vs HF", 1.3, True),
    ("train_ratio_caption_fp32", "captioner training, fp32, vs HF", 1.3, True),
    ("gen_ratio_greedy_b16", "cached greedy decoding, batch 16, vs generate", 2.0, True),
    ("mfu_bf16_dual", "dual encoder bf16 MFU (of the bf16 GEMM peak)", 0.40, True),
    ("retrieval_eval_seconds", "retrieval eval 5,000 x 25,000 (s)", 5.0, False),
]


def goals(results: dict) -> list:
    rows = []
    for key, what, target, higher in GOALS:
        if key not in results:
            continue
        value = results[key]
        rows.append({"key": key, "goal": what, "target": target, "value": value,
                     "met": value >= target if higher else value < target})
    return rows


# -----------------------------------------------------------------------------
# Markdown

def _table(header: list, rows: list) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _f(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _pct(value) -> str:
    return f"{100 * value:.1f}%"


def _machine(results: dict) -> list:
    m = results["machine"]
    load = m.get("load_average_at_start"), m.get("load_average_at_end")
    # At the end the benchmark's own threads are part of the load average; beyond them,
    # half the cores' worth of load means other jobs were running.
    start, end = (l and l[0] for l in load)
    busy = bool((start and start > 0.5 * m["cores"])
                or (end and end - m["torch_threads"] > 0.5 * m["cores"]))
    lines = [
        f"- CPU: {m['cpu']}, {m['cores']} cores ({m['threads_per_core']} thread(s) per core), "
        f"flags: {', '.join(m['cpu_flags']) or 'none of note'}",
        f"- torch {m['torch']} ({m['torch_threads']} threads), transformers {m['transformers']}, "
        f"Python {m['python']}",
        f"- GEMM peak measured in-process (1024^3 and 2048^3 matmuls, best of several, the "
        f"faster of torch's BLAS and oneDNN): {_f(results['peak_gflops']['fp32'], 0)} GFLOP/s "
        f"fp32 (BLAS {_f(results['peak_gflops'].get('fp32_blas'), 0)}, oneDNN "
        f"{_f(results['peak_gflops'].get('fp32_onednn'), 0)}), "
        f"{_f(results['peak_gflops']['bf16'], 0)} GFLOP/s bf16",
        f"- Load average (1 min) at start / end: {_f(load[0] and load[0][0], 2)} / "
        f"{_f(load[1] and load[1][0], 2)}" + (
            " — **the machine was shared with other jobs during this run**: absolute numbers "
            "are low and noisy; the ratios (interleaved in one process) are the numbers to read."
            if busy else ""),
        f"- Date: {m['date']}; command: `{results['command']}`; "
        f"total time {_f(results['total_seconds'], 0)} s",
    ]
    if m.get("allocator"):
        lines.insert(3, f"- Memory allocator of the benchmark process: {m['allocator']}")
    if m.get("kernels"):
        lines.insert(4, f"- vislm's C kernels (bf16 training): {m['kernels']}")
    if busy and m["torch_threads"] < m["cores"]:
        lines.append(f"- Run with {m['torch_threads']} torch thread(s) of {m['cores']} cores: while "
                     f"other jobs hold a core, multi-threaded kernels stall at every "
                     f"synchronisation and their timings stop meaning anything.")
    if results.get("quick"):
        lines.append("- **--quick run: tiny sizes, not a measurement.**")
    return lines + [""]


def _train(results: dict) -> list:
    s = results["sizes"]
    lines = ["## Training throughput and MFU", "",
             f"One optimizer step (forward, backward, fused AdamW) on a batch of "
             f"{s['batch_size']}: ViT {s['depth']}x{s['dim']} on {s['image_size']}x"
             f"{s['image_size']} images (patch {s['patch_size']}), text {s['depth']}x{s['dim']}, "
             f"vocabulary {s['vocab_size']:,}, {s['seq_len']} tokens. Median of "
             f"interleaved timed steps after warm-up. Peer = the faster of its `sdpa` and "
             f"`eager` attention; ratio = the medians' ratio, and the quartiles of the ratio "
             f"within each round (vislm and the peer timed in the same round) show its spread. "
             f"MFU = counted FLOPs/s over the measured GEMM peak of the precision.", ""]
    rows = []
    for key, r in _pairs(results["train"]):
        pair, precision = key.split("_")
        rows.append([pair, precision, _f(r["vislm_samples_per_s"]), _f(r["hf_sdpa_samples_per_s"]),
                     _f(r["hf_eager_samples_per_s"]), f"**{r['ratio']:.2f}x**",
                     _quartiles(r.get("ratio_quartiles")), _pct(r["vislm_mfu"]), _pct(r["peer_mfu"]),
                     f"{r['vislm_gflop_per_step']:.1f} / {r['peer_gflop_per_step']:.1f}",
                     f"{_f(r.get('vislm_fresh_mb_per_step'), 0)} / "
                     f"{_f(r.get('peer_fresh_mb_per_step'), 0)}",
                     f"{r['vislm_params'] / 1e6:.1f}M / {r['peer_params'] / 1e6:.1f}M"])
    lines += _table(["pair", "precision", "vislm samples/s", "HF sdpa", "HF eager", "ratio",
                     "ratio per round (quartiles)", "vislm MFU", "HF MFU", "GFLOP/step vislm / HF",
                     "fresh MB/step vislm / HF", "params vislm / HF"], rows)
    lines += [f"- {pair}: vislm {PAIR_NAMES[pair]} vs `{PEERS[pair]}`" for pair in PAIR_NAMES]
    lines += ["- fresh MB/step: memory the allocator took back from the kernel during a step "
              "(minor page faults x page size), every page of it zero-filled by the kernel "
              "first; see the allocator section."]
    frozen = results["train"].get("frozen_vision")
    if frozen:
        lines += ["", f"Frozen vision tower ({frozen['precision']} captioner, ViT frozen): "
                  f"{_f(frozen['uncached_samples_per_s'])} samples/s running the tower every step, "
                  f"{_f(frozen['cached_samples_per_s'])} samples/s with its tokens cached "
                  f"(vislm.models.frozen_cache; every epoch after the first): "
                  f"**{frozen['speedup']:.2f}x**."]
    return lines + [""]


def _allocator(results: dict) -> list:
    a = results["allocator"]
    lines = ["## Training with glibc keeping freed memory", ""]
    if "pairs" not in a:
        return lines + [f"Not measured: {a.get('skipped') or a.get('error')}.", ""]
    lines += ["The training pairs again, in a subprocess that first applies what vislm's trainer "
              "does (`train.allocator: keep`, vislm/train/allocator.py: glibc's mmap and trim "
              "thresholds raised with mallopt): glibc then keeps freed blocks instead of "
              "returning them to the kernel, so a step stops paying page faults for its large "
              "temporaries. The setting is process-wide, so both libraries run under it and the "
              "ratio still compares the models; gain = samples/s over the default-allocator "
              "run above.", ""]
    default = results.get("train", {})
    rows = []
    for key, r in a["pairs"].items():
        pair, precision = key.split("_")
        base = default.get(key)
        gain = (lambda lib: _f(r[f"{lib}_samples_per_s"] / base[f"{lib}_samples_per_s"], 2) + "x"
                if base else "n/a")
        rows.append([pair, precision, _f(r["vislm_samples_per_s"]), _f(r["peer_samples_per_s"]),
                     f"**{r['ratio']:.2f}x**", gain("vislm"), gain("peer"),
                     f"{_f(r['vislm_fresh_mb_per_step'], 0)} / {_f(r['peer_fresh_mb_per_step'], 0)}"])
    return lines + _table(["pair", "precision", "vislm samples/s", "HF samples/s", "ratio",
                           "vislm gain", "HF gain", "fresh MB/step vislm / HF"], rows)


def _memory(results: dict) -> list:
    rows = []
    for key, r in results["memory"].items():
        pair, precision = key.split("_")
        cells = [r[lib].get("peak_delta_mb") for lib in ("vislm", "peer")]
        rows.append([pair, precision, _f(cells[0], 0), _f(cells[1], 0)])
    return (["## Peak memory of a training step", "",
             "Resident-set growth over two training steps in a fresh subprocess (VmHWM after "
             "a reset, minus VmRSS before the steps): activations, gradients, AdamW state.", ""]
            + _table(["pair", "precision", "vislm MB", "HF MB"], rows))


def _generate(results: dict) -> list:
    rows = []
    for batch, r in results["generate"].items():
        rows.append([batch[1:], "greedy", _f(r["vislm_greedy_tokens_per_s"], 0),
                     _f(r.get("vislm_greedy_plain_head_tokens_per_s"), 0),
                     _f(r["vislm_greedy_concat_cache_tokens_per_s"], 0),
                     f"{_f(r['peer_greedy_tokens_per_s'], 0)} ({r['peer_greedy_attention']})",
                     f"**{r['ratio_greedy']:.2f}x**"])
        rows.append([batch[1:], "beam 4", _f(r["vislm_beam_tokens_per_s"], 0), "", "",
                     f"{_f(r['peer_beam_tokens_per_s'], 0)} ({r['peer_beam_attention']})",
                     f"**{r['ratio_beam']:.2f}x**"])
    return (["## Generation", "",
             f"Tokens/s generating {results['sizes']['seq_len']} tokens per image (forced: no "
             "early EOS), image encoding included; each library's own captioner of the "
             "training size, random weights, fp32. vislm's greedy decoding picks each token "
             "with its screened LM head (the float32 argmax found through a bf16 pass over "
             "the vocabulary, vislm.models.argmax_head); the plain-head column computes "
             "every float32 logit instead. Same tokens in every column of a row (screened "
             "against plain head checked in this run: "
             + ", ".join(f"batch {b[1:]} " + ("equal" if r.get("screened_tokens_equal_plain")
                                               else "**different**")
                         for b, r in results["generate"].items()) + ").", ""]
            + _table(["batch", "strategy", "vislm (static KV cache)", "vislm (plain head)",
                      "vislm (concat cache)", "transformers generate", "ratio"], rows))


def _retrieval(results: dict) -> list:
    r = results["retrieval"]
    score, faiss = r["score"], r["faiss"]
    lines = ["## Retrieval", "",
             f"- Retrieval evaluation of {score['images']:,} images x {score['captions']:,} "
             f"captions (D={score['dim']}, all R@K both ways, ranks): "
             f"**{score['seconds']:.2f} s**", ""]
    if "single_query_ms" in faiss:
        lines += [f"- FAISS IndexFlatIP, {faiss['index_size']:,} vectors (D={faiss['dim']}), "
                  f"top {faiss['top_k']}, {faiss['faiss_threads']} threads: "
                  f"{faiss['single_query_ms']:.2f} ms per query alone; "
                  f"{faiss['batch_ms']:.0f} ms for a batch of {faiss['batch_queries']:,} "
                  f"({faiss['batch_ms_per_query']:.3f} ms per query); index built in "
                  f"{faiss['build_seconds']:.2f} s", ""]
    else:
        lines += [f"- FAISS: {faiss['skipped']}", ""]
    return lines


def _keeps_busy(results: dict) -> list:
    rates = [r["vislm_samples_per_s"] for _, r in _pairs(results.get("train", {}))]
    if not rates:
        return []
    d = results["data"]
    supply = max(d["workers0_pairs_per_s"], d["workers2_pairs_per_s"])
    verdict = ("so data loading does not hold training back here" if supply > max(rates) else
               "so decoding every epoch would hold training back: keep the ImageCache on")
    return [f"The fastest training step above consumes {max(rates):,.0f} samples/s; the "
            f"loader supplies {supply:,.0f} pairs/s decoding every image "
            f"({supply / max(rates):.1f}x that) and {d['cached_pairs_per_s']:,.0f} from the "
            f"cache, {verdict}.", ""]


def _data(results: dict) -> list:
    d = results["data"]
    rows = [["0 workers, decode every image", _f(d["workers0_pairs_per_s"], 0)],
            ["2 workers, decode every image", _f(d["workers2_pairs_per_s"], 0)],
            ["0 workers, ImageCache (decoded once)", _f(d["cached_pairs_per_s"], 0)]]
    return (["## Data loading", "",
             f"Image-caption pairs per second through PNG decode, transform, tokenisation and "
             f"collation (batch {d['batch_size']}, {d['pairs']:,} pairs of a shapes world of "
             f"{d['images']} images, worker start-up included).", ""]
            + _table(["pipeline", "pairs/s"], rows)
            + _keeps_busy(results)
            + [f"Padding per epoch with these captions (share of padded token slots): "
               f"{_pct(d['padding_fraction_random'])} in random batches, "
               f"{_pct(d['padding_fraction_bucketed'])} with `train.length_bucketing` "
               f"(vislm.data.bucketing).", ""])


# A typical run, to judge whether compiling pays: 10 epochs of the default shapes world
# (4,000 images x 5 captions) at batch 64.
TYPICAL_RUN_STEPS = 10 * 4000 * 5 // 64


def _compile(results: dict) -> list:
    def verdict(c: dict, kind: str) -> str:
        even = c[f"{kind}_break_even_steps"]
        if even is None:
            return "never pays back (the compiled step is no faster)"
        pays = "pays back" if even < TYPICAL_RUN_STEPS else "does not pay back"
        return f"{pays} its compile time in a typical run ({even:,.0f} steps to break even)"

    lines = ["## torch.compile", "",
             f"vislm's training step, eager against compiled with Inductor (what "
             f"`train.compile=inductor` does; off by default). Compile time cold is the first "
             f"run on a machine, warm a later one that finds Inductor's on-disk cache filled. A "
             f"typical run is {TYPICAL_RUN_STEPS:,} steps (10 epochs of the 4,000-image shapes "
             f"world, batch 64).", ""]
    rows, verdicts = [], []
    for pair, c in results["compile"].items():
        rows.append([pair, c["precision"], _f(c["eager_samples_per_s"]),
                     _f(c["compiled_samples_per_s"]), f"**{c['speedup']:.2f}x**",
                     _f(c["cold_compile_seconds"], 0), _f(c["warm_compile_seconds"], 0)])
        verdicts.append(f"- {pair}: cold, compiling {verdict(c, 'cold')}; warm, it "
                        f"{verdict(c, 'warm')}.")
    return (lines + _table(["pair", "precision", "eager samples/s", "compiled samples/s",
                            "speedup", "compile s (cold)", "compile s (warm)"], rows)
            + verdicts + [""])


def _goals(results: dict) -> list:
    kept = results.get("allocator", {}).get("pairs", {})
    rows = []
    for g in results["goals"]:
        # A training ratio again with glibc keeping freed memory for both sides (what
        # vislm's trainer sets; the peer's user may set it too).
        tuned = kept.get(g["key"][len("train_ratio_"):]) if g["key"].startswith("train_ratio_") else None
        rows.append([g["goal"], ("< " if g["key"].startswith("retrieval") else ">= ") + str(g["target"]),
                     _f(g["value"], 2), "yes" if g["met"] else "**no**",
                     _f(tuned["ratio"], 2) if tuned else ""])
    lines = ["## Goals", ""] + _table(["goal", "target", "reached", "met",
                                       "reached, freed memory kept (both sides)"], rows)
    if kept:
        lines += ["The last column is the training ratio with glibc keeping freed memory in the "
                  "process for both libraries (the allocator section): what vislm's trainer "
                  "sets by default, and what a user of the peer may set too.", ""]
    return lines


def write_markdown(results: dict, path: Path) -> Path:
    from vislm.bench.notes import notes

    lines = ["# Benchmarks", "",
             "Written by `vislm bench` (src/vislm/bench); every number below comes from the "
             "run described here. vislm and Hugging Face transformers run side by side in one "
             "process, interleaved step by step.", ""]
    lines += _machine(results)
    if results.get("goals"):
        lines += _goals(results)
    for name, section in (("train", _train), ("allocator", _allocator), ("memory", _memory),
                          ("generate", _generate), ("retrieval", _retrieval), ("data", _data),
                          ("compile", _compile)):
        if name in results:
            lines += section(results)
    lines += notes(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path
