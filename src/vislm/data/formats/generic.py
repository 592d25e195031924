"""Read home-made data: CSV or JSONL tables of images with captions or questions, or a folder of images.

A row names an image (relative to the table's folder, or to image_root) and carries
either a caption, or a question and its answer, or nothing (an image-only row, e.g.
a gallery to search). Column names default to COLUMNS and can be renamed:

    image,caption                      {"image": "a.jpg", "caption": "a red square"}
    image,question,answer              {"image": "a.jpg", "question": "what colour?", "answer": "red"}

Optional columns: image_id (default: stable_image_id of the path, the same in every
split), question_id (default: the row's position), answer_type, question_type. In JSONL
a caption may be a list of captions and an answer a list of human answers (kept as
given, like VQAv2); a single answer becomes a normalised ten-answer set (single_answer_set, _json.py).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vislm.data.formats._json import (
    check_unique_ids,
    json_type,
    relative_file_name,
    single_answer_set,
    stable_image_id,
)
from vislm.data.formats.coco import CaptionRecord
from vislm.data.formats.vqav2 import VQARecord
from vislm.errors import ConfigError, DataError

COLUMNS = ("image", "caption", "question", "answer", "image_id", "question_id", "answer_type", "question_type")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

Records = tuple[list[CaptionRecord], list[VQARecord]]


def column_names(renames: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our column -> the file's column name: COLUMNS, with `renames` (e.g. {"caption": "text"})."""
    names = {column: column for column in COLUMNS}
    for ours, theirs in (renames or {}).items():
        if ours not in names:
            raise ConfigError(f"data.columns: unknown column {ours!r}; expected one of {', '.join(COLUMNS)}")
        names[ours] = theirs
    return names


def read_csv(
    path: str | Path, columns: Mapping[str, str] | None = None, image_root: str | Path | None = None,
    check_files: bool = True,
) -> Records:
    """Captioned images and questions from a CSV file with a header row (UTF-8, BOM allowed)."""
    path = Path(path)
    names = column_names(columns)
    return _Table(path, names, image_root).read(_csv_rows(path, names), check_files)


def read_jsonl(
    path: str | Path, columns: Mapping[str, str] | None = None, image_root: str | Path | None = None,
    check_files: bool = True,
) -> Records:
    """Captioned images and questions from a JSON Lines file (one object per line)."""
    path = Path(path)
    return _Table(path, column_names(columns), image_root).read(_jsonl_rows(path), check_files)


def read_folder(folder: str | Path) -> list[CaptionRecord]:
    """Every image file under `folder` (recursively, sorted, hidden files skipped), without captions.

    Symbolic links are followed only where they stay inside the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    resolved_root = folder.resolve()
    records = []
    names: dict[int, str] = {}
    for path in _image_files(folder):
        relative = path.relative_to(folder)
        if not path.resolve().is_relative_to(resolved_root):
            raise DataError(f"{path}: a link that leaves the image folder {folder}; copy the image in instead")
        image_id = stable_image_id(relative)
        check_unique_ids(names, image_id, relative.as_posix(), folder)
        records.append(CaptionRecord(image_id, path, []))
    if not records:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return records


def _image_files(folder: Path) -> list[Path]:
    found = []
    # os.walk does not descend into linked folders, so a link cannot loop or leave the tree.
    for directory, subfolders, files in os.walk(folder):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                found.append(Path(directory) / name)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


# --- Rows ----------------------------------------------------------------------------------------


def _csv_rows(path: Path, names: dict[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) pairs; empty cells are absent keys, so CSV and JSONL rows look alike."""
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            if names["image"] not in header:
                raise DataError(f"{path}: the header has no {names['image']!r} column (columns: {', '.join(header)})")
            for row in reader:
                where = f"line {reader.line_num}"
                if None in row:
                    raise DataError(f"{path}: {where} has more fields than the header")
                yield where, {key: value for key, value in row.items() if value not in ("", None)}
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise DataError(f"{path}: malformed CSV ({error})") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if not path.is_file():
        raise DataError(f"{path}: JSONL file not found")
    try:
        with path.open("r", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"line {number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}: {where}: invalid JSON at column {error.colno} ({error.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}: {where} must be a JSON object, got {json_type(row)}")
                yield where, {key: value for key, value in row.items() if value is not None}
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


