"""What every task shares: the data of each split, the tokenizer, the batching for evaluation."""

from __future__ import annotations

from typing import Dict, Iterator, List

import torch
from torch.utils.data import DataLoader, Dataset

from vislm.config import Config
from vislm.data.tokenizer import TextTokenizer
from vislm.tasks.data import SplitRecords, make_cache, make_transform


class Task:
    """A task owns its training data, its collate function and its evaluation.

    Subclasses set `self.train_dataset` and `self.collate`, and implement `evaluate`.
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
