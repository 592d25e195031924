"""`vislm bench --quick`: every section runs end to end and the report is written."""

import json

import pytest

from vislm.bench.cli import SECTION_NAMES
from vislm.bench.runner import SECTIONS, run_bench
from vislm.cli import main


def test_section_names_agree():
    assert SECTION_NAMES == SECTIONS


@pytest.mark.slow
def test_quick_bench_writes_the_json_keys_and_the_markdown(tmp_path, capsys):
    assert main(["bench", "--out", str(tmp_path), "--quick"]) == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    for key in ("train_ratio_dual_fp32", "train_ratio_dual_bf16", "train_ratio_caption_fp32",
                "train_ratio_caption_bf16", "gen_ratio_greedy_b16", "mfu_bf16_dual", "mfu_fp32_dual",
                "retrieval_eval_seconds", "data_pairs_per_s_workers2", "peak_mb_dual_fp32_vislm"):
        assert isinstance(results[key], float) and results[key] > 0, key
    assert results["quick"] and results["machine"]["torch"]
    assert {g["key"] for g in results["goals"]} >= {"train_ratio_dual_bf16", "gen_ratio_greedy_b16"}
    report = (tmp_path / "BENCHMARKS.md").read_text()
    for heading in ("## Goals", "## Training throughput", "## Peak memory", "## Generation",
                    "## Retrieval", "## Data loading"):
        assert heading in report
    assert "vislm bench --out" in report
    # Fresh pages per step are counted for both sides; the allocator rerun has both sides too.
    assert results["train"]["dual_fp32"]["vislm_fresh_mb_per_step"] >= 0
    q1, q3 = results["train"]["dual_bf16"]["ratio_quartiles"]
    assert 0 < q1 <= q3
    assert "ratio per round (quartiles)" in report
    if "pairs" in results["allocator"]:
        assert set(results["allocator"]["pairs"]) == set(results["train"]) - {"frozen_vision"}
        assert "## Training with glibc keeping freed memory" in report
        assert results["train_ratio_kept_memory_dual_bf16"] == results["allocator"]["pairs"]["dual_bf16"]["ratio"]
        assert "reached, freed memory kept (both sides)" in report


def test_the_goals_table_gives_each_training_ratio_with_freed_memory_kept():
    from vislm.bench.report import _goals

    results = {"goals": [
        {"key": "train_ratio_dual_bf16", "goal": "dual bf16", "target": 2.0, "value": 1.9, "met": False},
        {"key": "retrieval_eval_seconds", "goal": "retrieval", "target": 5.0, "value": 0.9, "met": True}],
        "allocator": {"pairs": {"dual_bf16": {"ratio": 2.05}}}}
    lines = _goals(results)
    assert "| dual bf16 | >= 2.0 | 1.90 | **no** | 2.05 |" in lines
    assert "| retrieval | < 5.0 | 0.90 | yes |  |" in lines
    # Without the allocator section the column stays empty and unexplained.
    del results["allocator"]
    assert not any("freed memory in the process" in line for line in _goals(results))


def test_only_runs_the_named_sections(tmp_path):
    results = run_bench(tmp_path, quick=True, only=["retrieval"], log=lambda _: None)
    assert "retrieval" in results and "train" not in results
    assert "retrieval_eval_seconds" in json.loads((tmp_path / "bench.json").read_text())
    with pytest.raises(ValueError, match="unknown bench section"):
        run_bench(tmp_path, quick=True, only=["nope"])


@pytest.mark.parametrize("start,end,busy", [(0.2, 2.3, False), (1.6, 2.3, True), (0.2, 3.4, True)])
def test_the_report_flags_other_jobs_but_not_its_own_threads(start, end, busy):
    from vislm.bench.report import _machine

    machine = {"cpu": "x", "cores": 2, "threads_per_core": 1, "cpu_flags": [], "torch": "2", "torch_threads": 2,
               "transformers": "5", "python": "3", "date": "today", "load_average_at_start": [start, 0, 0],
               "load_average_at_end": [end, 0, 0]}
    results = {"machine": machine, "peak_gflops": {"fp32": 1.0, "bf16": 2.0}, "command": "c", "total_seconds": 1.0}
    text = "\n".join(_machine(results))
    assert ("shared with other jobs" in text) == busy


def test_the_compile_section_reports_each_pair_and_when_compiling_pays():
    from vislm.bench.report import TYPICAL_RUN_STEPS, _compile, headline

    def row(speedup, cold_even):
        return {"precision": "bf16", "eager_samples_per_s": 100.0,
                "compiled_samples_per_s": 100.0 * speedup, "speedup": speedup,
                "cold_compile_seconds": 60.0, "warm_compile_seconds": 2.0,
                "cold_break_even_steps": cold_even, "warm_break_even_steps": None}

    results = {"compile": {"dual": row(0.98, None), "caption": row(1.4, TYPICAL_RUN_STEPS / 2)}}
    text = "\n".join(_compile(results))
    assert "| dual | bf16 | 100.0 | 98.0 | **0.98x** | 60 | 2 |" in text
    assert "- dual: cold, compiling never pays back" in text
    assert "- caption: cold, compiling pays back its compile time" in text
    assert headline(results)["compile_speedup_caption"] == 1.4


@pytest.mark.parametrize("kernel", ["blas", "onednn"])
def test_matmul_split_counts_the_matmuls_of_either_float32_kernel(monkeypatch, kernel):
    import torch

    from vislm.bench.train import matmul_split
    from vislm.models import onednn_linear
    from vislm.models.layers import Linear

    monkeypatch.setenv(onednn_linear.ENV, kernel)
    onednn_linear.forget_choice()
    try:
        layer = Linear(512, 512)
        x = torch.randn(512, 512)

        def step():
            layer(x).sum().backward()

        step()
        split = matmul_split(step)
    finally:
        onednn_linear.forget_choice()
    # Three 512^3 products per step dwarf the sum and its backward.
    assert split["matmul_ms"] > split["other_ms"]


def test_interleaved_rounds_rotate_and_ratio_quartiles_match_their_definition():
    from vislm.bench.timing import interleaved_rounds, ratio_quartiles

    order = []
    times = interleaved_rounds({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                               rounds=3, warmup=1)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]  # rotating start, warm-up first
    assert [len(v) for v in times.values()] == [3, 3]
    # Ratios 1, 2, 3, 4, 5 round by round: quartiles at ranks 1.5 and 4.5 of the sorted
    # ratios (statistics.quantiles' default method), 1.5 and 4.5.
    assert ratio_quartiles([1.0] * 5, [1.0, 2.0, 3.0, 4.0, 5.0]) == (1.5, 4.5)
    assert ratio_quartiles([2.0], [3.0]) == (1.5, 1.5)


def test_rewrite_report_writes_the_same_numbers_again(tmp_path, capsys):
    results = run_bench(tmp_path, quick=True, only=["retrieval"], log=lambda _: None)
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("stale\n")
    assert main(["bench", "--out", str(tmp_path), "--rewrite-report"]) == 0
    text = report.read_text()
    assert f"{results['retrieval_eval_seconds']:.2f} s" in text and "stale" not in text
    assert "rewrote" in capsys.readouterr().out
    # Nothing to rewrite from: a clear error naming the file.
    assert main(["bench", "--out", str(tmp_path / "none"), "--rewrite-report"]) == 2
    assert "bench.json: file not found" in capsys.readouterr().err
