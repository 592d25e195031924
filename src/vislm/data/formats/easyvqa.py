"""Read easy-VQA (synthetic shapes; `pip install easy-vqa`) from the installed package.

The package ships 4,000 train and 1,000 test images (PNG) with 38,575 and 9,673
questions, one answer each out of 13. It has no val split: tasks/data.py can carve
one from train (data.val_holdout), by image, with a seed.

Conventions: image ids are the package's (they restart at 0 in each split, so ids are
unique within a split only); question ids are positions in the split's question list;
each answer becomes a normalised ten-answer set (single_answer_set, _json.py); answer_type is
"yes/no", "shape" or "color", so accuracy can be reported per kind of question.
"""

from __future__ import annotations

import json
from pathlib import Path

from vislm.data.formats._json import single_answer_set
from vislm.data.formats.vqav2 import VQARecord
from vislm.errors import DataError

SPLITS = ("train", "test")
_SHAPES = {"circle", "rectangle", "triangle"}


def read_easyvqa(split: str, check_files: bool = True) -> list[VQARecord]:
    """One record per question of `split` ("train" or "test"), in the package's order."""
    if split not in SPLITS:
        raise DataError(
            f"easy-VQA: unknown split {split!r}; expected train or test"
            " (set data.val_holdout to carve a val split from train)"
        )
    package = _package()
    questions_file = Path(package.__file__).parent / "data" / split / "questions.json"  # named in errors
    texts, answers, image_ids, image_paths, known_answers = _load(package, split, questions_file)
    if not len(texts) == len(answers) == len(image_ids):
        raise DataError(
            f"{questions_file}: {len(texts)} questions but {len(answers)} answers and {len(image_ids)} image ids"
        )

    records = []
    for index, (question, answer, image_id) in enumerate(zip(texts, answers, image_ids)):
        where = f"{questions_file}: [{index}]"
        if not isinstance(question, str) or not isinstance(answer, str) or not _is_id(image_id):
            raise DataError(f"{where} must be [question string, answer string, integer image id]")
        if answer not in known_answers:
            raise DataError(f"{where} has answer {answer!r}, which is not in the package's answers.txt")
        if image_id not in image_paths:
            raise DataError(f"{where} refers to image id {image_id}, which has no image in the {split} split")
        image_path = Path(image_paths[image_id])
        if check_files and not image_path.is_file():
            raise DataError(f"{where}: image file for image id {image_id} not found: {image_path}")
        records.append(
            VQARecord(
                question_id=index,
                image_id=image_id,
                image_path=image_path,
                question=question.strip(),
                answers=single_answer_set(answer),
                multiple_choice_answer=answer,
                answer_type=_answer_type(answer),
                question_type=None,
            )
        )
    return records


def _package():
    try:
        import easy_vqa
    except ImportError:
        raise DataError("easy-VQA: the easy_vqa package is not installed (pip install easy-vqa)") from None
    return easy_vqa


def _load(package, split: str, questions_file: Path):
    """The package's questions, answers, image ids, image paths and answer list.

    The package reads its JSON and lists its folders itself; its raw errors are turned
    into one-line DataErrors naming the file.
    """
    try:
        if split == "train":
            texts, answers, image_ids = package.get_train_questions()
            image_paths = package.get_train_image_paths()
        else:
            texts, answers, image_ids = package.get_test_questions()
            image_paths = package.get_test_image_paths()
        known_answers = set(package.get_answers())
    except OSError as error:
        raise DataError(f"{error.filename or questions_file}: easy-VQA data not found ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{questions_file}: invalid JSON at line {error.lineno} column {error.colno}") from None
    except (TypeError, IndexError, ValueError) as error:
        raise DataError(f"{questions_file}: malformed easy-VQA data ({type(error).__name__}: {error})") from None
    return texts, answers, image_ids, image_paths, known_answers


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _answer_type(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    return "shape" if answer in _SHAPES else "color"
