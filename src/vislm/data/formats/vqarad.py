"""Read VQA-RAD (radiology VQA; Lau et al. 2018) in its Med-VQA train/test form.

Layout of the data root: images/*.jpg, trainset.json, testset.json (3,064 and 451
questions over 315 images). Each file is a list of {"qid", "image_name", "image_organ",
"question", "answer", "answer_type", "question_type", "phrase_type"}.

The data is never copied into the repository: the default root is
<repository>/../shared/data/vqa_rad, found from this file's location (or the working
directory); any other copy is given as data.root.

Conventions: answer_type ("CLOSED"/"OPEN", a few with a trailing space) is stripped and
kept, so evaluation can report OPEN and CLOSED accuracy; ten answers are integers (counts)
and become strings; each answer becomes a normalised ten-answer set (single_answer_set,
_json.py; the published text stays in multiple_choice_answer);
image ids come from the image file name (stable_image_id), so they agree across splits.
"""

from __future__ import annotations

from pathlib import Path

from vislm.data.formats._json import (
    check_unique_ids,
    get_field,
    json_type,
    read_json_list,
    record_at,
    relative_file_name,
    single_answer_set,
    stable_image_id,
)
from vislm.data.formats.vqav2 import VQARecord
from vislm.errors import DataError

SPLITS = ("train", "test")
_SHARED_LOCATION = Path("shared") / "data" / "vqa_rad"


def default_vqarad_root() -> Path | None:
    """../shared/data/vqa_rad next to the repository holding this package, if it exists."""
    here = Path(__file__).resolve()
    # The repository root is the first parent with a pyproject.toml; the working
    # directory is a fallback for installed (non-editable) copies of the package.
    for start in (*here.parents, Path.cwd().resolve()):
        if (start / "pyproject.toml").is_file():
            candidate = start.parent / _SHARED_LOCATION
            if candidate.is_dir():
                return candidate
    return None


def read_vqarad(root: str | Path, split: str, check_files: bool = True) -> list[VQARecord]:
    """One record per question of `split` ("train" or "test"), in file order."""
    root = Path(root)
    path = root / f"{split}set.json"
    if split not in SPLITS:
        raise DataError(f"{root}: unknown VQA-RAD split {split!r}; expected train or test"
                        " (set data.val_holdout to carve a val split from train)")
    items = read_json_list(path, "VQA-RAD question file")
    image_names: dict[int, str] = {}
    seen_ids: set[int] = set()
    records = []
    for index in range(len(items)):
        where = f"[{index}]"
        item = record_at(items, index, "", path)
        question_id = get_field(item, "qid", int, where, path)
        if question_id in seen_ids:
            raise DataError(f"{path}: {where} repeats qid {question_id}")
        seen_ids.add(question_id)
        image_name = get_field(item, "image_name", str, where, path)
        relative = relative_file_name(image_name, where, path, "image_name")
        image_id = stable_image_id(relative)
        check_unique_ids(image_names, image_id, image_name, path)
        image_path = root / "images" / relative
        if check_files and not image_path.is_file():
            raise DataError(f"{path}: {where} (qid {question_id}) image file not found: {image_path}")
        answer = _answer(item, where, path)
        question = get_field(item, "question", str, where, path).strip()
        if not question:
            raise DataError(f"{path}: {where} (qid {question_id}) has an empty question")
        records.append(
            VQARecord(
                question_id=question_id,
                image_id=image_id,
                image_path=image_path,
                question=question,
                answers=single_answer_set(answer),
                multiple_choice_answer=answer,
                answer_type=get_field(item, "answer_type", str, where, path).strip(),
                question_type=_optional_text(item, "question_type", where, path),
            )
        )
    return records


def _answer(item: dict, where: str, path: Path) -> str:
    """The answer as text: counting questions have integer answers in the release."""
    if "answer" not in item:
        raise DataError(f"{path}: {where} is missing field 'answer'")
    value = item["answer"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{path}: {where}.answer must be a string or an integer, got {json_type(value)}")
    answer = str(value).strip()
    if not answer:
        raise DataError(f"{path}: {where} has an empty answer")
    return answer


def _optional_text(item: dict, name: str, where: str, path: Path) -> str | None:
    value = get_field(item, name, str, where, path, optional=True)
    return value.strip() if value is not None else None
