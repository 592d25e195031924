"""`vislm ...`: parse the command line, call the library, print. Nothing else lives here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from vislm.errors import ConfigError, VislmError


def _data_shapes(args) -> None:
    from vislm.data.shapes import generate_shapes_world

    sizes = {"train": args.train, "val": args.val, "test": args.test, "comp_test": args.comp_test}
    out = generate_shapes_world(args.out, seed=args.seed, sizes=sizes, image_size=args.image_size)
    print(f"wrote the shapes world to {out} ({sum(sizes.values())} images)")


def _train(args) -> None:
    from vislm.config import load_config
    from vislm.tasks.run import train
    from vislm.train.trainer import end_process_group

    cfg = load_config(args.config, args.overrides)
    try:
        result = train(cfg, args.out, resume=args.resume)
    finally:
        end_process_group()
    print(json.dumps(result["metrics"], indent=2))


def _finetune(args) -> None:
    # `init=RUN_DIR` is shorthand for model.init_from=RUN_DIR: start from that run's weights.
    overrides = [f"model.init_from={o[5:]}" if o.startswith("init=") else o for o in args.overrides]
    if not any(o.startswith("model.init_from=") for o in overrides):
        raise ConfigError("finetune needs init=RUN_DIR (the run or saved model to start from)")
    args.overrides = overrides
    _train(args)


def _lit(args) -> None:
    from vislm.tasks.lit import run_lit_comparison

    print(json.dumps(run_lit_comparison(args.out, args.data, quick=args.quick, overrides=args.overrides), indent=2))


def _demo(args) -> None:
    from vislm.demo import run_demo

    metrics = run_demo(args.out, quick=args.quick, data_root=args.data)
    print(json.dumps(metrics, indent=2))


def _compare(args) -> None:
    from vislm.analysis.compare import load_compare_config, run_compare

    rows = run_compare(load_compare_config(args.config, args.overrides), args.out)
    print(f"wrote {args.out}/compare.json and {args.out}/compare.md ({len(rows)} strategies)")


def _eval_caption(args) -> None:
    from vislm.metrics.files import eval_caption_files

    print(json.dumps(eval_caption_files(args.predictions, args.references, meteor=not args.no_meteor), indent=2))


def _eval_vqa(args) -> None:
    from vislm.metrics.files import eval_vqa_files

    print(json.dumps(eval_vqa_files(args.predictions, args.questions, args.annotations), indent=2))


def _eval_rerank(args) -> None:
    import vislm
    from vislm.tasks import TASKS
    from vislm.tasks.data import load_split
    from vislm.tasks.rerank import rerank_tradeoff

    loaded = vislm.load(args.model)
    cfg = loaded.config
    if args.data:
        cfg.data.root = args.data
    names = dict.fromkeys([cfg.data.train_split, args.split])
    task = TASKS["retrieval"](cfg, loaded.tokenizer, {name: load_split(cfg.data, name) for name in names})
    print(json.dumps(rerank_tradeoff(task, loaded.model, args.split, args.k), indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vislm", description="Visually-enhanced language modeling.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="make or inspect data sets").add_subparsers(dest="data_command", required=True)
    shapes = data.add_parser("shapes", help="render the embedded synthetic shapes world")
    shapes.add_argument("--out", required=True, help="output directory")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--train", type=int, default=4000, help="images in the train split")
    shapes.add_argument("--val", type=int, default=300)
    shapes.add_argument("--test", type=int, default=500)
    shapes.add_argument("--comp-test", type=int, default=300, help="images with held-out colour-shape pairs")
    shapes.add_argument("--image-size", type=int, default=64)
    shapes.set_defaults(func=_data_shapes)
    from vislm.cli_data import add_data_commands  # convert, stats

    add_data_commands(data)

    train = commands.add_parser("train", help="train and evaluate one config")
    train.add_argument("config", help="YAML config file")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3")
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    train.set_defaults(func=_train)

    pretrain = commands.add_parser("pretrain", help="pre-train with a mix of objectives (e.g. ITC + ITM + MLM)")
    pretrain.add_argument("config", help="YAML config, e.g. configs/pretrain.yaml")
    pretrain.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3")
    pretrain.add_argument("--out", required=True, help="run directory")
    pretrain.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    pretrain.set_defaults(func=_train)

    finetune = commands.add_parser("finetune", help="train a task starting from another run's weights")
    finetune.add_argument("config", help="YAML config of the task")
    finetune.add_argument("overrides", nargs="*", help="init=RUN_DIR, then dotted overrides")
    finetune.add_argument("--out", required=True, help="run directory")
    finetune.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    finetune.set_defaults(func=_finetune)

    lit = commands.add_parser("lit", help="locked MiniLM text tower vs one trained from scratch, zero-shot retrieval")
    lit.add_argument("overrides", nargs="*", help="dotted overrides of configs/lit_minilm.yaml, e.g. train.max_steps=600")
    lit.add_argument("--out", required=True, help="output directory")
    lit.add_argument("--data", default="data/shapes", help="shapes world directory")
    lit.add_argument("--quick", action="store_true", help="a few steps, for smoke tests")
    lit.set_defaults(func=_lit)

    demo = commands.add_parser("demo", help="train a captioner, a dual encoder and a VQA model on the shapes world")
    demo.add_argument("--out", required=True, help="output directory")
    demo.add_argument("--data", default=None, help="shapes world directory (made if missing)")
    demo.add_argument("--quick", action="store_true", help="the same path at a tiny size, for smoke tests")
    demo.set_defaults(func=_demo)

    compare = commands.add_parser("compare", help="train fusion strategies on identical data, budget and seeds")
    compare.add_argument("config", help="compare YAML (base config, seeds, strategies)")
    compare.add_argument("overrides", nargs="*", help="dotted overrides, e.g. base.train.max_steps=100")
    compare.add_argument("--out", required=True, help="output directory")
    compare.set_defaults(func=_compare)

    evaluate = commands.add_parser("eval", help="score prediction files").add_subparsers(dest="eval_command", required=True)
    cap = evaluate.add_parser("caption", help="BLEU, METEOR, ROUGE-L, CIDEr (pycocoevalcap)")
    cap.add_argument("--predictions", required=True, help='[{"image_id", "caption"}] JSON')
    cap.add_argument("--references", required=True, help="COCO captions JSON")
    cap.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves the JVM start)")
    cap.set_defaults(func=_eval_caption)
    vqa = evaluate.add_parser("vqa", help="official VQAv2 accuracy")
    vqa.add_argument("--predictions", required=True, help='[{"question_id", "answer"}] JSON')
    vqa.add_argument("--questions", required=True, help="VQAv2 questions JSON")
    vqa.add_argument("--annotations", required=True, help="VQAv2 annotations JSON")
    vqa.set_defaults(func=_eval_vqa)
    rerank = evaluate.add_parser("rerank", help="retrieval re-ranked by an ITM head: accuracy and time for each k")
    rerank.add_argument("--model", required=True, help="a saved model with an ITM head (RUN/model of vislm pretrain)")
    rerank.add_argument("--data", default=None, help="data root, if not the one the model was trained on")
    rerank.add_argument("--split", default="test")
    rerank.add_argument("--k", type=int, nargs="+", default=[0, 4, 16, 64], help="candidates re-ranked per query")
    rerank.set_defaults(func=_eval_rerank)
    from vislm.bench.cli import add_bench_command  # vislm vs Hugging Face, BENCHMARKS.md

    add_bench_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except VislmError as exc:
        # A user error: one line, no traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc.filename}: file not found", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
