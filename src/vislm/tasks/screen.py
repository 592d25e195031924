"""Screen the records of a split before a task uses them: clean the text, and find the
samples that cannot be used, under the run's bad-data policy (vislm/data/bad_data.py).

A sample is a caption or a question. It is bad when its text is empty once cleaned
(vislm/data/text.py), when a question has no answer left, or when its image is missing or
does not decode; a bad image takes all its captions and questions with it. Images are
decoded here only when they are cached (data.cache_images): then every failure is known
before the first step. Otherwise only missing files are found here, and the rest when a
batch loads them (SkippingDataset).

A caption left blank in its annotation file is one bad sample too: its reader keeps it and
says where it is (CaptionRecord.blank), and the message names that file, record and field.

Not screened: a malformed annotation file (missing fields, wrong types, repeated ids, a
question that is empty or only whitespace). Its reader refuses it whatever the policy, naming
the file and the record, because such a file is broken as a whole rather than one sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from vislm.data.bad_data import BadData
from vislm.data.collate import AnswerVocabulary
from vislm.data.datasets import ImageCache, Transform
from vislm.data.formats.vqav2 import VQARecord
from vislm.data.text import clean_text
from vislm.errors import DataError
from vislm.metrics.vqa import normalize_answer
from vislm.tasks.data import SplitRecords


# Reasons of the samples dropped here, as the summary groups them.
EMPTY_CAPTION = "caption empty once control characters are removed"
BLANK_CAPTION = "caption empty or only whitespace in its annotation file"
EMPTY_QUESTION = "question empty once control characters are removed"
NO_ANSWER = "no answer left once control characters are removed"
OUTSIDE_VOCABULARY = "answer outside the answer vocabulary, zero target"


def count_samples(split: SplitRecords) -> int:
    """Captions and questions; an image with neither counts once (retrieval galleries)."""
    captions = sum(max(1, len(record.captions)) for record in split.captions)
    return captions + len(split.questions)


def screen_text(split: SplitRecords, bad: BadData) -> None:
    """Clean every caption, question and answer in place; drop (or raise on) empty ones."""
    for record in split.captions:
        kept = []
        for index, caption in enumerate(record.captions):
            text = clean_text(caption)
            if text:
                kept.append(text)
            elif index in record.blank:
                bad.skip(record.blank[index], reason=BLANK_CAPTION)
            else:
                bad.skip(f"{record.image_path}: {EMPTY_CAPTION} (caption {index} of image id "
                         f"{record.image_id}: {caption[:40]!r})", reason=EMPTY_CAPTION)
        record.captions, record.blank = kept, {}  # indices into the old list
    split.questions = [q for q in split.questions if _clean_question(q, bad)]


def _clean_question(record: VQARecord, bad: BadData) -> bool:
    question = clean_text(record.question)
    answers = [answer for answer in map(clean_text, record.answers) if answer]
    where = f"{record.image_path}: question id {record.question_id}"
    if not question:
        bad.skip(f"{where}: {EMPTY_QUESTION} ({record.question[:40]!r})", reason=EMPTY_QUESTION)
        return False
    if record.answers and not answers:
        bad.skip(f"{where}: {NO_ANSWER} ({record.answers[0][:40]!r})", reason=NO_ANSWER)
        return False
    record.question, record.answers = question, answers
    if record.multiple_choice_answer is not None:
        record.multiple_choice_answer = clean_text(record.multiple_choice_answer)
    return True


def screen_images(split: SplitRecords, bad: BadData, transform: Transform, cache: ImageCache | None) -> None:
    """Drop the records whose image is missing, or (cached) does not decode."""
    samples: dict[str, int] = {}  # image path -> captions and questions that use it
    for record in split.captions:
        samples[str(record.image_path)] = samples.get(str(record.image_path), 0) + max(1, len(record.captions))
    for question in split.questions:
        samples[str(question.image_path)] = samples.get(str(question.image_path), 0) + 1
    failed = set()
    for path, count in samples.items():
        try:
            _check_image(Path(path), transform, cache)
        except DataError as error:
            bad.skip(error, count)
            failed.add(path)
    if failed:
        split.captions = [r for r in split.captions if str(r.image_path) not in failed]
        split.questions = [q for q in split.questions if str(q.image_path) not in failed]


def _check_image(path: Path, transform: Transform, cache: ImageCache | None) -> None:
    if cache is not None:
        cache.preload([path], transform)  # decodes, so truncated or corrupt files fail here
    elif not path.is_file():
        raise DataError(f"{path}: image file not found")


def note_answers_outside(questions: Iterable[VQARecord], vocabulary: AnswerVocabulary, bad: BadData) -> None:
    """Count training questions none of whose answers is in the vocabulary: their target
    is all zeros (AnswerVocabulary.scores), so they teach the model nothing but "not these"."""
    for record in questions:
        if record.answers and not any(normalize_answer(a) in vocabulary.index for a in record.answers):
            bad.note(f"{record.image_path}: {OUTSIDE_VOCABULARY} (question id {record.question_id}: "
                     f"{record.answers[0][:40]!r})", OUTSIDE_VOCABULARY)