# --- Rows -> records -----------------------------------------------------------------------------


class _Table:
    """Turns rows (from CSV or JSONL) into records; one instance per file."""

    def __init__(self, path: Path, names: dict[str, str], image_root: str | Path | None) -> None:
        self.path = path
        self.names = names
        self.image_root = Path(image_root) if image_root is not None else path.parent

    def read(self, rows: Iterator[tuple[str, dict[str, Any]]], check_files: bool) -> Records:
        images: dict[int, CaptionRecord] = {}  # captioned and image-only rows, by first appearance
        image_names: dict[int, str] = {}
        questions: list[VQARecord] = []
        question_ids: set[int] = set()
        for position, (where, row) in enumerate(rows):
            image_id, image_path = self._image(row, where, image_names)
            if check_files and not image_path.is_file():
                raise DataError(f"{self.path}: {where}: image file not found: {image_path}")
            captions = self._texts(row, "caption", where)
            question = self._text(row, "question", where)
            if question is not None:
                record = self._question(row, where, position, image_id, image_path, question)
                if record.question_id in question_ids:
                    raise DataError(f"{self.path}: {where} repeats question id {record.question_id}")
                question_ids.add(record.question_id)
                questions.append(record)
            if captions or question is None:
                images.setdefault(image_id, CaptionRecord(image_id, image_path, [])).captions.extend(captions)
        return list(images.values()), questions

    def _image(self, row: dict, where: str, image_names: dict[int, str]) -> tuple[int, Path]:
        name = self._text(row, "image", where)
        if name is None:
            raise DataError(f"{self.path}: {where} has no {self.names['image']!r}")
        relative = relative_file_name(name, where, self.path, self.names["image"])
        image_id = self._integer(row, "image_id", where)
        if image_id is None:
            image_id = stable_image_id(relative)
        check_unique_ids(image_names, image_id, relative.as_posix(), self.path)
        return image_id, self.image_root / relative

    def _question(self, row: dict, where: str, position: int, image_id: int, image_path: Path,
                  question: str) -> VQARecord:
        answers = self._texts(row, "answer", where)
        if not answers:
            raise DataError(f"{self.path}: {where} has a question but no {self.names['answer']!r}")
        single = len(answers) == 1
        question_id = self._integer(row, "question_id", where)
        return VQARecord(
            question_id=position if question_id is None else question_id,
            image_id=image_id,
            image_path=image_path,
            question=question,
            answers=single_answer_set(answers[0]) if single else answers,
            multiple_choice_answer=answers[0] if single else _most_common(answers),
            answer_type=self._text(row, "answer_type", where),
            question_type=self._text(row, "question_type", where),
        )

    def _text(self, row: dict, column: str, where: str) -> str | None:
        """A stripped, non-empty string, or None when the cell is absent or blank."""
        name = self.names[column]
        if name not in row:
            return None
        value = row[name]
        if not isinstance(value, str):
            raise DataError(f"{self.path}: {where}.{name} must be a string, got {json_type(value)}")
        return value.strip() or None

    def _texts(self, row: dict, column: str, where: str) -> list[str]:
        """One string, or (JSONL) a list of strings; blank entries are dropped."""
        name = self.names[column]
        value = row.get(name)
        if isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                raise DataError(f"{self.path}: {where}.{name} must be a string or a list of strings")
            return [item.strip() for item in value if item.strip()]
        text = self._text(row, column, where)
        return [text] if text is not None else []

    def _integer(self, row: dict, column: str, where: str) -> int | None:
        name = self.names[column]
        if name not in row:
            return None
        value = row[name]
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)  # CSV cells are always text
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise DataError(f"{self.path}: {where}.{name} must be an integer, got {value!r}")


def _most_common(answers: list[str]) -> str:
    """The most frequent answer; ties go to the one given first."""
    return max(answers, key=lambda answer: (answers.count(answer), -answers.index(answer)))
