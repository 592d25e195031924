"""WebDataset-style tar shards: write records into them, stream items out of them.

A shard is a plain tar file; each sample is one image and everything said about it:
    000000012.jpg    the image file's original bytes (JPEG and PNG kept as they are,
                     other formats re-encoded as PNG)
    000000012.json   {"image_id", "captions": [...], "questions": [{"question_id", "question",
                     "answers", "multiple_choice_answer", "answer_type", "question_type"}]}
Samples are grouped by the key before the first dot of the member's base name, the
`webdataset` package's convention, so that package can read these shards too. We read
them with the tarfile module instead: the package's automatic decoders unpickle some
member types, and reading them ourselves turns every fault into a one-line DataError
naming the shard and sample.

ShardedDataset streams items that look exactly like those of CaptionPairs, ImageSet and
VQAItems, for data larger than memory or local disk. Shards are split between
torch.distributed ranks and then between DataLoader workers, so across all of them
every sample is read exactly once per epoch; with fewer shards than ranks x workers
some readers get none, and uneven shards give ranks unequal numbers of items (DDP
callers should write many equal shards, or stop each epoch at a common step count).
"""

from __future__ import annotations

import io
import json
import logging
import random
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from vislm.data.bad_data import SKIPPED_KEY
from vislm.data.formats._json import get_field, json_type, record_at, relative_file_name
from vislm.data.formats.coco import CaptionRecord
from vislm.data.formats.vqav2 import VQARecord
from vislm.data.images import load_image
from vislm.errors import DataError

log = logging.getLogger(__name__)

MODES = ("caption", "image", "vqa")
_KEPT_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png"}
_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")


# --- Writing -------------------------------------------------------------------------------------


def write_shards(
    records: Iterable[CaptionRecord | VQARecord], out_dir: str | Path, shard_size: int = 1000
) -> list[Path]:
    """Write shard-000000.tar, shard-000001.tar, ... of at most `shard_size` images each.

    Caption and VQA records of the same image id become one sample, so an image is
    stored once however many captions and questions it has. Returns the shard paths.
    """
    if shard_size < 1:
        raise DataError(f"write_shards: shard_size must be at least 1, got {shard_size}")
    samples = _group_by_image(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in range(0, len(samples), shard_size):
        path = out_dir / f"shard-{start // shard_size:06d}.tar"
        partial = path.with_suffix(".tar.partial")  # renamed when complete: no half-written shards
        try:
            with tarfile.open(partial, "w") as tar:
                for index in range(start, min(start + shard_size, len(samples))):
                    _add_sample(tar, f"{index:09d}", samples[index])
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(path)
        shards.append(path)
    return shards


def _group_by_image(records: Iterable[CaptionRecord | VQARecord]) -> list[dict[str, Any]]:
    samples: dict[int, dict[str, Any]] = {}
    for record in records:
        empty = {"image_id": record.image_id, "image_path": record.image_path, "captions": [], "questions": []}
        sample = samples.setdefault(record.image_id, empty)
        if Path(sample["image_path"]) != Path(record.image_path):
            raise DataError(
                f"{record.image_path}: image id {record.image_id} also names {sample['image_path']}; ids must be unique"
            )
        if isinstance(record, CaptionRecord):
            sample["captions"].extend(record.captions)
        else:
            sample["questions"].append({
                "question_id": record.question_id, "question": record.question, "answers": list(record.answers),
                "multiple_choice_answer": record.multiple_choice_answer, "answer_type": record.answer_type,
                "question_type": record.question_type,
            })
    return list(samples.values())


def _add_sample(tar: tarfile.TarFile, key: str, sample: dict[str, Any]) -> None:
    image_path = Path(sample["image_path"])
    extension, data = _image_bytes(image_path)
    meta = {name: sample[name] for name in ("image_id", "captions", "questions")}
    _add_member(tar, f"{key}.{extension}", data)
    _add_member(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))


def _image_bytes(path: Path) -> tuple[str, bytes]:
    extension = _KEPT_SUFFIXES.get(path.suffix.lower())
    if extension is not None:
        if not path.is_file():
            raise DataError(f"{path}: image file not found")
        return extension, path.read_bytes()
    buffer = io.BytesIO()
    load_image(path).save(buffer, format="PNG")
    return "png", buffer.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644  # mtime stays 0 and no owner is recorded: equal records give equal shards
    tar.addfile(info, io.BytesIO(data))


# --- Reading -------------------------------------------------------------------------------------


@dataclass
class Sample:
    shard: Path
    key: str
    meta: dict[str, Any]  # checked: image_id, captions, questions
    image: bytes | None  # None when the sample has no image member
    extension: str | None


