"""Helpers shared by every reader in this package.

The JSON helpers turn every way a JSON file can be wrong into a one-line DataError
that names the file, the record and the field. The path helpers keep file names
found inside data files inside their data root. The rest settle conventions that
formats without numeric image ids or with one answer per question share.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from vislm.errors import DataError
from vislm.metrics.vqa import normalize_answer

# Python type -> the word used in error messages.
_TYPE_WORDS = {int: "an integer", str: "a string", list: "a list", dict: "an object", float: "a number"}

# Answers of single-answer data sets (Visual Genome, easy-VQA, VQA-RAD, CSV/JSONL rows) are
# repeated to this many, the size of a VQAv2 answer set: the VQAv2 soft score of an answer
# given by only one "human" is 0, while ten identical answers make it 1, so soft targets and
# the official accuracy both reduce to exact match.
SINGLE_ANSWER_REPEATS = 10


# --- JSON ----------------------------------------------------------------------------------------


def read_json(path: str | Path, what: str = "annotation file") -> Any:
    """Parse a JSON file of any shape; missing, unreadable or invalid files are DataErrors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        with path.open("r", encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: invalid JSON at line {error.lineno} column {error.colno} ({error.msg})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def read_json_object(path: str | Path, what: str = "annotation file") -> dict[str, Any]:
    """Parse a JSON file whose top level must be an object."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object at the top level, got {json_type(data)}")
    return data


def read_json_list(path: str | Path, what: str = "annotation file") -> list[Any]:
    """Parse a JSON file whose top level must be a list (Visual Genome, VQA-RAD)."""
    data = read_json(path, what)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list at the top level, got {json_type(data)}")
    return data


def top_level_list(data: dict[str, Any], key: str, path: Path) -> list[Any]:
    """The list stored under a required top-level key."""
    if key not in data:
        raise DataError(f"{path}: missing top-level key '{key}'")
    value = data[key]
    if not isinstance(value, list):
        raise DataError(f"{path}: top-level key '{key}' must be a list, got {json_type(value)}")
    return value


def record_at(items: list[Any], index: int, where: str, path: Path) -> dict[str, Any]:
    """items[index], which must be a JSON object; `where` is e.g. 'images'."""
    record = items[index]
    if not isinstance(record, dict):
        raise DataError(f"{path}: {where}[{index}] must be an object, got {json_type(record)}")
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
        raise DataError(f"{path}: {where}.{name} must be {_TYPE_WORDS[expected]}, got {json_type(value)}")
    return value


def _has_type(value: Any, expected: type) -> bool:
    # JSON true/false arrive as bool, which Python counts as int: reject them as ids.
    if isinstance(value, bool):
        return False
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def json_type(value: Any) -> str:
    """How a JSON value's type is named in error messages."""
    names = {bool: "a boolean", type(None): "null", dict: "an object", list: "a list", str: "a string"}
    for python_type, name in names.items():
        if isinstance(value, python_type):
            return name
    return "a number"


# --- Paths and ids -------------------------------------------------------------------------------


def relative_file_name(file_name: str, where: str, path: Path, field: str = "file_name") -> PurePath:
    """A file name that stays inside its image directory (no absolute paths, no '..').

    `where` and `field` name the record and field in the error, e.g. 'row 3' and 'image'.
    Both separators count, so a Windows-style 'a\\..\\b' cannot slip through on Linux.
    """
    parts = PurePosixPath(file_name.replace("\\", "/")).parts
    relative = PurePath(file_name)
    if not file_name.strip() or relative.is_absolute() or file_name.startswith(("/", "\\")) or ".." in parts:
        raise DataError(
            f"{path}: {where}.{field} must be a relative path inside the image directory, got {file_name!r}"
        )
    return relative


def stable_image_id(relative_name: str | PurePath) -> int:
    """A numeric id for an image that a format names only by file (CSV, JSONL, folders, VQA-RAD).

    Derived from the relative path, so it is the same in every split and every run and
    survives moving the data root. 48 bits: exact in JSON numbers (< 2**53) and int64
    tensors; collisions are checked by the callers (one in ~10**5 for a million images).
    """
    digest = hashlib.sha1(PurePath(relative_name).as_posix().encode("utf-8")).digest()
    return int.from_bytes(digest[:6], "big")


def single_answer_set(answer: str) -> list[str]:
    """One published answer as a VQAv2-style answer set: SINGLE_ANSWER_REPEATS copies, normalised.

    Normalised as the VQA metric normalises predictions (VQAv2's released answers already
    are): the official accuracy compares human answers raw, so "Yes" or "Green." would
    never match a prediction. Readers keep the published text in multiple_choice_answer.
    """
    return [normalize_answer(answer) or answer.strip()] * SINGLE_ANSWER_REPEATS


def check_unique_ids(id_to_name: dict[int, str], image_id: int, name: str, path: Path) -> None:
    """Record image_id -> name, refusing a second, different name for the same id."""
    known = id_to_name.setdefault(image_id, name)
    if known != name:
        raise DataError(f"{path}: image id {image_id} is shared by {known!r} and {name!r}")
