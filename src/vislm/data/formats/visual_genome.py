"""Read Visual Genome (v1.0 / v1.2) as captioned images and question-answer pairs.

Files, all lists at the top level, as downloaded:
  image_data.json           [{"image_id" (v1.2) or "id" (v1.0), "url", "width", "height", ...}]
  region_descriptions.json  [{"id": image id, "regions": [{"region_id", "image_id", "phrase", "x", ...}]}]
  question_answers.json     [{"id": image id, "qas": [{"qa_id", "image_id", "question", "answer", ...}]}]
Images live in VG_100K/ or VG_100K_2/; the "url" says which.

Conventions (Visual Genome has no official split and one answer per question):
- region phrases become the image's captions, in file order; empty phrases are skipped
  (the release has a few) rather than failing a 5-million-region file;
- each answer becomes a normalised ten-answer set (single_answer_set, _json.py), so VQAv2
  soft scoring gives exact match; multiple_choice_answer is the answer as published;
- question_type is the question's "W" word (what, where, when, who, why, how, which),
  the categories Visual Genome reports its QA statistics by; answer_type is None.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from vislm.data.formats._json import (
    get_field,
    read_json_list,
    record_at,
    relative_file_name,
    single_answer_set,
)
from vislm.data.formats.coco import CaptionRecord
from vislm.data.formats.vqav2 import VQARecord
from vislm.errors import DataError

IMAGE_FOLDERS = ("VG_100K", "VG_100K_2")
W_WORDS = ("what", "where", "when", "who", "why", "how", "which")


def read_visual_genome(
    image_data_file: str | Path,
    region_descriptions_file: str | Path | None = None,
    question_answers_file: str | Path | None = None,
    image_root: str | Path | None = None,
    check_files: bool = True,
) -> tuple[list[CaptionRecord], list[VQARecord]]:
    """Every image (captions from its regions, possibly none) and every question.

    image_root defaults to the folder of image_data.json, which is where the
    VG_100K folders sit in the usual layout.
    """
    image_data_path = Path(image_data_file)
    image_root = Path(image_root) if image_root is not None else image_data_path.parent
    image_paths = _image_paths(image_data_path, image_root)
    captions: dict[int, list[str]] = {image_id: [] for image_id in image_paths}
    if region_descriptions_file is not None:
        _add_region_phrases(Path(region_descriptions_file), captions, image_data_path)
    questions = []
    if question_answers_file is not None:
        questions = _questions(Path(question_answers_file), image_paths, image_data_path)

    if check_files:
        for image_id, image_path in image_paths.items():
            if not image_path.is_file():
                raise DataError(f"{image_data_path}: image file for image id {image_id} not found: {image_path}")
    records = [CaptionRecord(image_id, path, captions[image_id]) for image_id, path in image_paths.items()]
    return records, questions


def _image_paths(path: Path, image_root: Path) -> dict[int, Path]:
    items = read_json_list(path, "image data file")
    paths: dict[int, Path] = {}
    for index in range(len(items)):
        where = f"[{index}]"
        record = record_at(items, index, "", path)
        # v1.2 calls the id "image_id", v1.0 "id".
        key = "image_id" if "image_id" in record else "id"
        image_id = get_field(record, key, int, where, path)
        if image_id in paths:
            raise DataError(f"{path}: {where} repeats image id {image_id}")
        url = get_field(record, "url", str, where, path, optional=True)
        paths[image_id] = image_root / _relative_image_path(image_id, url, image_root, where, path)
    return paths


def _relative_image_path(image_id: int, url: str | None, image_root: Path, where: str, path: Path) -> Path:
    """VG_100K*/<name> from the url's last two parts; else whichever folder holds {id}.jpg."""
    if url:
        parts = PurePosixPath(urlparse(url).path).parts
        if len(parts) >= 2 and parts[-2] in IMAGE_FOLDERS:
            return Path(parts[-2]) / relative_file_name(parts[-1], where, path, "url")
    for folder in IMAGE_FOLDERS:
        candidate = Path(folder) / f"{image_id}.jpg"
        if (image_root / candidate).is_file():
            return candidate
    return Path(IMAGE_FOLDERS[0]) / f"{image_id}.jpg"


def _add_region_phrases(path: Path, captions: dict[int, list[str]], image_data_path: Path) -> None:
    items = read_json_list(path, "region descriptions file")
    for index in range(len(items)):
        where = f"[{index}]"
        entry = record_at(items, index, "", path)
        image_id = get_field(entry, "id", int, where, path)
        if image_id not in captions:
            raise DataError(f"{path}: {where} has image id {image_id}, which is not in {image_data_path}")
        regions = get_field(entry, "regions", list, where, path)
        for region_index in range(len(regions)):
            region_where = f"{where}.regions[{region_index}]"
            region = record_at(regions, region_index, f"{where}.regions", path)
            phrase = get_field(region, "phrase", str, region_where, path).strip()
            if phrase:
                captions[image_id].append(phrase)


def _questions(path: Path, image_paths: dict[int, Path], image_data_path: Path) -> list[VQARecord]:
    items = read_json_list(path, "question answers file")
    records: list[VQARecord] = []
    seen_ids: set[int] = set()
    for index in range(len(items)):
        where = f"[{index}]"
        entry = record_at(items, index, "", path)
        image_id = get_field(entry, "id", int, where, path)
        if image_id not in image_paths:
            raise DataError(f"{path}: {where} has image id {image_id}, which is not in {image_data_path}")
        qas = get_field(entry, "qas", list, where, path)
        for qa_index in range(len(qas)):
            qa_where = f"{where}.qas[{qa_index}]"
            qa = record_at(qas, qa_index, f"{where}.qas", path)
            question_id = get_field(qa, "qa_id", int, qa_where, path)
            if question_id in seen_ids:
                raise DataError(f"{path}: {qa_where} repeats qa_id {question_id}")
            seen_ids.add(question_id)
            question = get_field(qa, "question", str, qa_where, path).strip()
            answer = get_field(qa, "answer", str, qa_where, path).strip()
            if not question or not answer:
                raise DataError(f"{path}: {qa_where} (qa_id {question_id}) has an empty question or answer")
            records.append(
                VQARecord(
                    question_id=question_id,
                    image_id=image_id,
                    image_path=image_paths[image_id],
                    question=question,
                    answers=single_answer_set(answer),
                    multiple_choice_answer=answer,
                    answer_type=None,
                    question_type=_w_word(question),
                )
            )
    return records


def _w_word(question: str) -> str | None:
    first = question.split()[0].lower().strip("?,.")
    return first if first in W_WORDS else None