def list_shards(path: str | Path) -> list[Path]:
    """A folder's *.tar files (sorted), or a single tar file."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: shard folder or tar file not found")
    shards = sorted(p for p in path.iterdir() if p.name.endswith(".tar") and p.is_file())
    if not shards:
        raise DataError(f"{path}: no .tar shards in this folder")
    return shards


def iter_samples(shard: str | Path) -> Iterator[Sample]:
    """The samples of one shard, in order, streamed (members are never extracted)."""
    shard = Path(shard)
    if not shard.is_file():
        raise DataError(f"{shard}: shard not found")
    try:
        with tarfile.open(shard, "r|*") as tar:
            key, files = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                member_key, extension = _split_name(member.name, shard)
                if member_key != key and key is not None:
                    yield _sample(shard, key, files)
                    files = {}
                key = member_key
                if extension in files:
                    raise DataError(f"{shard}: sample {key} has two {extension!r} members")
                files[extension] = tar.extractfile(member).read()
            if key is not None:
                yield _sample(shard, key, files)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"{shard}: not a readable tar shard ({type(error).__name__}: {error})") from None


def _split_name(name: str, shard: Path) -> tuple[str, str]:
    """'dir/000012.jpg' -> ('dir/000012', 'jpg'): the key ends at the base name's first dot."""
    relative_file_name(name, "member", shard, "name")  # refuse '/x' and '../x' before using it as a path
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot or not stem:
        raise DataError(f"{shard}: member {name!r} has no key.extension name")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def _sample(shard: Path, key: str, files: dict[str, bytes]) -> Sample:
    if "json" not in files:
        raise DataError(f"{shard}: sample {key} has no .json member")
    where = f"sample {key}"
    try:
        meta = json.loads(files["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{shard}: {where}.json is not valid UTF-8 JSON ({error})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{shard}: {where}.json must be an object, got {json_type(meta)}")
    _check_meta(meta, where, shard)
    extension = next((ext for ext in _IMAGE_EXTENSIONS if ext in files), None)
    return Sample(shard, key, meta, files.get(extension) if extension else None, extension)


def _check_meta(meta: dict[str, Any], where: str, shard: Path) -> None:
    get_field(meta, "image_id", int, where, shard)
    captions = get_field(meta, "captions", list, where, shard)
    if not all(isinstance(caption, str) for caption in captions):
        raise DataError(f"{shard}: {where}.captions must be a list of strings")
    questions = get_field(meta, "questions", list, where, shard)
    for index in range(len(questions)):
        question_where = f"{where}.questions[{index}]"
        question = record_at(questions, index, f"{where}.questions", shard)
        get_field(question, "question_id", int, question_where, shard)
        get_field(question, "question", str, question_where, shard)
        answers = get_field(question, "answers", list, question_where, shard)
        if not all(isinstance(answer, str) for answer in answers):
            raise DataError(f"{shard}: {question_where}.answers must be a list of strings")
        for name in ("multiple_choice_answer", "answer_type", "question_type"):
            get_field(question, name, str, question_where, shard, optional=True)


def _vqa_record(question: dict[str, Any], image_id: int, image_path: Path) -> VQARecord:
    return VQARecord(
        question_id=question["question_id"], image_id=image_id, image_path=image_path,
        question=question["question"], answers=list(question["answers"]),
        multiple_choice_answer=question.get("multiple_choice_answer"), answer_type=question.get("answer_type"),
        question_type=question.get("question_type"),
    )


def read_shard_records(
    shards: Iterable[str | Path], extract_to: str | Path | None = None
) -> tuple[list[CaptionRecord], list[VQARecord], list[str]]:
    """Records of every sample, and the keys of samples without an image.

    With extract_to, images are written there as <key>.<ext> (files already there with
    the same size are kept), so map-style datasets can read them. Without it,
    image_path is <shard>/<key>.<ext>, a name for messages, not a file on disk.
    """
    captions, questions, missing = [], [], []
    seen: set[str] = set()
    for shard in shards:
        for sample in iter_samples(shard):
            if sample.key in seen:
                raise DataError(f"{sample.shard}: sample key {sample.key} already appeared in an earlier shard")
            seen.add(sample.key)
            image_path = _image_path(sample, extract_to)
            if sample.image is None:
                missing.append(f"{sample.shard.name}/{sample.key}")
            image_id = sample.meta["image_id"]
            captions.append(CaptionRecord(image_id, image_path, list(sample.meta["captions"])))
            questions.extend(_vqa_record(q, image_id, image_path) for q in sample.meta["questions"])
    # Images only asked about, never captioned, are no captioning data (like the other VQA
    # readers); images with neither captions nor questions stay, as image-only records.
    asked_about = {question.image_id for question in questions}
    captions = [record for record in captions if record.captions or record.image_id not in asked_about]
    return captions, questions, missing


def _image_path(sample: Sample, extract_to: str | Path | None) -> Path:
    name = f"{sample.key}.{sample.extension or 'jpg'}"
    if extract_to is None:
        return sample.shard / name
    target = Path(extract_to) / name
    if sample.image is not None and not (target.is_file() and target.stat().st_size == len(sample.image)):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(sample.image)
    return target


# --- Streaming -----------------------------------------------------------------------------------


class ShardedDataset(IterableDataset):
    """Items streamed from shards: mode "caption" gives {"image", "text", "image_id"} per caption,
    "image" gives {"image", "image_id"} per image, "vqa" gives {"image", "question", "answers",
    "question_id", "image_id"} per question.

    rank and world_size default to torch.distributed's when it is initialised (else 0 and 1).
    With shuffle, the shard order changes every epoch (call set_epoch) but is the same on
    every rank, which keeps the split between ranks a partition.

    on_error="skip" drops a sample whose image fails to load instead of raising, and hands
    its (shard/key, message) to the trainer in the next item, under SKIPPED_KEY: batch with
    vislm.data.bad_data.SkippingCollate. A malformed shard still raises.
    """

    def __init__(
        self, shards: str | Path | Iterable[str | Path], transform: Callable[[Any], torch.Tensor],
        mode: str = "caption", shuffle: bool = False, seed: int = 0, rank: int | None = None,
        world_size: int | None = None, on_error: str = "raise",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"ShardedDataset: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"ShardedDataset: on_error must be raise or skip, got {on_error!r}")
        self.on_error = on_error
        self.shards = list_shards(shards) if isinstance(shards, (str, Path)) else [Path(s) for s in shards]
        self.transform = transform
        self.mode = mode
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        # Looked up when iterating, not now: the process group may be set up after this.
        self.rank = rank
        self.world_size = world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def my_shards(self) -> list[Path]:
        """The shards this rank and DataLoader worker read this epoch."""
        rank, world_size = _rank_and_world_size(self.rank, self.world_size)
        shards = list(self.shards)
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(shards)
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        if len(shards) < world_size * num_workers:
            log.warning("%d shards for %d ranks x %d workers: some readers get none", len(shards),
                        world_size, num_workers)
        return shards[rank::world_size][worker_id::num_workers]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Images are decoded by load_image, which takes a path: each sample's bytes go to
        # one scratch file, so every safety check of load_image applies to shard images too.
        with tempfile.TemporaryDirectory(prefix="vislm-shard-") as scratch:
            scratch_file = Path(scratch) / "image"
            failures: list[tuple[str, str]] = []  # skipped since the last item
            for shard in self.my_shards():
                for sample in iter_samples(shard):
                    if self.on_error == "raise":
                        yield from self._items(sample, scratch_file)
                        continue
                    try:
                        items = list(self._items(sample, scratch_file))
                    except DataError as error:
                        failures.append((f"{sample.shard}/{sample.key}", str(error)))
                        continue
                    for item in items:
                        item[SKIPPED_KEY], failures = failures, []
                        yield item
            for where, message in failures:  # no item left to carry them to the trainer
                log.warning("skipped %s at the end of the stream: %s", where, message)

    def _items(self, sample: Sample, scratch_file: Path) -> Iterator[dict[str, Any]]:
        meta = sample.meta
        image_id = meta["image_id"]
        if (self.mode == "caption" and not meta["captions"]) or (self.mode == "vqa" and not meta["questions"]):
            return  # nothing to yield: do not pay for decoding
        image = self._image(sample, scratch_file)
        if self.mode == "image":
            yield {"image": image, "image_id": image_id}
        elif self.mode == "caption":
            for index, caption in enumerate(meta["captions"]):
                yield {"image": image if index == 0 else image.clone(), "text": caption, "image_id": image_id}
        else:
            for index, question in enumerate(meta["questions"]):
                yield {"image": image if index == 0 else image.clone(), "question": question["question"],
                       "answers": list(question["answers"]), "question_id": question["question_id"],
                       "image_id": image_id}

    def _image(self, sample: Sample, scratch_file: Path) -> torch.Tensor:
        if sample.image is None:
            raise DataError(f"{sample.shard}: sample {sample.key} has no image member ({', '.join(_IMAGE_EXTENSIONS)})")
        scratch_file.write_bytes(sample.image)
        try:
            picture = load_image(scratch_file)
        except DataError as error:
            reason = str(error).removeprefix(f"{scratch_file}: ")
            raise DataError(f"{sample.shard}: sample {sample.key}.{sample.extension}: {reason}") from None
        return self.transform(picture)


def _rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The given values, else torch.distributed's when it is initialised, else 0 and 1."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = torch.distributed.get_rank() if distributed else 0
    if world_size is None:
        world_size = torch.distributed.get_world_size() if distributed else 1
    if not 0 <= rank < world_size:
        raise ValueError(f"ShardedDataset: rank {rank} is outside world size {world_size}")
    return rank, world_size
