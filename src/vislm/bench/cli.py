"""The `vislm bench` sub-command. Imports nothing heavy until it runs."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

SECTION_NAMES = ("train", "allocator", "memory", "generate", "retrieval", "data", "compile")


def _bench(args: argparse.Namespace) -> None:
    from vislm.bench import run_bench

    if args.rewrite_report:
        _rewrite(args)
        return
    only = [name for value in args.only for name in value.split(",") if name]
    # The repository's BENCHMARKS.md holds the numbers of a full run; a quick or partial
    # run writes its report next to its bench.json unless told otherwise.
    markdown = args.markdown or (None if args.quick or only else "BENCHMARKS.md")
    command = " ".join(["vislm bench", "--out", shlex.quote(args.out)]
                       + (["--quick"] if args.quick else [])
                       + [f"--only {name}" for name in only]
                       + ([f"--threads {args.threads}"] if args.threads else []))
    results = run_bench(args.out, quick=args.quick, only=only or None, threads=args.threads,
                        markdown=markdown, command=command)
    print(f"wrote {args.out}/bench.json and {markdown or args.out + '/BENCHMARKS.md'} "
          f"in {results['total_seconds']:.0f} s")


def _rewrite(args: argparse.Namespace) -> None:
    from vislm.bench.runner import write_results

    earlier = Path(args.out) / "bench.json"
    results = json.loads(earlier.read_text(encoding="utf-8"))
    # Where the run that wrote bench.json put its report: BENCHMARKS.md for a full run.
    full = not results.get("quick", True) and set(results.get("sections_run", [])) >= set(SECTION_NAMES)
    markdown = args.markdown or ("BENCHMARKS.md" if full else None)
    write_results(results, Path(args.out), markdown)
    print(f"rewrote {markdown or args.out + '/BENCHMARKS.md'} from {earlier}")


def add_bench_command(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="benchmark vislm against Hugging Face transformers")
    bench.add_argument("--out", required=True, help="output directory (bench.json)")
    bench.add_argument("--quick", action="store_true", help="tiny sizes, few steps: a smoke test")
    bench.add_argument("--only", action="append", default=[], metavar="NAME",
                       help=f"run only these sections ({', '.join(SECTION_NAMES)}); repeatable "
                            "or comma-separated")
    bench.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    bench.add_argument("--markdown", default=None,
                       help="report path (default: BENCHMARKS.md for a full run, else OUT/BENCHMARKS.md)")
    bench.add_argument("--rewrite-report", action="store_true",
                       help="measure nothing: write the report again from OUT/bench.json "
                            "(after a change to the report's text)")
    bench.set_defaults(func=_bench)
