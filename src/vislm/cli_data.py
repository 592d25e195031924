"""`vislm data convert` and `vislm data stats`: turn command-line inputs into data configs,
read them with the registered readers (vislm.tasks.data), then write or summarise.

What the positional inputs are, per format:
  coco, csv, jsonl   annotation files (several are concatenated)
  karpathy           one dataset_*.json (images under --images, default its folder)
  vqav2              the questions file, then the annotations file
  visual_genome      the folder holding image_data.json and the other files
  shapes, folder     a folder (several folders for `folder`)
  webdataset         shard folders or .tar files
  easyvqa            nothing (the installed package)
  vqarad             nothing (the shared copy) or the data folder
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from vislm.config import DataConfig
from vislm.errors import DataError

FORMATS = ("shapes", "coco", "karpathy", "vqav2", "visual_genome", "easyvqa", "vqarad", "csv", "jsonl", "folder",
           "webdataset")
_INPUT_COUNTS = {"shapes": (1, 1), "karpathy": (1, 1), "vqav2": (2, 2), "visual_genome": (1, 1), "easyvqa": (0, 0),
                 "vqarad": (0, 1)}  # (least, most); the others take one or more


def add_data_commands(data: argparse._SubParsersAction) -> None:
    """Add `convert` and `stats` to the `vislm data` sub-commands."""
    from vislm.data.formats.convert import TARGETS

    convert = data.add_parser("convert", help="convert a data set to COCO, VQAv2, JSONL or WebDataset shards")
    convert.add_argument("--from", dest="source", required=True, choices=FORMATS, help="input format")
    convert.add_argument("--to", dest="target", required=True, choices=TARGETS, help="output format")
    convert.add_argument("inputs", nargs="*", help="input files or folders (see `vislm.cli_data`)")
    convert.add_argument("--out", required=True, help="output folder (annotation files and images/)")
    convert.add_argument("--shard-size", type=int, default=1000, help="images per WebDataset shard")
    _add_source_options(convert)
    convert.set_defaults(func=_convert)

    stats = data.add_parser("stats", help="print counts, caption lengths, top answers and missing images as JSON")
    stats.add_argument("--format", dest="source", required=True, choices=FORMATS, help="input format")
    stats.add_argument("inputs", nargs="*", help="input files or folders (see `vislm.cli_data`)")
    _add_source_options(stats)
    stats.set_defaults(func=_stats)


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default="train", help="split to read where the format has several")
    parser.add_argument("--images", default="", help="image folder (vqav2: file pattern with {image_id})")
    parser.add_argument("--column", action="append", default=[], metavar="OURS=THEIRS",
                        help="CSV/JSONL column rename, e.g. caption=text (repeatable)")


def _convert(args: argparse.Namespace) -> None:
    from vislm.data.formats.convert import convert
    from vislm.tasks.data import load_split

    captions, questions = [], []
    # Shards are extracted to a scratch folder for the writers, which copy the images on.
    with tempfile.TemporaryDirectory(prefix="vislm-convert-") as scratch:
        for cfg in source_configs(args, extract_to=Path(scratch)):
            records = load_split(cfg, args.split)
            captions += records.captions
            questions += records.questions
        result = convert(captions, questions, args.target, args.out, args.shard_size, args.split)
    print(json.dumps(result, indent=2))


def _stats(args: argparse.Namespace) -> None:
    from vislm.data.formats.stats import summarize

    captions, questions, missing = [], [], []
    for cfg in source_configs(args):
        more_captions, more_questions, more_missing = _unchecked_records(cfg, args.split)
        captions += more_captions
        questions += more_questions
        missing += more_missing
    print(json.dumps(summarize(captions, questions, missing), indent=2))


def _unchecked_records(cfg: DataConfig, split: str) -> tuple[list, list, list[str]]:
    """Captions, questions and missing images of one input; missing images are counted, not errors."""
    from vislm.data.formats.webdataset import list_shards, read_shard_records
    from vislm.tasks.data import read_split

    if cfg.dataset == "webdataset":
        return read_shard_records(list_shards(cfg.annotations))  # straight from the shards, nothing extracted
    records = read_split(cfg, split)
    paths = dict.fromkeys(Path(r.image_path) for r in [*records.captions, *records.questions])
    return records.captions, records.questions, [str(path) for path in paths if not path.is_file()]


def source_configs(args: argparse.Namespace, extract_to: Path | None = None) -> list[DataConfig]:
    """One DataConfig per input (or one for formats read as a whole)."""
    fmt, inputs = args.source, [Path(p).absolute() for p in args.inputs]
    least, most = _INPUT_COUNTS.get(fmt, (1, None))
    if len(inputs) < least or (most is not None and len(inputs) > most):
        wanted = f"{least}" if least == most else f"{least} to {most}" if most is not None else f"at least {least}"
        raise DataError(f"format {fmt} takes {wanted} input path(s), got {len(inputs)}")
    images = str(Path(args.images).absolute()) if args.images else ""
    columns = dict(_column(text) for text in args.column)

    def config(root: Path | str, **paths: str) -> DataConfig:
        return DataConfig(dataset=fmt, root=str(root), images=paths.pop("images", images), columns=columns, **paths)

    if fmt == "easyvqa":
        return [config("")]
    if fmt == "vqarad":
        return [config(inputs[0] if inputs else "")]
    if fmt == "vqav2":
        return [config(inputs[0].parent, questions=str(inputs[0]), annotations=str(inputs[1]))]
    if fmt in ("shapes", "visual_genome"):
        return [config(inputs[0])]
    if fmt == "folder":
        return [config(path, images=str(path)) for path in inputs]
    if fmt == "webdataset":
        return [config(path.parent, annotations=str(path),
                       images=str(extract_to / f"input{index}") if extract_to else "")
                for index, path in enumerate(inputs)]
    # coco, karpathy, csv, jsonl: annotation files, images under --images or next to the file
    return [config(path.parent, annotations=str(path), images=images or str(path.parent)) for path in inputs]


def _column(text: str) -> tuple[str, str]:
    ours, sep, theirs = text.partition("=")
    if not sep or not ours.strip() or not theirs.strip():
        raise DataError(f"--column {text!r}: expected OURS=THEIRS, e.g. caption=text")
    return ours.strip(), theirs.strip()
