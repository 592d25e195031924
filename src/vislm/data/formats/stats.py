"""Summaries of a data set's records: what `vislm data stats` prints.

A summary is for looking at a data set before training on it, so it never fails on
missing images: it counts them and names the first few.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from vislm.data.formats.coco import CaptionRecord
from vislm.data.formats.vqav2 import VQARecord
from vislm.metrics.vqa import normalize_answer

SHOWN_MISSING = 5


def summarize(
    captions: list[CaptionRecord], questions: list[VQARecord], missing_images: list[str] | None = None,
    top_answers: int = 10,
) -> dict[str, Any]:
    """{"images", "captions", "questions", "caption_words", "top_answers", "answer_types", "missing_images"}.

    images counts distinct image files over captions and questions. caption_words is
    {min, mean, median, max} of whitespace-separated words (None without captions).
    top_answers counts each question once, by its multiple_choice_answer (else its most
    frequent answer), normalised like the VQA metric so "Yes" and "yes" are one answer.
    missing_images is checked on disk unless given (streamed shards know it themselves).
    """
    image_paths = list(dict.fromkeys([r.image_path for r in captions] + [r.image_path for r in questions]))
    if missing_images is None:
        missing_images = [str(path) for path in image_paths if not Path(path).is_file()]
    lengths = [len(caption.split()) for record in captions for caption in record.captions]
    answers = Counter(normalize_answer(_main_answer(record)) for record in questions if record.answers)
    return {
        "images": len(image_paths),
        "captions": len(lengths),
        "questions": len(questions),
        "caption_words": _spread(lengths),
        "top_answers": dict(answers.most_common(top_answers)),
        "answer_types": dict(Counter(record.answer_type or "unknown" for record in questions).most_common()),
        "missing_images": {"count": len(missing_images), "first": missing_images[:SHOWN_MISSING]},
    }


def _main_answer(record: VQARecord) -> str:
    return record.multiple_choice_answer or Counter(record.answers).most_common(1)[0][0]


def _spread(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "mean": round(statistics.fmean(values), 3),
            "median": statistics.median(values), "max": max(values)}
