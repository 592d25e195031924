"""torch Datasets over caption and VQA records. Items are plain dicts; batching and
tokenisation happen in the collators, so these classes stay format-agnostic."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vislm.data import shapes
from vislm.data.formats.coco import CaptionRecord, coco_image_paths, read_coco_captions
from vislm.data.formats.vqav2 import VQARecord, read_vqav2
from vislm.data.images import load_image
from vislm.errors import DataError

Transform = Callable[[Any], torch.Tensor]


class ImageCache:
    """Transformed image tensors kept in memory, keyed by path.

    Decoding thousands of small PNGs every epoch costs more than the model on a
    small CPU; decoding them once does not. A cache holds tensors for one transform
    only: asking with another would silently return wrongly preprocessed images.
    Memory: 3 * size * size * 4 bytes per image (48 KiB at 64 px).
    """

    def __init__(self) -> None:
        self._tensors: dict[str, torch.Tensor] = {}
        self._transform: Transform | None = None

    def get(self, path: str | Path, transform: Transform) -> torch.Tensor:
        self._check_transform(transform)
        key = str(path)
        tensor = self._tensors.get(key)
        if tensor is None:
            tensor = transform(load_image(path))
            self._tensors[key] = tensor
        # A copy, so that a caller editing its batch in place cannot corrupt later epochs.
        return tensor.clone()

    def preload(self, paths: Iterable[str | Path], transform: Transform) -> "ImageCache":
        """Decode and transform every path now (each distinct path once)."""
        self._check_transform(transform)
        for path in paths:
            key = str(path)
            if key not in self._tensors:
                self._tensors[key] = transform(load_image(path))
        return self

    def _check_transform(self, transform: Transform) -> None:
        if self._transform is None:
            self._transform = transform
        elif self._transform != transform:
            raise ValueError(f"ImageCache holds images made by {self._transform!r}; cannot serve {transform!r}")

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, path: object) -> bool:
        return str(path) in self._tensors


def _image(path: Path, transform: Transform, cache: ImageCache | None) -> torch.Tensor:
    return cache.get(path, transform) if cache is not None else transform(load_image(path))


class CaptionPairs(Dataset):
    """One item per (image, caption): {"image", "text", "image_id"}. Images without
    captions contribute no items."""

    def __init__(self, records: list[CaptionRecord], transform: Transform, cache: ImageCache | None = None) -> None:
        self.records = records
        self.transform = transform
        self.cache = cache
        self._pairs = [(r, c) for r, record in enumerate(records) for c in range(len(record.captions))]

    def __len__(self) -> int:
        return len(self._pairs)

    def lengths(self) -> list[int]:
        """Words per caption + BOS/EOS: a cheap stand-in for token counts, good enough to
        group similar lengths (train.length_bucketing) without tokenising the data set."""
        return [len(self.records[r].captions[c].split()) + 2 for r, c in self._pairs]

    def __getitem__(self, index: int) -> dict[str, Any]:
        record_index, caption_index = self._pairs[index]
        record = self.records[record_index]
        return {
            "image": _image(record.image_path, self.transform, self.cache),
            "text": record.captions[caption_index],
            "image_id": record.image_id,
        }


class ImageSet(Dataset):
    """One item per image: {"image", "image_id"}; references stay in .records."""

    def __init__(self, records: list[CaptionRecord], transform: Transform, cache: ImageCache | None = None) -> None:
        self.records = records
        self.transform = transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        return {"image": _image(record.image_path, self.transform, self.cache), "image_id": record.image_id}


class VQAItems(Dataset):
    """One item per question: {"image", "question", "answers", "question_id", "image_id"}."""

    def __init__(self, records: list[VQARecord], transform: Transform, cache: ImageCache | None = None) -> None:
        self.records = records
        self.transform = transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        return {
            "image": _image(record.image_path, self.transform, self.cache),
            "question": record.question,
            "answers": list(record.answers),
            "question_id": record.question_id,
            "image_id": record.image_id,
        }


def load_shapes_split(
    root: str | Path, split: str, check_files: bool = True
) -> tuple[list[CaptionRecord], list[VQARecord], dict[int, list[dict]]]:
    """Captions, VQA records and ground-truth scenes (image id -> objects) of one
    split of a world written by vislm.data.shapes.generate_shapes_world."""
    world = shapes.read_world(root)
    if split not in world["sizes"]:
        available = ", ".join(world["sizes"])
        raise DataError(f"{shapes.world_file(root)}: unknown split {split!r} (available: {available})")
    captions_path = shapes.captions_file(root, split)
    images = shapes.image_dir(root, split)
    captions = read_coco_captions(captions_path, images, check_files=check_files)
    questions = read_vqav2(
        shapes.questions_file(root, split),
        shapes.vqa_annotations_file(root, split),
        image_path_for=coco_image_paths(captions_path, images),
        check_files=False,  # the same image paths were just checked by the captions reader
    )
    scenes_path = shapes.scenes_file(root, split)
    scenes = shapes.read_scenes(scenes_path)
    missing = [record.image_id for record in captions if record.image_id not in scenes]
    if missing:
        raise DataError(f"{scenes_path}: no scene for image id {missing[0]} (listed in {captions_path})")
    return captions, questions, scenes
