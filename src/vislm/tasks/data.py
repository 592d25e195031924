"""Records of one split, read from whichever data set the config names."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

from vislm.config import DataConfig
from vislm.data.datasets import ImageCache, load_shapes_split
from vislm.data.formats.coco import CaptionRecord
from vislm.data.formats.vqav2 import VQARecord
from vislm.data.transforms import ImageTransform
from vislm.errors import DataError


@dataclass
class SplitRecords:
    """What one split holds: captioned images, questions, and scene truth where known."""

    name: str
    captions: List[CaptionRecord] = field(default_factory=list)
    questions: List[VQARecord] = field(default_factory=list)
    scenes: Dict[int, list] = field(default_factory=dict)


def load_split(cfg: DataConfig, split: str) -> SplitRecords:
    if cfg.dataset != "shapes":
        raise DataError(f"data.dataset: unknown data set {cfg.dataset!r}; expected 'shapes'")
    root = Path(cfg.root)
    if not (root / "annotations").is_dir():
        raise DataError(f"{root}: no shapes world here (expected {root}/annotations); "
                        f"create one with `vislm data shapes --out {root}`")
    captions, questions, scenes = load_shapes_split(root, split)
    if cfg.limit > 0:
        captions = captions[: cfg.limit]
        kept = {r.image_id for r in captions}
        questions = [q for q in questions if q.image_id in kept]
    return SplitRecords(split, captions, questions, scenes)


def make_transform(cfg: DataConfig) -> ImageTransform:
    return ImageTransform(cfg.image_size)


def make_cache(cfg: DataConfig) -> ImageCache | None:
    return ImageCache() if cfg.cache_images else None
