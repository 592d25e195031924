"""`vislm bench`: run the sections, collect one JSON, write the report.

Sections (all by default; --only picks some):
    train      training throughput and MFU, vislm vs Hugging Face, fp32 and bf16
    allocator  the same with glibc keeping freed memory, both sides (a subprocess)
    memory     peak memory of each training benchmark (a subprocess each)
    generate   greedy and beam decoding tokens/s vs transformers' generate
    retrieval  5k x 25k retrieval evaluation, FAISS search latency
    data       decode + transform + collate throughput, 0 and 2 workers, cached
    compile    torch.compile: compile time against the per-step gain

--quick runs every section but compile at tiny sizes with few rounds: a smoke test of
the whole path, not a measurement.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from vislm.bench import data as data_bench
from vislm.bench import models as M
from vislm.bench import retrieval as retrieval_bench
from vislm.bench.machine import describe, gemm_peak
from vislm.bench.report import goals, headline, write_markdown

SECTIONS = ("train", "allocator", "memory", "generate", "retrieval", "data", "compile")


@dataclass(frozen=True)
class Plan:
    sizes: M.Sizes
    train_rounds: int
    train_warmup: int
    generate_rounds: int
    allocator_rounds: int
    compile_rounds: int
    repeats: int
    peak_size: int
    retrieval: retrieval_bench.RetrievalSizes
    data: data_bench.DataSizes


FULL = Plan(M.FULL, train_rounds=11, train_warmup=2, generate_rounds=5, allocator_rounds=5,
            compile_rounds=5,
            repeats=3, peak_size=2048, retrieval=retrieval_bench.FULL, data=data_bench.FULL)
QUICK = Plan(M.QUICK, train_rounds=2, train_warmup=1, generate_rounds=1, allocator_rounds=1,
             compile_rounds=2,
             repeats=1, peak_size=256, retrieval=retrieval_bench.QUICK, data=data_bench.QUICK)


def run_bench(out_dir: str | Path, quick: bool = False, only: Optional[Sequence[str]] = None,
              threads: Optional[int] = None, markdown: Optional[str | Path] = None,
              command: str = "vislm bench", log: Callable[[str], None] = print) -> dict:
    """Run the benchmark, write `out_dir/bench.json` and the markdown report (default:
    `out_dir/BENCHMARKS.md`); return the results."""
    unknown = sorted(set(only or ()) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown bench section(s) {unknown}; choose from {list(SECTIONS)}")
    sections = list(only) if only else [s for s in SECTIONS if not (quick and s == "compile")]
    if threads:
        torch.set_num_threads(threads)
    plan = QUICK if quick else FULL
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    results: dict = {"command": command, "quick": quick, "sections_run": sections,
                     "machine": describe(), "sizes": plan.sizes.as_dict()}
    results["peak_gflops"] = gemm_peak(plan.peak_size, repeats=plan.repeats + 2)
    log(f"GEMM peak: {results['peak_gflops']['fp32']:.0f} GFLOP/s fp32, "
        f"{results['peak_gflops']['bf16']:.0f} GFLOP/s bf16 "
        f"({torch.get_num_threads()} threads)")
    timings = {}
    for name in sections:
        start = time.perf_counter()
        results[name] = _run_section(name, plan, results, log)
        timings[name] = time.perf_counter() - start
    results["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["section_seconds"] = timings
    results["total_seconds"] = time.perf_counter() - started
    return write_results(results, out_dir, markdown)


def write_results(results: dict, out_dir: Path, markdown: Optional[str] = None) -> dict:
    """Add the headline keys and goals to `results`, write out_dir/bench.json and the report
    (`vislm bench --rewrite-report` calls it again on an earlier run's bench.json)."""
    results.update(headline(results))
    results["goals"] = goals(results)
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_markdown(results, Path(markdown) if markdown else out_dir / "BENCHMARKS.md")
    return results


def _run_section(name: str, plan: Plan, results: dict, log) -> dict:
    if name == "train":
        from vislm.bench import train

        return train.run(plan.sizes, plan.train_rounds, plan.train_warmup, results["peak_gflops"],
                         log=log)
    if name == "allocator":
        from vislm.bench import allocator

        return allocator.run(plan.sizes, plan.allocator_rounds, plan.train_warmup,
                             results["peak_gflops"], torch.get_num_threads(), log=log)
    if name == "memory":
        from vislm.bench import memory

        attention = {key: row["peer_attention"] for key, row in results.get("train", {}).items()
                     if "peer_attention" in row}
        # A subprocess per benchmark costs seconds of start-up: a smoke test measures one.
        pairs, precisions = (("dual",), ("fp32",)) if plan is QUICK else (M.PAIRS, ("fp32", "bf16"))
        return memory.run(plan.sizes, torch.get_num_threads(), attention, log=log,
                          precisions=precisions, pairs=pairs)
    if name == "generate":
        from vislm.bench import generate

        return generate.run(plan.sizes, plan.generate_rounds, log=log)
    if name == "retrieval":
        return retrieval_bench.run(plan.retrieval, plan.repeats, log=log)
    if name == "data":
        return data_bench.run(plan.data, log=log)
    from vislm.bench import compile as compile_bench

    return compile_bench.run(plan.sizes, plan.compile_rounds, log=log)
