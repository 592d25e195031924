"""Write records read from any format as COCO captions, VQAv2, JSONL or WebDataset shards.

Every writer makes a self-contained folder: the annotation files plus images/, with
each image copied as images/<image_id><suffix>, so file names inside the written
files are relative and never point outside the folder. `convert` also returns the
data config that reads the folder back (`vislm train ... data.dataset=...`).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from vislm.data.formats.coco import CaptionRecord
from vislm.data.formats.vqav2 import VQARecord
from vislm.data.formats.webdataset import write_shards
from vislm.data.images import load_image
from vislm.errors import DataError

TARGETS = ("coco", "vqav2", "jsonl", "webdataset")
IMAGES = "images"


def convert(
    captions: list[CaptionRecord], questions: list[VQARecord], to_format: str, out_dir: str | Path,
    shard_size: int = 1000, split: str = "train",
) -> dict[str, Any]:
    """Write the records in `to_format` under out_dir; returns {"files": [...], "config": {...}}.

    `split` only labels the VQAv2 files ("data_subtype").
    """
    out_dir = Path(out_dir)
    if to_format == "coco":
        files = [write_coco_captions(captions, out_dir)]
        config = {"dataset": "coco", "annotations": files[0].name, "images": IMAGES}
    elif to_format == "vqav2":
        files = list(write_vqav2(questions, out_dir, split))
        config = {"dataset": "vqav2", "questions": files[0].name, "annotations": files[1].name,
                  "images": f"{IMAGES}/{{image_id}}{VQAV2_SUFFIX}"}
    elif to_format == "jsonl":
        files = [write_jsonl(captions, questions, out_dir)]
        config = {"dataset": "jsonl", "annotations": files[0].name}
    elif to_format == "webdataset":
        files = write_shards([*captions, *questions], out_dir, shard_size)
        config = {"dataset": "webdataset", "annotations": "."}
    else:
        raise DataError(f"convert: unknown target format {to_format!r}; expected one of {', '.join(TARGETS)}")
    return {"files": [str(path) for path in files], "config": {"root": str(out_dir), **config}}


# --- COCO captions -------------------------------------------------------------------------------


def write_coco_captions(captions: list[CaptionRecord], out_dir: str | Path, name: str = "captions.json") -> Path:
    """out_dir/captions.json in the COCO captions schema, file names relative to out_dir/images.

    Images without captions are written too (COCO allows them; retrieval galleries need them).
    """
    if not any(record.captions for record in captions):
        raise DataError(f"{out_dir}: the input has no captions to write as COCO captions")
    out_dir = Path(out_dir)
    file_names = _place_images(_image_paths(captions), out_dir)
    pairs = [(record.image_id, caption) for record in captions for caption in record.captions]
    annotations = [{"id": index + 1, "image_id": image_id, "caption": caption}
                   for index, (image_id, caption) in enumerate(pairs)]
    data = {
        "info": {"description": "written by vislm data convert"},
        "licenses": [],
        "images": [{"id": image_id, "file_name": file_name} for image_id, file_name in file_names.items()],
        "annotations": annotations,
    }
    return _write_json(out_dir / name, data)


# --- VQAv2 ---------------------------------------------------------------------------------------

# VQAv2 files name images by id only, so the readers need one file pattern for all
# images; PNG is lossless, so re-encoding other formats into it loses nothing.
VQAV2_SUFFIX = ".png"


def write_vqav2(questions: list[VQARecord], out_dir: str | Path, split: str = "train") -> tuple[Path, Path]:
    """out_dir/questions.json and annotations.json in the VQAv2 schema; images as images/<id>.png."""
    if not questions:
        raise DataError(f"{out_dir}: the input has no questions to write as VQAv2")
    out_dir = Path(out_dir)
    ids = Counter(record.question_id for record in questions)
    repeated = [question_id for question_id, count in ids.items() if count > 1]
    if repeated:
        raise DataError(
            f"{out_dir}: question id {repeated[0]} appears {ids[repeated[0]]} times; VQAv2 needs unique ids"
        )
    _place_images(_image_paths(questions), out_dir, suffix=VQAV2_SUFFIX)
    header = {"info": {"description": "written by vislm data convert"}, "data_type": "vislm", "data_subtype": split,
              "license": {}}
    question_file = _write_json(out_dir / "questions.json", {
        **header, "task_type": "Open-Ended",
        "questions": [{"image_id": r.image_id, "question": r.question, "question_id": r.question_id}
                      for r in questions],
    })
    annotation_file = _write_json(out_dir / "annotations.json", {
        **header, "annotations": [_vqav2_annotation(record) for record in questions],
    })
    return question_file, annotation_file


def _vqav2_annotation(record: VQARecord) -> dict[str, Any]:
    if not record.answers:
        raise DataError(f"{record.image_path}: question id {record.question_id} has no answers to write")
    most_common = Counter(record.answers).most_common(1)[0][0]
    return {
        "question_id": record.question_id,
        "image_id": record.image_id,
        "question_type": record.question_type,
        "answer_type": record.answer_type,
        "multiple_choice_answer": record.multiple_choice_answer or most_common,
        "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": index + 1}
                    for index, answer in enumerate(record.answers)],
    }


# --- JSONL ---------------------------------------------------------------------------------------


def write_jsonl(captions: list[CaptionRecord], questions: list[VQARecord], out_dir: str | Path,
                name: str = "data.jsonl") -> Path:
    """One line per image (with its captions, if any), then one line per question.

    Captions and answers are written as lists, which the JSONL reader keeps as given.
    """
    out_dir = Path(out_dir)
    if not captions and not questions:
        raise DataError(f"{out_dir}: the input has no records to write")
    file_names = _place_images(_image_paths([*captions, *questions]), out_dir)
    lines = []
    for record in captions:
        line: dict[str, Any] = {"image": f"{IMAGES}/{file_names[record.image_id]}", "image_id": record.image_id}
        if record.captions:
            line["caption"] = record.captions
        lines.append(line)
    for record in questions:
        line = {"image": f"{IMAGES}/{file_names[record.image_id]}", "image_id": record.image_id,
                "question_id": record.question_id, "question": record.question, "answer": record.answers}
        line.update({key: value for key, value in
                     (("answer_type", record.answer_type), ("question_type", record.question_type)) if value})
        lines.append(line)
    path = out_dir / name
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path


# --- Images --------------------------------------------------------------------------------------


def _image_paths(records: list[CaptionRecord | VQARecord]) -> dict[int, Path]:
    """image id -> source file, refusing one id for two different files."""
    paths: dict[int, Path] = {}
    for record in records:
        known = paths.setdefault(record.image_id, Path(record.image_path))
        if known != Path(record.image_path):
            raise DataError(f"{record.image_path}: image id {record.image_id} also names {known}; ids must be unique")
    return paths


def _place_images(image_paths: dict[int, Path], out_dir: Path, suffix: str | None = None) -> dict[int, str]:
    """Copy each image to out_dir/images/<id><suffix> (its own suffix by default); id -> file name."""
    image_dir = out_dir / IMAGES
    image_dir.mkdir(parents=True, exist_ok=True)
    names = {}
    for image_id, source in image_paths.items():
        own_suffix = source.suffix.lower() or ".png"
        name = f"{image_id}{suffix or own_suffix}"
        target = image_dir / name
        names[image_id] = name
        if target.exists() and target.resolve() == source.resolve():
            continue  # converting a folder into itself: the image is already in place
        if suffix and own_suffix != suffix:
            load_image(source).save(target)  # the format follows the target's suffix
            continue
        try:
            shutil.copyfile(source, target)
        except FileNotFoundError:
            raise DataError(f"{source}: image file not found (image id {image_id})") from None
    return names


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path
