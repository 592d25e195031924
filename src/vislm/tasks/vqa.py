"""Visual question answering as classification over the training answers."""

from __future__ import annotations

from typing import Dict

import torch

from vislm.data.collate import AnswerVocabulary, VQACollator
from vislm.data.datasets import VQAItems
from vislm.metrics.vqa import vqa_accuracy
from vislm.tasks.base import Task, model_device
from vislm.tasks.screen import note_answers_outside


class VQATask(Task):
    name = "vqa"

    def __init__(self, cfg, tokenizer, splits, answers=None):
        super().__init__(cfg, tokenizer, splits)
        train = splits.get(cfg.data.train_split)
        if answers is None:
            answers = AnswerVocabulary.from_answers([q.answers for q in train.questions])
        self.vocabulary = answers if isinstance(answers, AnswerVocabulary) else AnswerVocabulary(answers)
        self.collate = VQACollator(tokenizer, cfg.data.max_text_len, self.vocabulary)
        self.train_dataset = VQAItems(train.questions, self.transform, self.cache) if train else None
        if train:
            self.preload(q.image_path for q in train.questions)
            note_answers_outside(train.questions, self.vocabulary, self.bad_data)

    def model_kwargs(self) -> dict:
        return {"num_answers": len(self.vocabulary)}

    def state(self) -> dict:
        return {"answers": self.vocabulary.answers}

    @torch.no_grad()
    def answer(self, model, split: str) -> Dict[int, str]:
        records = self.splits[split].questions
        device = model_device(model)
        predictions: Dict[int, str] = {}
        for batch in self.batches(VQAItems(records, self.transform, self.cache), self.collate):
            logits = model.predict(batch["pixel_values"].to(device), batch["input_ids"].to(device),
                                   batch["attention_mask"].to(device))
            for qid, index in zip(batch["question_ids"].tolist(), logits.argmax(-1).tolist()):
                predictions[qid] = self.vocabulary.answers[index]
        return predictions

    def evaluate(self, model, split: str) -> Dict[str, float]:
        """Overall "accuracy", "accuracy/<answer_type>" (VQA-RAD: OPEN and CLOSED; easy-VQA:
        yes/no, shape, color) and "accuracy/qtype/<question_type>" where records have one."""
        records = self.splits[split].questions
        predictions = self.answer(model, split)
        annotations = [
            {"question_id": r.question_id, "answers": [{"answer": a} for a in r.answers],
             "answer_type": _label(r.answer_type), "question_type": _label(r.question_type)}
            for r in records
        ]
        result = vqa_accuracy(predictions, annotations)
        by_id = {r.question_id: r for r in records}
        self.predictions[split] = [
            {"question_id": qid, "image_id": by_id[qid].image_id, "image_path": str(by_id[qid].image_path),
             "question": by_id[qid].question, "answer": answer,
             "truth": by_id[qid].multiple_choice_answer}
            for qid, answer in predictions.items()
        ]
        metrics = {"accuracy": result["accuracy"]}
        metrics.update({f"accuracy/{k}": v for k, v in result["per_answer_type"].items()})
        metrics.update({f"accuracy/qtype/{k}": v for k, v in result["per_question_type"].items()
                        if k is not None})
        return metrics


def _label(value: str | None) -> str | None:
    # Some releases pad labels (VQA-RAD has "CLOSED "): strip here too, so "CLOSED" and
    # "CLOSED " are one group whichever reader produced the records.
    return value.strip() if isinstance(value, str) else value
