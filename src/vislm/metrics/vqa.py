"""VQA accuracy, re-implemented from the official VQAv2 evaluation (`vqaEval.py`).

The official metric gives a predicted answer, for each of the ten leave-one-out subsets
of the ten human answers, min(#humans in the subset who gave that answer / 3, 1), and
averages the ten. Answers are compared after the official normalisation below, which we
reproduce quirk for quirk so that numbers match the evaluation server.

`exact_match_accuracy` covers single-answer sets (easy-VQA, VQA-RAD) and
`answer_soft_scores` gives the VQAv2 soft training target for one question.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Dict, Hashable, Iterable, List, Mapping, Sequence

from vislm.errors import DataError

# ---------------------------------------------------------------------------
# The official normalisation tables, copied value for value from vqaEval.py.
# ---------------------------------------------------------------------------

# Keys such as "Im" or "Id've" hold capitals, but the official code looks words up only
# after lower-casing them, so those entries never fire. We keep them to stay identical.
CONTRACTIONS: Dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't",
    "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd",
    "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}

NUMBER_WORDS: Dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

ARTICLES = ("a", "an", "the")

# Neither "." nor ":" nor "'" is in the list: periods have their own rule below, and
# colons and apostrophes survive normalisation.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
               ">", "<", "@", "`", ",", "?", "!")

# The official pattern is "(?!<=\d)(\.)(?!\d)". Its first group was meant as a
# look-behind but is a look-ahead for the text "<=digit", which can never start at a
# ".", so in effect: a period is removed unless a digit follows it ("3.5" keeps it).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# The official code passes re.UNICODE (= 32) as the third positional argument of
# Pattern.sub, which is `count`: at most 32 periods are stripped. We do the same.
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)


def _process_punctuation(text: str) -> str:
    """The official processPunctuation.

    Whether a mark is deleted or turned into a space is decided on the *input* text: a
    mark next to a space is deleted, any other occurrence becomes a space; and if the
    text holds a digit-comma-digit anywhere (as in "10,000"), every mark is deleted.
    """
    out = text
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, _OFFICIAL_PERIOD_COUNT)


def _process_digit_article(text: str) -> str:
    """The official processDigitArticle: lower-case, number words to digits, drop
    articles, then expand apostrophe-less contractions ("dont" -> "don't")."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """Normalise an answer exactly as the official evaluation treats a *prediction*."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(answer))


