"""Read COCO-style caption annotations into plain records.

The JSON helpers used here live in _json.py and are re-exported, because other
modules (VQAv2, the shapes world) import them from this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vislm.data.formats._json import (  # noqa: F401  (re-exported for existing imports)
    get_field,
    read_json_object,
    record_at,
    relative_file_name,
    top_level_list,
)
from vislm.errors import DataError


# --- COCO captions -------------------------------------------------------------------------------


@dataclass
class CaptionRecord:
    image_id: int
    image_path: Path
    captions: list[str]
    # Index of a caption left blank in its annotation file -> where: the file, the record and
    # the field. Whether such a sample is skipped or refused is the run's bad-data policy
    # (vislm/tasks/screen.py), so the readers keep it, as "".
    blank: dict[int, str] = field(default_factory=dict)


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
    A blank caption is kept as "" and located in its record's `blank`.
    """
    path = Path(annotation_file)
    data = read_json_object(path)
    top_level_list(data, "annotations", path)  # checked before any per-image work
    image_paths = coco_image_paths(path, image_dir)
    captions: dict[int, list[str]] = {image_id: [] for image_id in image_paths}
    blank: dict[int, dict[int, str]] = {image_id: {} for image_id in image_paths}

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
            blank[image_id][len(captions[image_id])] = (
                f"{path}: {where}.caption is empty or only whitespace (annotation id {annotation_id})")
        captions[image_id].append(caption)

    if check_files:
        for image_id, image_path in image_paths.items():
            if not image_path.is_file():
                raise DataError(f"{path}: image file for image id {image_id} not found: {image_path}")
    return [CaptionRecord(image_id, image_paths[image_id], captions[image_id], blank[image_id])
            for image_id in image_paths]
