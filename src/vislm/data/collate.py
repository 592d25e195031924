"""Turn lists of dataset items into the dict batches every model takes.

Batch keys: "pixel_values" (B,3,H,W), "input_ids"/"attention_mask" (B,T) for the caption
or question, "image_ids" (B,) so that contrastive losses know which captions share an image,
and for VQA "answer_scores" (B, num_answers): the VQAv2 soft targets.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from vislm.data.tokenizer import TextTokenizer
from vislm.metrics.vqa import answer_soft_scores, normalize_answer


class CaptionCollator:
    """Image + caption pairs (captioning, retrieval)."""

    def __init__(self, tokenizer: TextTokenizer, max_len: int):
        self.tokenizer = tokenizer
        self.max_len = max_len

    def __call__(self, items: List[dict]) -> Dict[str, torch.Tensor]:
        input_ids, attention_mask = self.tokenizer([it["text"] for it in items], self.max_len)
        return {
            "pixel_values": torch.stack([it["image"] for it in items]),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "image_ids": torch.tensor([it["image_id"] for it in items], dtype=torch.long),
        }


class AnswerVocabulary:
    """The answers a VQA classifier chooses from: the most frequent training answers."""

    def __init__(self, answers: Sequence[str]):
        self.answers = list(answers)
        self.index = {a: i for i, a in enumerate(self.answers)}

    @classmethod
    def from_answers(cls, answer_lists: Sequence[Sequence[str]], max_size: int = 3000) -> "AnswerVocabulary":
        counts: Dict[str, int] = {}
        for answers in answer_lists:
            for answer in answers:
                key = normalize_answer(answer)
                counts[key] = counts.get(key, 0) + 1
        # Most frequent first; ties broken alphabetically so the vocabulary is deterministic.
        ranked = sorted(counts, key=lambda a: (-counts[a], a))
        return cls(ranked[:max_size])

    def __len__(self) -> int:
        return len(self.answers)

    def scores(self, answers: Sequence[str]) -> torch.Tensor:
        """Soft target over the vocabulary; answers outside it contribute nothing."""
        target = torch.zeros(len(self.answers))
        for answer, score in answer_soft_scores(list(answers)).items():
            position = self.index.get(answer)
            if position is not None:
                target[position] = score
        return target


class VQACollator:
    """Image + question (+ human answers when training)."""

    def __init__(self, tokenizer: TextTokenizer, max_len: int, vocabulary: AnswerVocabulary):
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.vocabulary = vocabulary

    def __call__(self, items: List[dict]) -> Dict[str, torch.Tensor]:
        input_ids, attention_mask = self.tokenizer([it["question"] for it in items], self.max_len)
        batch = {
            "pixel_values": torch.stack([it["image"] for it in items]),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "image_ids": torch.tensor([it["image_id"] for it in items], dtype=torch.long),
            "question_ids": torch.tensor([it["question_id"] for it in items], dtype=torch.long),
        }
        if all(it.get("answers") for it in items):
            batch["answer_scores"] = torch.stack([self.vocabulary.scores(it["answers"]) for it in items])
        return batch
