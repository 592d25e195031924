"""Read Karpathy's caption splits (`dataset_coco.json`, `dataset_flickr30k.json`, `dataset_flickr8k.json`).

One file holds every split: {"images": [{"filepath" (COCO only), "filename", "imgid",
"split", "sentences": [{"raw", "tokens", ...}], "cocoid" (COCO only), ...}], "dataset"}.
COCO's file also has a "restval" split (the 30k val2014 images outside Karpathy's
val/test), which the literature trains on, so "train" includes it by default.
"""

from __future__ import annotations

from pathlib import Path

from vislm.data.formats._json import get_field, read_json_object, record_at, relative_file_name, top_level_list
from vislm.data.formats.coco import CaptionRecord
from vislm.errors import DataError

SPLITS = ("train", "val", "test", "restval")


def read_karpathy(
    json_file: str | Path,
    image_root: str | Path,
    split: str,
    restval_into_train: bool = True,
    check_files: bool = True,
) -> list[CaptionRecord]:
    """The images of one split, in file order, with their raw sentences as captions.

    Image ids are COCO ids ("cocoid") where the file has them, so predictions can be
    scored against COCO's own caption files; otherwise Karpathy's "imgid".
    """
    path = Path(json_file)
    if split not in SPLITS:
        raise DataError(f"{path}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    wanted = {split, "restval"} if split == "train" and restval_into_train else {split}
    images = top_level_list(read_json_object(path, "Karpathy split file"), "images", path)

    records: list[CaptionRecord] = []
    seen_ids: set[int] = set()
    for index in range(len(images)):
        where = f"images[{index}]"
        image = record_at(images, index, "images", path)
        image_split = get_field(image, "split", str, where, path)
        if image_split not in SPLITS:
            raise DataError(f"{path}: {where}.split must be one of {', '.join(SPLITS)}, got {image_split!r}")
        image_id = _image_id(image, where, path)
        if image_id in seen_ids:
            raise DataError(f"{path}: {where} repeats image id {image_id}")
        seen_ids.add(image_id)
        # Every image is checked, not just the split's: a broken file fails whichever split is read.
        image_path = Path(image_root) / _relative_path(image, where, path)
        record = CaptionRecord(image_id, image_path, *_captions(image, where, path))
        if image_split not in wanted:
            continue
        if check_files and not image_path.is_file():
            raise DataError(f"{path}: image file for image id {image_id} not found: {image_path}")
        records.append(record)
    return records


def _image_id(image: dict, where: str, path: Path) -> int:
    cocoid = get_field(image, "cocoid", int, where, path, optional=True)
    return cocoid if cocoid is not None else get_field(image, "imgid", int, where, path)


def _relative_path(image: dict, where: str, path: Path) -> Path:
    """filepath/filename (COCO: 'val2014/COCO_val2014_...jpg'), checked to stay inside the root."""
    filename = relative_file_name(get_field(image, "filename", str, where, path), where, path, "filename")
    filepath = get_field(image, "filepath", str, where, path, optional=True)
    if not filepath:
        return Path(filename)
    return Path(relative_file_name(filepath, where, path, "filepath")) / filename


def _captions(image: dict, where: str, path: Path) -> tuple[list[str], dict[int, str]]:
    """The raw sentences, stripped, and where the blank ones are (CaptionRecord.blank)."""
    sentences = get_field(image, "sentences", list, where, path)
    captions, blank = [], {}
    for index in range(len(sentences)):
        sentence_where = f"{where}.sentences[{index}]"
        sentence = record_at(sentences, index, f"{where}.sentences", path)
        caption = get_field(sentence, "raw", str, sentence_where, path).strip()
        if not caption:
            blank[index] = f"{path}: {sentence_where}.raw is empty or only whitespace"
        captions.append(caption)
    return captions, blank
