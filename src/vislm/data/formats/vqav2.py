"""Read VQAv2-style question and annotation files into plain records.

VQAv2 ships questions and answers in two files joined by question_id; the answers
file is absent for test-dev, so it is optional here. Image ids are turned into
paths by a caller-supplied mapping, because each dataset lays its images out
differently (COCO: by file name; the shapes world: via its captions file).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vislm.data.formats._json import get_field, read_json_object, record_at, top_level_list
from vislm.errors import DataError

ImagePathFor = Callable[[int], Path] | Mapping[int, Path]


@dataclass
class VQARecord:
    question_id: int
    image_id: int
    image_path: Path
    question: str
    answers: list[str]
    multiple_choice_answer: str | None
    answer_type: str | None
    question_type: str | None


@dataclass
class _Annotation:
    image_id: int
    answers: list[str]
    multiple_choice_answer: str | None
    answer_type: str | None
    question_type: str | None


def read_vqav2(
    questions_file: str | Path,
    annotations_file: str | Path | None = None,
    *,
    image_path_for: ImagePathFor,
    check_files: bool = True,
) -> list[VQARecord]:
    """One record per question, in questions-file order.

    image_path_for maps an image id to its file: a dict (e.g. from coco_image_paths)
    or a function. Without an annotations file, answers are empty and the
    answer fields are None.
    """
    questions_path = Path(questions_file)
    questions = _read_questions(questions_path)
    annotations = _read_annotations(Path(annotations_file), questions, questions_path) if annotations_file else {}

    records = []
    for question_id, (image_id, question) in questions.items():
        image_path = _resolve_image(image_path_for, image_id, question_id, questions_path)
        if check_files and not image_path.is_file():
            raise DataError(f"{questions_path}: image file for image id {image_id} not found: {image_path}")
        annotation = annotations.get(question_id)
        records.append(
            VQARecord(
                question_id=question_id,
                image_id=image_id,
                image_path=image_path,
                question=question,
                answers=annotation.answers if annotation else [],
                multiple_choice_answer=annotation.multiple_choice_answer if annotation else None,
                answer_type=annotation.answer_type if annotation else None,
                question_type=annotation.question_type if annotation else None,
            )
        )
    return records


def _read_questions(path: Path) -> dict[int, tuple[int, str]]:
    """question_id -> (image_id, question text), in file order."""
    items = top_level_list(read_json_object(path, "questions file"), "questions", path)
    questions: dict[int, tuple[int, str]] = {}
    for index in range(len(items)):
        where = f"questions[{index}]"
        record = record_at(items, index, "questions", path)
        question_id = get_field(record, "question_id", int, where, path)
        image_id = get_field(record, "image_id", int, where, path)
        question = get_field(record, "question", str, where, path).strip()
        if not question:
            raise DataError(f"{path}: question id {question_id} has an empty question")
        if question_id in questions:
            raise DataError(f"{path}: {where} repeats question id {question_id}")
        questions[question_id] = (image_id, question)
    return questions


def _read_annotations(
    path: Path, questions: dict[int, tuple[int, str]], questions_path: Path
) -> dict[int, _Annotation]:
    """question_id -> answers, checked against the questions they answer."""
    items = top_level_list(read_json_object(path, "annotations file"), "annotations", path)
    annotations: dict[int, _Annotation] = {}
    for index in range(len(items)):
        where = f"annotations[{index}]"
        record = record_at(items, index, "annotations", path)
        question_id = get_field(record, "question_id", int, where, path)
        image_id = get_field(record, "image_id", int, where, path)
        if question_id not in questions:
            raise DataError(f"{path}: {where} has question_id {question_id}, which is not in {questions_path}")
        if question_id in annotations:
            raise DataError(f"{path}: {where} repeats question_id {question_id}")
        question_image_id = questions[question_id][0]
        if image_id != question_image_id:
            raise DataError(
                f"{path}: {where} (question_id {question_id}) has image_id {image_id}"
                f" but the question has image_id {question_image_id}"
            )
        annotations[question_id] = _Annotation(
            image_id=image_id,
            answers=_answers(record, where, path),
            multiple_choice_answer=get_field(record, "multiple_choice_answer", str, where, path, optional=True),
            answer_type=get_field(record, "answer_type", str, where, path, optional=True),
            question_type=get_field(record, "question_type", str, where, path, optional=True),
        )
    for question_id in questions:
        if question_id not in annotations:
            raise DataError(f"{path}: no annotation for question_id {question_id} (from {questions_path})")
    return annotations


def _answers(record: dict, where: str, path: Path) -> list[str]:
    items = get_field(record, "answers", list, where, path)
    if not items:
        raise DataError(f"{path}: {where} has no answers")
    answers = []
    for index in range(len(items)):
        answer_where = f"{where}.answers[{index}]"
        answer = record_at(items, index, f"{where}.answers", path)
        answers.append(get_field(answer, "answer", str, answer_where, path).strip())
    return answers


def _resolve_image(image_path_for: ImagePathFor, image_id: int, question_id: int, path: Path) -> Path:
    try:
        if isinstance(image_path_for, Mapping):
            return Path(image_path_for[image_id])
        return Path(image_path_for(image_id))
    except KeyError:
        raise DataError(
            f"{path}: question id {question_id} refers to image_id {image_id}, which has no image"
        ) from None
