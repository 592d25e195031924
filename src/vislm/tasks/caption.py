"""Image captioning: train a decoder on captions, evaluate generated captions."""

from __future__ import annotations

from typing import Dict

import torch

from vislm.data.collate import CaptionCollator
from vislm.data.datasets import CaptionPairs, ImageSet
from vislm.data.shapes import caption_is_faithful
from vislm.metrics.caption import caption_scores, perplexity
from vislm.tasks.base import Task, model_device, stack_images


class CaptionTask(Task):
    name = "caption"

    def __init__(self, cfg, tokenizer, splits):
        super().__init__(cfg, tokenizer, splits)
        self.collate = CaptionCollator(tokenizer, cfg.data.max_text_len)
        self.train_dataset = CaptionPairs(splits[cfg.data.train_split].captions, self.transform, self.cache)
        self.preload(r.image_path for r in splits[cfg.data.train_split].captions)

    def decoding_options(self) -> dict:
        beams = self.cfg.eval.num_beams
        return {"num_beams": beams, "length_penalty": self.cfg.eval.length_penalty} if beams > 1 else {}

    @torch.no_grad()
    def generate_captions(self, model, split: str) -> Dict[int, str]:
        records = self.splits[split].captions
        device = model_device(model)
        captions: Dict[int, str] = {}
        for batch in self.batches(ImageSet(records, self.transform, self.cache), stack_images):
            generated = model.generate(batch["pixel_values"].to(device),
                                       max_new_tokens=self.cfg.eval.max_new_tokens,
                                       bos_id=self.tokenizer.bos_id, eos_id=self.tokenizer.eos_id,
                                       **self.decoding_options())
            for image_id, ids in zip(batch["image_ids"].tolist(), generated.tolist()):
                captions[image_id] = self.tokenizer.decode(ids)
        return captions

    @torch.no_grad()
    def caption_perplexity(self, model, split: str) -> float:
        """exp of the mean next-token NLL over every reference caption of the split.

        This is how much the image helps the language model: the same number for a
        text-only model says what the captions alone let it predict.
        """
        device = model_device(model)
        total_nll, total_tokens = 0.0, 0
        pairs = CaptionPairs(self.splits[split].captions, self.transform, self.cache)
        for batch in self.batches(pairs, self.collate):
            batch = {k: v.to(device) for k, v in batch.items()}
            # Each batch's loss is a mean over its target tokens (all but BOS), so weight by them.
            tokens = int(batch["attention_mask"][:, 1:].sum())
            total_nll += float(model(batch)["lm_loss"]) * tokens
            total_tokens += tokens
        return perplexity(total_nll / total_tokens)

    def evaluate(self, model, split: str) -> Dict[str, float]:
        records = self.splits[split].captions
        metrics = {"perplexity": self.caption_perplexity(model, split)}
        if not hasattr(model, "generate"):
            return metrics  # a language model without an image cannot caption one
        predictions = self.generate_captions(model, split)
        references = {r.image_id: r.captions for r in records}
        scores = caption_scores(predictions, references, meteor=self.cfg.eval.meteor)
        metrics.update({key: scores[key] for key in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")})
        metrics.update({key: scores[key] for key in scores if key.startswith("BLEU-") and key != "BLEU-4"})
        scenes = self.splits[split].scenes
        if scenes:
            faithful = [caption_is_faithful(predictions[i], scenes[i]) for i in predictions]
            metrics["faithfulness"] = sum(faithful) / len(faithful)
        self.predictions[split] = [
            {"image_id": r.image_id, "image_path": str(r.image_path), "caption": predictions[r.image_id]}
            for r in records
        ]
        return metrics
