"""What every task shares: the data of each split, the tokenizer, the batching for evaluation."""

from __future__ import annotations

from typing import Dict, Iterator, List

import torch
from torch.utils.data import DataLoader, Dataset

from vislm.config import Config
from vislm.data.bad_data import BadData, SkippingCollate, SkippingDataset
from vislm.data.tokenizer import TextTokenizer
from vislm.tasks.data import SplitRecords, make_cache, make_transform
from vislm.tasks.screen import count_samples, screen_images, screen_text


class Task:
    """A task owns its training data, its collate function and its evaluation.

    Subclasses set `self.train_dataset` and `self.collate`, and implement `evaluate`.
    Before they do, the splits are screened (vislm/tasks/screen.py): text cleaned, and the
    training split's bad samples dropped and counted in `self.bad_data`, or raised, as
    data.on_error says; the other splits raise on the first bad sample.
    """

    name = "task"

    def __init__(self, cfg: Config, tokenizer: TextTokenizer, splits: Dict[str, SplitRecords]):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.splits = splits
        self.transform = make_transform(cfg)
        # One cache for all splits: an image decoded once is never decoded again.
        self.cache = make_cache(cfg.data)
        # The last evaluation's per-item outputs, for reports (captions, answers).
        self.predictions: Dict[str, list] = {}
        self.bad_data = BadData.from_config(cfg.data)
        self._screen(splits.get(cfg.data.train_split))

    def _screen(self, train: SplitRecords | None) -> None:
        for split in self.splits.values():
            if split is not train:
                screen_text(split, BadData("raise"))  # evaluation never skips
        if train is None:
            return
        total = count_samples(train)
        screen_text(train, self.bad_data)
        # Decodes every training image now when they are cached (see preload).
        screen_images(train, self.bad_data, self.transform, self.cache)
        self.bad_data.check(total)

    def training_data(self):
        """The training set and its collate function. Without the image cache, images that
        fail to decode are only found in training: under data.on_error=skip they are then
        replaced and counted (vislm/data/bad_data.py)."""
        if self.cache is None and self.bad_data.skipping:
            return SkippingDataset(self.train_dataset), SkippingCollate(self.collate)
        return self.train_dataset, self.collate

    def preload(self, image_paths) -> None:
        """Decode every training image once, up front, when images are cached.

        Shapes images are tiny, so this costs about a second for 4,000 of them, saves the
        decoding every epoch, and finds an unreadable file before the first step.
        """
        if self.cache is not None:
            self.cache.preload(dict.fromkeys(str(p) for p in image_paths), self.transform)

    def model_kwargs(self) -> dict:
        """Task-specific arguments of the model factory (e.g. the number of answers)."""
        return {}

    def state(self) -> dict:
        """What must be saved with the model to use it later (e.g. the answer vocabulary)."""
        return {}

    def evaluate(self, model: torch.nn.Module, split: str) -> Dict[str, float]:
        raise NotImplementedError

    def batches(self, dataset: Dataset, collate) -> Iterator[dict]:
        loader = DataLoader(dataset, batch_size=self.cfg.eval.batch_size, shuffle=False,
                            collate_fn=collate, num_workers=self.cfg.data.num_workers)
        yield from loader


def stack_images(items: List[dict]) -> dict:
    return {
        "pixel_values": torch.stack([it["image"] for it in items]),
        "image_ids": torch.tensor([it["image_id"] for it in items], dtype=torch.long),
    }


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
