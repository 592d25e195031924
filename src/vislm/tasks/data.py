"""Records of one split, read from whichever data set the config names.

Each data set registers a reader `(cfg: DataConfig, split) -> SplitRecords` in
vislm.registry.DATASETS. Readers only parse; `load_split` then applies what every data
set shares: a val split carved from train (data.val_holdout), data.limit, and a check
that every image file exists.

Where each reader looks (paths under data.root; "{split}" becomes the split name):

  dataset        annotations / questions                             images
  shapes         root is a world made by `vislm data shapes`
  coco           annotations/captions_{split}2014.json               {split}2014
  karpathy       dataset_coco.json | dataset_flickr30k.json | ..8k   root
                 (split train includes restval)
  vqav2          v2_OpenEnded_mscoco_{split}2014_questions.json,     {split}2014/COCO_{split}2014_{image_id:012d}.jpg
                 v2_mscoco_{split}2014_annotations.json
  visual_genome  image_data.json, region_descriptions.json,          root (VG_100K/, VG_100K_2/)
                 question_answers.json; one split, "train"
  easyvqa        the installed easy_vqa package; train / test
  vqarad         {split}set.json; root defaults to ../shared/data/vqa_rad next to the repository
  csv, jsonl     {split}.csv / {split}.jsonl (columns: data.columns)  the file's folder
  folder         -                                                   root (every image under it)
  webdataset     {split} (a folder of .tar shards, or one .tar)      {split}_extracted (images are
                                                                     extracted there for map-style use)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List

from vislm.config import DataConfig
from vislm.data.datasets import ImageCache, load_shapes_split
from vislm.data.formats.coco import CaptionRecord, read_coco_captions
from vislm.data.formats.easyvqa import read_easyvqa
from vislm.data.formats.generic import read_csv, read_folder, read_jsonl
from vislm.data.formats.karpathy import read_karpathy
from vislm.data.formats.visual_genome import read_visual_genome
from vislm.data.formats.vqarad import default_vqarad_root, read_vqarad
from vislm.data.formats.vqav2 import VQARecord, read_vqav2
from vislm.data.formats.webdataset import list_shards, read_shard_records
from vislm.data.transforms import ImageTransform
from vislm.errors import ConfigError, DataError
from vislm.registry import DATASETS


@dataclass
class SplitRecords:
    """What one split holds: captioned images, questions, and scene truth where known."""

    name: str
    captions: List[CaptionRecord] = field(default_factory=list)
    questions: List[VQARecord] = field(default_factory=list)
    scenes: Dict[int, list] = field(default_factory=dict)


def load_split(cfg: DataConfig, split: str, check_files: bool = True) -> SplitRecords:
    """The records of `split`, with every image file checked to exist (unless `check_files`
    is False: a training split under data.on_error=skip drops missing images instead,
    vislm/tasks/screen.py)."""
    records = read_split(cfg, split)
    if check_files:
        _check_image_files(records, cfg.dataset)
    return records


def read_split(cfg: DataConfig, split: str) -> SplitRecords:
    """load_split without the image check (for summaries of incomplete downloads)."""
    if cfg.dataset not in DATASETS:
        known = ", ".join(DATASETS.names())
        raise DataError(f"data.dataset: unknown data set {cfg.dataset!r}; expected one of {known}")
    if cfg.val_holdout > 0 and split in ("train", "val"):
        records = _hold_out(DATASETS.create(cfg.dataset, cfg=cfg, split="train"), split, cfg)
    else:
        records = DATASETS.create(cfg.dataset, cfg=cfg, split=split)
    return _first_captions(_limited(records, cfg.limit), cfg.captions_per_image)


def _first_captions(records: SplitRecords, keep: int) -> SplitRecords:
    """Each image's first `keep` captions (0 = all). The shapes world's first caption is its
    canonical one, whose every word the scene fixes (vislm/data/shapes.py)."""
    if keep > 0:
        records.captions = [replace(r, captions=r.captions[:keep]) for r in records.captions]
    return records


def _hold_out(train: SplitRecords, split: str, cfg: DataConfig) -> SplitRecords:
    """Split train in two: "val" gets cfg.val_holdout images drawn with cfg.split_seed, "train" the rest.

    Whole images move, with all their captions and questions, so no picture is seen in
    training and then again in validation.
    """
    image_ids = sorted({r.image_id for r in train.captions} | {r.image_id for r in train.questions})
    if cfg.val_holdout >= len(image_ids):
        raise DataError(
            f"data.val_holdout: {cfg.val_holdout} images asked for val, but train has only {len(image_ids)}"
        )
    held_out = set(random.Random(cfg.split_seed).sample(image_ids, cfg.val_holdout))
    keep = (lambda image_id: image_id in held_out) if split == "val" else (lambda image_id: image_id not in held_out)
    return SplitRecords(
        split,
        [r for r in train.captions if keep(r.image_id)],
        [r for r in train.questions if keep(r.image_id)],
        {image_id: scene for image_id, scene in train.scenes.items() if keep(image_id)},
    )


def _limited(records: SplitRecords, limit: int) -> SplitRecords:
    """The first `limit` images (with their questions), or the first `limit` questions of a VQA-only set."""
    if limit <= 0:
        return records
    if records.captions:
        records.captions = records.captions[:limit]
        kept = {r.image_id for r in records.captions}
        records.questions = [q for q in records.questions if q.image_id in kept]
    else:
        records.questions = records.questions[:limit]
    return records


def _check_image_files(records: SplitRecords, dataset: str) -> None:
    paths = list(dict.fromkeys([r.image_path for r in records.captions] + [r.image_path for r in records.questions]))
    missing = [path for path in paths if not Path(path).is_file()]
    if missing:
        raise DataError(f"{missing[0]}: image file not found ({len(missing)} of {len(paths)} images"
                        f" of {dataset} split {records.name!r} are missing)")


def _path(cfg: DataConfig, configured: str, default: str, split: str) -> Path:
    """A configured (else default) path with {split} filled in, under cfg.root unless absolute."""
    path = Path((configured or default).replace("{split}", split))
    return path if path.is_absolute() else Path(cfg.root) / path


# --- Readers, one per data set -------------------------------------------------------------------


@DATASETS.register("shapes")
def _shapes(cfg: DataConfig, split: str) -> SplitRecords:
    root = Path(cfg.root)
    if not (root / "annotations").is_dir():
        raise DataError(f"{root}: no shapes world here (expected {root}/annotations); "
                        f"create one with `vislm data shapes --out {root}`")
    captions, questions, scenes = load_shapes_split(root, split, check_files=False)
    return SplitRecords(split, captions, questions, scenes)


@DATASETS.register("coco")
def _coco(cfg: DataConfig, split: str) -> SplitRecords:
    annotations = _path(cfg, cfg.annotations, "annotations/captions_{split}2014.json", split)
    images = _path(cfg, cfg.images, "{split}2014", split)
    return SplitRecords(split, captions=read_coco_captions(annotations, images, check_files=False))


@DATASETS.register("karpathy")
def _karpathy(cfg: DataConfig, split: str) -> SplitRecords:
    published = ("dataset_coco.json", "dataset_flickr30k.json", "dataset_flickr8k.json")
    default = next((name for name in published if (Path(cfg.root) / name).is_file()), published[0])
    json_file = _path(cfg, cfg.annotations, default, split)
    images = _path(cfg, cfg.images, ".", split)
    return SplitRecords(split, captions=read_karpathy(json_file, images, split, check_files=False))


@DATASETS.register("vqav2")
def _vqav2(cfg: DataConfig, split: str) -> SplitRecords:
    questions = _path(cfg, cfg.questions, "v2_OpenEnded_mscoco_{split}2014_questions.json", split)
    annotations = _path(cfg, cfg.annotations, "v2_mscoco_{split}2014_annotations.json", split)
    pattern = str(_path(cfg, cfg.images, "{split}2014/COCO_{split}2014_{image_id:012d}.jpg", split))
    records = read_vqav2(questions, annotations, image_path_for=_image_pattern(pattern), check_files=False)
    return SplitRecords(split, questions=records)


def _image_pattern(pattern: str) -> Callable[[int], Path]:
    try:
        pattern.format(image_id=0)
    except (KeyError, IndexError, ValueError) as error:
        raise ConfigError(f"data.images: {pattern!r} must be a file pattern using only {{image_id}}"
                          f" ({error!r})") from None
    if "{image_id" not in pattern:
        raise ConfigError(f"data.images: {pattern!r} must contain {{image_id}} for VQAv2"
                          " (e.g. images/{image_id}.png)")
    return lambda image_id: Path(pattern.format(image_id=image_id))


@DATASETS.register("visual_genome")
def _visual_genome(cfg: DataConfig, split: str) -> SplitRecords:
    if split != "train":
        raise DataError(f"{cfg.root}: Visual Genome has no official splits; use 'train' (every image)"
                        " and data.val_holdout for a val split")
    root = Path(cfg.root)
    regions, qas = root / "region_descriptions.json", root / "question_answers.json"
    if not regions.is_file() and not qas.is_file():
        raise DataError(f"{root}: neither region_descriptions.json nor question_answers.json found")
    captions, questions = read_visual_genome(
        root / "image_data.json", regions if regions.is_file() else None, qas if qas.is_file() else None,
        image_root=_path(cfg, cfg.images, ".", split), check_files=False,
    )
    return SplitRecords(split, captions, questions)


@DATASETS.register("easyvqa")
def _easyvqa(cfg: DataConfig, split: str) -> SplitRecords:
    return SplitRecords(split, questions=read_easyvqa(split, check_files=False))


@DATASETS.register("vqarad")
def _vqarad(cfg: DataConfig, split: str) -> SplitRecords:
    root: Path | None = Path(cfg.root)
    if cfg.root in ("", DataConfig.root):  # not set for VQA-RAD: use the shared copy
        root = default_vqarad_root()
        if root is None:
            raise DataError("VQA-RAD: no data at ../shared/data/vqa_rad next to the repository; set data.root")
    return SplitRecords(split, questions=read_vqarad(root, split, check_files=False))


@DATASETS.register("csv")
def _csv(cfg: DataConfig, split: str) -> SplitRecords:
    table = _path(cfg, cfg.annotations, "{split}.csv", split)
    images = _path(cfg, cfg.images, "", split) if cfg.images else None
    captions, questions = read_csv(table, cfg.columns, images, check_files=False)
    return SplitRecords(split, captions, questions)


@DATASETS.register("jsonl")
def _jsonl(cfg: DataConfig, split: str) -> SplitRecords:
    table = _path(cfg, cfg.annotations, "{split}.jsonl", split)
    images = _path(cfg, cfg.images, "", split) if cfg.images else None
    captions, questions = read_jsonl(table, cfg.columns, images, check_files=False)
    return SplitRecords(split, captions, questions)


@DATASETS.register("folder")
def _folder(cfg: DataConfig, split: str) -> SplitRecords:
    return SplitRecords(split, captions=read_folder(_path(cfg, cfg.images, ".", split)))


@DATASETS.register("webdataset")
def _webdataset(cfg: DataConfig, split: str) -> SplitRecords:
    shards = list_shards(_path(cfg, cfg.annotations, "{split}", split))
    extract_to = _path(cfg, cfg.images, "{split}_extracted", split)
    captions, questions, missing = read_shard_records(shards, extract_to)
    if missing:
        raise DataError(f"{shards[0].parent}: sample {missing[0]} has no image ({len(missing)} samples without one)")
    return SplitRecords(split, captions, questions)


def make_transform(cfg) -> ImageTransform:
    """The image preprocessing of a run; a pre-trained vision tower dictates its own."""
    if cfg.model.vision == "hf_vision":
        from vislm.models.hf.vision import image_transform_settings

        return ImageTransform(**image_transform_settings(cfg.model.vision_kwargs, cfg.data.image_size))
    return ImageTransform(cfg.data.image_size)


def make_cache(cfg: DataConfig) -> ImageCache | None:
    return ImageCache() if cfg.cache_images else None
