"""Image-text retrieval with a dual encoder: rank images for captions and captions for images."""

from __future__ import annotations

from typing import Dict

import torch

from vislm.data.collate import CaptionCollator
from vislm.data.datasets import CaptionPairs, ImageSet
from vislm.metrics.retrieval import retrieval_metrics_from_embeddings
from vislm.tasks.base import Task, model_device, stack_images


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
        texts, owners = [], []
        for index, record in enumerate(records):
            texts.extend(record.captions)
            owners.extend([index] * len(record.captions))
        text_emb = []
        size = self.cfg.eval.batch_size
        for start in range(0, len(texts), size):
            ids, mask = self.tokenizer(texts[start:start + size], self.cfg.data.max_text_len)
            text_emb.append(model.encode_text(ids.to(device), mask.to(device)))
        return torch.cat(image_emb).float(), torch.cat(text_emb).float(), torch.tensor(owners)

    def evaluate(self, model, split: str) -> Dict[str, float]:
        image_emb, text_emb, owners = self.embed(model, split)
        return retrieval_metrics_from_embeddings(image_emb, text_emb, owners)
