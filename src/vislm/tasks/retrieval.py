"""Image-text retrieval with a dual encoder: rank images for captions and captions for images
(optionally re-ranked by an ITM head, vislm/tasks/rerank.py)."""

from __future__ import annotations

import logging
import time
from typing import Dict, List, Tuple

import torch

from vislm.data.collate import CaptionCollator
from vislm.data.datasets import CaptionPairs, ImageSet
from vislm.metrics.retrieval import retrieval_metrics_from_embeddings
from vislm.tasks.base import Task, model_device, stack_images
from vislm.tasks.rerank import has_itm_head, rerank_split

log = logging.getLogger(__name__)


class RetrievalTask(Task):
    name = "retrieval"

    def __init__(self, cfg, tokenizer, splits):
        super().__init__(cfg, tokenizer, splits)
        self.collate = CaptionCollator(tokenizer, cfg.data.max_text_len)
        self.train_dataset = CaptionPairs(splits[cfg.data.train_split].captions, self.transform, self.cache)
        self.preload(r.image_path for r in splits[cfg.data.train_split].captions)

    @torch.no_grad()
    def embed(self, model, split: str):
        records = self.splits[split].captions
        device = model_device(model)
        image_emb = [model.encode_image(b["pixel_values"].to(device))
                     for b in self.batches(ImageSet(records, self.transform, self.cache), stack_images)]
        texts, owners = self.captions(split)
        text_emb = []
        size = self.cfg.eval.batch_size
        for start in range(0, len(texts), size):
            ids, mask = self.tokenizer(texts[start:start + size], self.cfg.data.max_text_len)
            text_emb.append(model.encode_text(ids.to(device), mask.to(device)))
        return torch.cat(image_emb).float(), torch.cat(text_emb).float(), torch.tensor(owners)

    def captions(self, split: str) -> Tuple[List[str], List[int]]:
        """Every caption of `split`, and the index of its image in the split's records."""
        texts, owners = [], []
        for index, record in enumerate(self.splits[split].captions):
            texts.extend(record.captions)
            owners.extend([index] * len(record.captions))
        return texts, owners

    def evaluate(self, model, split: str) -> Dict[str, float]:
        """ITC metrics; with eval.rerank_k > 0 and a model with an ITM head, also the same
        recalls after ITM re-ranks each query's top k ("itm_" keys, vislm/tasks/rerank.py)
        and the seconds each ranking took."""
        start = time.perf_counter()
        image_emb, text_emb, owners = self.embed(model, split)
        metrics = retrieval_metrics_from_embeddings(image_emb, text_emb, owners)
        k = self.cfg.eval.rerank_k
        if k <= 0:
            return metrics
        if not has_itm_head(model):
            # Warn rather than fail: this runs after training, and losing a run to a
            # setting that only adds a report would be worse.
            log.warning("eval.rerank_k=%d ignored: %s has no ITM head", k, type(model).__name__)
            return metrics
        metrics["itc_seconds"] = time.perf_counter() - start
        metrics.update(rerank_split(self, model, split, image_emb, text_emb, owners, k))
        return metrics
