"""File-level evaluation, as the CLI calls it: results files in the formats the COCO
caption and VQAv2 evaluation servers accept, scored against the official annotations.

Every problem with a file is a one-line DataError that names the file and the field.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Hashable, List, Mapping

from vislm.errors import DataError
from vislm.metrics.caption import caption_scores
from vislm.metrics.vqa import annotations_by_question, vqa_accuracy


def _load_json(path: str | os.PathLike, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: {what} path is a directory, expected a JSON file") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: {what} file is not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: {what} file is not valid JSON: {error.msg} at line "
                        f"{error.lineno} column {error.colno}") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read {what} file: {error.strerror}") from None


def _records(data: Any, path: str | os.PathLike, key: str | None) -> List[Mapping]:
    """The list of objects at data[key] (or data itself when key is None)."""
    where = f"{path}: field '{key}'" if key else f"{path}:"
    if key is not None:
        if not isinstance(data, Mapping) or key not in data:
            raise DataError(f"{path}: expected a JSON object with a '{key}' list")
        data = data[key]
    if not isinstance(data, list):
        raise DataError(f"{where} expected a list, got {type(data).__name__}")
    for index, record in enumerate(data):
        if not isinstance(record, Mapping):
            raise DataError(f"{where} item {index} should be an object, "
                            f"got {type(record).__name__}")
    return data


def _field(record: Mapping, field: str, kind: type | tuple, path, key: str | None,
           index: int) -> Any:
    item = f"{key}[{index}]" if key else f"item {index}"
    if field not in record:
        raise DataError(f"{path}: {item} has no '{field}' field")
    value = record[field]
    # bool is an int subclass; an id of `true` is a mistake, not an id.
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(f"{path}: {item}.{field} should be {names}, got {type(value).__name__}")
    return value


def _unique(pairs: List[tuple], path, id_field: str) -> Dict[Hashable, Any]:
    out: Dict[Hashable, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DataError(f"{path}: {id_field} {key!r} appears more than once")
        out[key] = value
    return out


def _prefixed(path, error: DataError) -> DataError:
    return DataError(f"{path}: {error}")


def load_caption_predictions(path) -> Dict[Hashable, str]:
    """COCO caption results: [{"image_id": ..., "caption": "..."}, ...]."""
    records = _records(_load_json(path, "caption predictions"), path, None)
    pairs = [(_field(r, "image_id", (int, str), path, None, i),
              _field(r, "caption", str, path, None, i)) for i, r in enumerate(records)]
    return _unique(pairs, path, "image_id")


def load_caption_references(path) -> Dict[Hashable, List[str]]:
    """COCO captions annotations: {"images": [{"id"}], "annotations": [{"image_id",
    "caption"}]}. Every listed image needs a caption, as pycocoevalcap assumes."""
    data = _load_json(path, "caption references")
    references: Dict[Hashable, List[str]] = {}
    for i, record in enumerate(_records(data, path, "annotations")):
        image_id = _field(record, "image_id", (int, str), path, "annotations", i)
        caption = _field(record, "caption", str, path, "annotations", i)
        references.setdefault(image_id, []).append(caption)
    if isinstance(data, Mapping) and "images" in data:
        images = [_field(r, "id", (int, str), path, "images", i)
                  for i, r in enumerate(_records(data, path, "images"))]
        known = set(images)
        stray = [i for i in references if i not in known]
        if stray:
            raise DataError(f"{path}: annotations refer to image_id {stray[0]!r}, "
                            "which is not in 'images'")
        uncaptioned = [i for i in images if i not in references]
        if uncaptioned:
            raise DataError(f"{path}: image {uncaptioned[0]!r} in 'images' has no caption "
                            f"in 'annotations' ({len(uncaptioned)} such image(s))")
    if not references:
        raise DataError(f"{path}: field 'annotations' is empty")
    return references


def eval_caption_files(predictions_path, references_path, meteor: bool = True,
                       spice: bool = False, allow_missing: bool = False) -> dict:
    """`caption_scores` of a COCO results file against a COCO captions file."""
    predictions = load_caption_predictions(predictions_path)
    references = load_caption_references(references_path)
    try:
        return caption_scores(predictions, references, meteor=meteor, spice=spice,
                              allow_missing=allow_missing)
    except DataError as error:
        raise _prefixed(predictions_path, error) from None


def load_vqa_predictions(path) -> Dict[Hashable, str]:
    """VQAv2 results: [{"question_id": ..., "answer": "..."}, ...]."""
    records = _records(_load_json(path, "VQA predictions"), path, None)
    pairs = [(_field(r, "question_id", (int, str), path, None, i),
              _field(r, "answer", str, path, None, i)) for i, r in enumerate(records)]
    return _unique(pairs, path, "question_id")


def _question_ids(path) -> set:
    records = _records(_load_json(path, "VQA questions"), path, "questions")
    ids = [_field(r, "question_id", (int, str), path, "questions", i)
           for i, r in enumerate(records)]
    return set(_unique([(q, None) for q in ids], path, "question_id"))


def load_vqa_annotations(path, question_ids: set) -> List[Mapping]:
    """VQAv2 annotations, checked to cover exactly the questions in the questions file."""
    records = _records(_load_json(path, "VQA annotations"), path, "annotations")
    annotated = set()
    for i, record in enumerate(records):
        annotated.add(_field(record, "question_id", (int, str), path, "annotations", i))
        _field(record, "answers", list, path, "annotations", i)
    unasked = sorted(annotated - question_ids, key=repr)
    if unasked:
        raise DataError(f"{path}: question_id {unasked[0]!r} is annotated but not in the "
                        f"questions file ({len(unasked)} such question(s))")
    unanswered = sorted(question_ids - annotated, key=repr)
    if unanswered:
        raise DataError(f"{path}: question_id {unanswered[0]!r} from the questions file has "
                        f"no annotation ({len(unanswered)} such question(s))")
    return records


def eval_vqa_files(predictions_path, questions_path, annotations_path,
                   allow_missing: bool = False) -> dict:
    """Official VQAv2 accuracy (see `vqa_accuracy`) of a VQAv2 results file."""
    predictions = load_vqa_predictions(predictions_path)
    annotations = load_vqa_annotations(annotations_path, _question_ids(questions_path))
    # Errors inside annotation records name the annotations file; coverage errors
    # (a prediction without annotation, or the reverse) name the predictions file.
    try:
        annotations_by_question(annotations)
    except DataError as error:
        raise _prefixed(annotations_path, error) from None
    try:
        return vqa_accuracy(predictions, annotations, allow_missing=allow_missing)
    except DataError as error:
        raise _prefixed(predictions_path, error) from None