def _leave_one_out_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Mean over the leave-one-out subsets of min(#matches in the subset / 3, 1).

    The official code removes the held-out answer record by dict equality; VQAv2 answer
    records carry a unique answer_id, so that is the same as removing by position.
    """
    matches = sum(answer == prediction for answer in human_answers)
    total = 0.0
    for held_out in human_answers:
        others = matches - (held_out == prediction)
        total += min(1.0, others / 3)
    return total / len(human_answers)


def _official_question_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Accuracy of one raw prediction on one question, as vqaEval.evaluate scores it."""
    prediction = normalize_answer(prediction)
    # Subtle, and kept on purpose: human answers are NOT normalised like the prediction.
    # They pass through processPunctuation only, and only when the humans disagree
    # (more than one distinct raw string); no strip, no lower-casing, no number words.
    # VQAv2's released answers are already normalised, so this rarely matters there.
    if len(set(human_answers)) > 1:
        human_answers = [_process_punctuation(a) for a in human_answers]
    return _leave_one_out_accuracy(prediction, human_answers)


def answer_soft_scores(answers: Sequence[str]) -> Dict[str, float]:
    """VQAv2 soft target: for each distinct normalised answer, the official accuracy a
    prediction of exactly that answer would get against `answers`.

    Both sides are normalised with `normalize_answer` (unlike the evaluation's human
    side, see `_official_question_accuracy`) so that targets line up with an answer
    vocabulary built from normalised answers. With ten answers, an answer given by
    1, 2, 3 or 4+ humans scores 0.3, 0.6, 0.9 or 1.0.
    """
    if not answers:
        raise DataError("answer_soft_scores: the answers list is empty")
    normalised = [normalize_answer(a) for a in answers]
    return {a: _leave_one_out_accuracy(a, normalised) for a in Counter(normalised)}


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def _few(ids: Iterable[Hashable], limit: int = 5) -> str:
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _check_prediction_ids(predictions: Mapping, known_ids: Iterable[Hashable],
                          what: str, allow_missing: bool) -> None:
    known = set(known_ids)
    unknown = [q for q in predictions if q not in known]
    if unknown:
        raise DataError(f"predictions: question_id {_few(unknown)} not found in the {what}")
    if not allow_missing:
        missing = [q for q in known if q not in predictions]
        if missing:
            raise DataError(f"predictions: no answer for {len(missing)} question(s) in the "
                            f"{what}, e.g. question_id {_few(missing)} "
                            "(pass allow_missing=True to score only the predicted ones)")


def _check_answer(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: answer must be a string, got {type(value).__name__}")
    return value


def annotations_by_question(annotations: Sequence[Mapping]) -> Dict[Hashable, Mapping]:
    """Index VQAv2 annotation records by question_id, checking the fields we use."""
    by_question: Dict[Hashable, Mapping] = {}
    for index, record in enumerate(annotations):
        where = f"annotations[{index}]"
        if not isinstance(record, Mapping):
            raise DataError(f"{where}: expected an object, got {type(record).__name__}")
        for field in ("question_id", "answers", "answer_type", "question_type"):
            if field not in record:
                raise DataError(f"{where}: missing field '{field}'")
        answers = record["answers"]
        if not isinstance(answers, list) or not answers:
            raise DataError(f"{where}.answers: expected a non-empty list of answer records")
        for k, answer in enumerate(answers):
            if not isinstance(answer, Mapping) or "answer" not in answer:
                raise DataError(f"{where}.answers[{k}]: expected an object with 'answer'")
            _check_answer(answer["answer"], f"{where}.answers[{k}]")
        if record["question_id"] in by_question:
            raise DataError(f"{where}: duplicate question_id {record['question_id']!r}")
        by_question[record["question_id"]] = record
    return by_question


def vqa_accuracy(predictions: Mapping[Hashable, str], annotations: Sequence[Mapping],
                 allow_missing: bool = False) -> dict:
    """Official VQAv2 accuracy of `predictions` {question_id: answer}.

    `annotations` are VQAv2 annotation records. Returns accuracies as fractions in
    [0, 1] (the official script prints percentages rounded to 2 decimals):
    {"accuracy", "per_answer_type", "per_question_type", "n"}, over the predicted
    questions. Every annotated question needs a prediction unless `allow_missing`.
    """
    by_question = annotations_by_question(annotations)
    _check_prediction_ids(predictions, by_question, "annotations", allow_missing)
    if not predictions:
        raise DataError("predictions: no answers to score")

    per_question: List[float] = []
    by_answer_type: Dict[str, List[float]] = defaultdict(list)
    by_question_type: Dict[str, List[float]] = defaultdict(list)
    for question_id, prediction in predictions.items():
        _check_answer(prediction, f"predictions[{question_id!r}]")
        record = by_question[question_id]
        human_answers = [a["answer"] for a in record["answers"]]
        accuracy = _official_question_accuracy(prediction, human_answers)
        per_question.append(accuracy)
        by_answer_type[record["answer_type"]].append(accuracy)
        by_question_type[record["question_type"]].append(accuracy)

    return {
        "accuracy": _mean(per_question),
        "per_answer_type": {k: _mean(v) for k, v in by_answer_type.items()},
        "per_question_type": {k: _mean(v) for k, v in by_question_type.items()},
        "n": len(per_question),
    }


def exact_match_accuracy(predictions: Mapping[Hashable, str], answers: Mapping[Hashable, str],
                         groups: Mapping[Hashable, str] | None = None,
                         allow_missing: bool = False) -> dict:
    """Exact-match accuracy for datasets with one reference answer per question.

    Both sides go through `normalize_answer` (strip, lower-case, official punctuation,
    number-word and article handling), so "Two." matches "2". `groups` maps question ids
    to a label (e.g. VQA-RAD's OPEN/CLOSED) for a per-group breakdown. Returns
    {"accuracy", "per_group", "n"} with fractions in [0, 1].
    """
    _check_prediction_ids(predictions, answers, "answers", allow_missing)
    if not predictions:
        raise DataError("predictions: no answers to score")
    if groups is not None:
        ungrouped = [q for q in predictions if q not in groups]
        if ungrouped:
            raise DataError(f"groups: no group for question_id {_few(ungrouped)}")

    hits: List[float] = []
    by_group: Dict[str, List[float]] = defaultdict(list)
    for question_id, prediction in predictions.items():
        predicted = normalize_answer(_check_answer(prediction, f"predictions[{question_id!r}]"))
        expected = normalize_answer(_check_answer(answers[question_id], f"answers[{question_id!r}]"))
        hit = float(predicted == expected)
        hits.append(hit)
        if groups is not None:
            by_group[groups[question_id]].append(hit)

    return {
        "accuracy": _mean(hits),
        "per_group": {k: _mean(v) for k, v in by_group.items()},
        "n": len(hits),
    }
