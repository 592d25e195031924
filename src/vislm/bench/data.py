"""Data loading: caption pairs per second through PNG decode, transform, tokenise and
collate, on a shapes world written to a temporary folder.

Rows: 0 and 2 DataLoader workers decoding every image each time (the cost of an epoch
without a cache), and the in-memory ImageCache that training uses once the images are
decoded (vislm.data.datasets.ImageCache). The training step it has to keep busy takes
about batch_size / samples_per_s seconds (see the training table).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

from torch.utils.data import DataLoader


@dataclass(frozen=True)
class DataSizes:
    images: int = 400  # x 5 captions = 2,000 pairs per pass
    image_size: int = 64
    batch_size: int = 64
    max_len: int = 32


FULL = DataSizes()
QUICK = DataSizes(images=8, image_size=32, batch_size=4)


def _pass(dataset, collate, batch_size: int, workers: int) -> float:
    """Pairs per second over one pass (worker start-up included: every epoch pays it)."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    start = time.perf_counter()
    pairs = sum(batch["input_ids"].size(0) for batch in loader)
    return pairs / (time.perf_counter() - start)


def _padding(records, tokenizer, s: DataSizes) -> dict:
    """Share of padded token slots per epoch, random batches vs length-bucketed ones
    (train.length_bucketing), with the real token counts of the captions."""
    from vislm.data.bucketing import bucketed_batches, padding_fraction
    from vislm.train.trainer import epoch_batches

    # In CaptionPairs' order: every caption of every record.
    lengths = [len(tokenizer.encode_one(c, s.max_len)) for r in records for c in r.captions]
    plain = epoch_batches(len(lengths), s.batch_size, 1, seed=0, epoch=0)
    bucketed = bucketed_batches(lengths, s.batch_size, 1, seed=0)
    return {"padding_fraction_random": padding_fraction(lengths, plain),
            "padding_fraction_bucketed": padding_fraction(lengths, bucketed)}


def run(s: DataSizes, log=print) -> dict:
    from vislm.data.collate import CaptionCollator
    from vislm.data.datasets import CaptionPairs, ImageCache, load_shapes_split
    from vislm.data.shapes import generate_shapes_world
    from vislm.data.tokenizer import train_tokenizer
    from vislm.data.transforms import ImageTransform

    with tempfile.TemporaryDirectory(prefix="vislm-bench-") as root:
        start = time.perf_counter()
        generate_shapes_world(root, seed=0, sizes={"train": s.images}, image_size=s.image_size)
        generated = time.perf_counter() - start
        records, _, _ = load_shapes_split(root, "train")
        tokenizer = train_tokenizer([c for r in records for c in r.captions], vocab_size=200)
        collate = CaptionCollator(tokenizer, s.max_len)
        transform = ImageTransform(s.image_size)
        plain = CaptionPairs(records, transform)
        result = {"images": s.images, "pairs": len(plain), "batch_size": s.batch_size,
                  "world_seconds": generated}
        # One untimed pass first: the files are then in the page cache for every row.
        _pass(plain, collate, s.batch_size, 0)
        for workers in (0, 2):
            result[f"workers{workers}_pairs_per_s"] = _pass(plain, collate, s.batch_size, workers)
        result.update(_padding(records, tokenizer, s))
        cache = ImageCache().preload([r.image_path for r in records], transform)
        cached = CaptionPairs(records, transform, cache)
        result["cached_pairs_per_s"] = _pass(cached, collate, s.batch_size, 0)
    log(f"data: {result['workers0_pairs_per_s']:.0f} pairs/s (0 workers), "
        f"{result['workers2_pairs_per_s']:.0f} (2 workers), {result['cached_pairs_per_s']:.0f} (cached)")
    return result
