"""Read COCO-style caption annotations into plain records.

The JSON helpers at the top are shared by the other readers in this package
(VQAv2, the shapes-world scenes): they turn every way a JSON file can be wrong
into a one-line DataError that names the file, the record and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from vislm.errors import DataError

# Python type -> the word used in error messages.
_TYPE_WORDS = {int: "an integer", str: "a string", list: "a list", dict: "an object", float: "a number"}


def read_json_object(path: str | Path, what: str = "annotation file") -> dict[str, Any]:
    """Parse a JSON file whose top level must be an object."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        with path.open("r", encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: invalid JSON at line {error.lineno} column {error.colno} ({error.msg})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object at the top level, got {_json_type(data)}")
    return data


def top_level_list(data: dict[str, Any], key: str, path: Path) -> list[Any]:
    """The list stored under a required top-level key."""
    if key not in data:
        raise DataError(f"{path}: missing top-level key '{key}'")
    value = data[key]
    if not isinstance(value, list):
        raise DataError(f"{path}: top-level key '{key}' must be a list, got {_json_type(value)}")
    return value


def record_at(items: list[Any], index: int, where: str, path: Path) -> dict[str, Any]:
    """items[index], which must be a JSON object; `where` is e.g. 'images'."""
    record = items[index]
    if not isinstance(record, dict):
        raise DataError(f"{path}: {where}[{index}] must be an object, got {_json_type(record)}")
    return record


def get_field(record: dict[str, Any], name: str, expected: type, where: str, path: Path, optional: bool = False) -> Any:
    """record[name] checked against `expected`; `where` names the record, e.g. 'images[3]'.

    With optional=True a missing or null field gives None instead of an error.
    """
    if name not in record or (optional and record[name] is None):
        if optional:
            return None
        raise DataError(f"{path}: {where} is missing field '{name}'")
    value = record[name]
    if not _has_type(value, expected):
        raise DataError(f"{path}: {where}.{name} must be {_TYPE_WORDS[expected]}, got {_json_type(value)}")
    return value


def _has_type(value: Any, expected: type) -> bool:
    # JSON true/false arrive as bool, which Python counts as int: reject them as ids.
    if isinstance(value, bool):
        return False
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", type(None): "null", dict: "an object", list: "a list", str: "a string"}
    for python_type, name in names.items():
        if isinstance(value, python_type):
            return name
    return "a number"


def relative_file_name(file_name: str, where: str, path: Path) -> PurePath:
    """A file name that stays inside its image directory (no absolute paths, no '..')."""
    relative = PurePath(file_name)
    if not file_name.strip() or relative.is_absolute() or ".." in relative.parts:
        raise DataError(
            f"{path}: {where}.file_name must be a relative path inside the image directory, got {file_name!r}"
        )
    return relative


# --- COCO captions -------------------------------------------------------------------------------


@dataclass
class CaptionRecord:
    image_id: int
    image_path: Path
    captions: list[str]


def coco_image_paths(annotation_file: str | Path, image_dir: str | Path) -> dict[int, Path]:
    """image id -> image path, from the "images" list of any COCO annotation file."""
    path = Path(annotation_file)
    data = read_json_object(path)
    images = top_level_list(data, "images", path)
    paths: dict[int, Path] = {}
    for index in range(len(images)):
        where = f"images[{index}]"
        record = record_at(images, index, "images", path)
        image_id = get_field(record, "id", int, where, path)
        file_name = get_field(record, "file_name", str, where, path)
        if image_id in paths:
            raise DataError(f"{path}: {where} repeats image id {image_id}")
        paths[image_id] = Path(image_dir) / relative_file_name(file_name, where, path)
    return paths


def read_coco_captions(
    annotation_file: str | Path, image_dir: str | Path, check_files: bool = True
) -> list[CaptionRecord]:
    """One record per entry of "images", in that order, with its captions in file order.

    Images without captions are kept (with an empty list) so image-only uses such as
    retrieval galleries see every image; caption datasets simply yield nothing for them.
    """
    path = Path(annotation_file)
    data = read_json_object(path)
    top_level_list(data, "annotations", path)  # checked before any per-image work
    image_paths = coco_image_paths(path, image_dir)
    captions: dict[int, list[str]] = {image_id: [] for image_id in image_paths}

    annotations = data["annotations"]
    seen_ids: set[int] = set()
    for index in range(len(annotations)):
        where = f"annotations[{index}]"
        record = record_at(annotations, index, "annotations", path)
        annotation_id = get_field(record, "id", int, where, path)
        image_id = get_field(record, "image_id", int, where, path)
        caption = get_field(record, "caption", str, where, path)
        if annotation_id in seen_ids:
            raise DataError(f"{path}: {where} repeats annotation id {annotation_id}")
        seen_ids.add(annotation_id)
        if image_id not in captions:
            raise DataError(f"{path}: annotation id {annotation_id} refers to unknown image_id {image_id}")
        # COCO captions often carry stray spaces and newlines; strip them, keep the rest verbatim.
        caption = caption.strip()
        if not caption:
            raise DataError(f"{path}: annotation id {annotation_id} has an empty caption")
        captions[image_id].append(caption)

    if check_files:
        for image_id, image_path in image_paths.items():
            if not image_path.is_file():
                raise DataError(f"{path}: image file for image id {image_id} not found: {image_path}")
    return [CaptionRecord(image_id, image_paths[image_id], captions[image_id]) for image_id in image_paths]
