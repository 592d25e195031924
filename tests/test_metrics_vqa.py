"""VQA metrics against hand-worked cases and an official-style reference written here."""

import json
import random
import re

import pytest

from vislm.errors import DataError
from vislm.metrics.files import eval_vqa_files
from vislm.metrics.vqa import (CONTRACTIONS, answer_soft_scores, exact_match_accuracy,
                               normalize_answer, vqa_accuracy)


class OfficialStyleEval:
    """The logic of the official vqaEval.py, restated loop by loop: answer records are
    mutated in place, held-out answers are removed by dict equality, and the period
    regex is applied with re.UNICODE in the `count` position, all as there."""

    punct = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
             ">", "<", "@", "`", ",", "?", "!"]
    manual_map = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3",
                  "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
                  "nine": "9", "ten": "10"}
    articles = ["a", "an", "the"]
    period_strip = re.compile(r"(?!<=\d)(\.)(?!\d)")
    comma_strip = re.compile(r"(\d)(\,)(\d)")

    def process_punctuation(self, in_text):
        out_text = in_text
        for p in self.punct:
            if (p + " " in in_text or " " + p in in_text) or (
                    re.search(self.comma_strip, in_text) is not None):
                out_text = out_text.replace(p, "")
            else:
                out_text = out_text.replace(p, " ")
        return self.period_strip.sub("", out_text, re.UNICODE)

    def process_digit_article(self, in_text):
        out_text = []
        for word in in_text.lower().split():
            word = self.manual_map.setdefault(word, word)
            if word not in self.articles:
                out_text.append(word)
        for i, word in enumerate(out_text):
            if word in CONTRACTIONS:
                out_text[i] = CONTRACTIONS[word]
        return " ".join(out_text)

    def evaluate(self, predictions, annotations):
        acc_qa, acc_ans_type, acc_ques_type = [], {}, {}
        gts = {a["question_id"]: {**a, "answers": [dict(x) for x in a["answers"]]}
               for a in annotations}
        for ques_id, res_ans in predictions.items():
            res_ans = res_ans.replace("\n", " ").replace("\t", " ").strip()
            res_ans = self.process_digit_article(self.process_punctuation(res_ans))
            gt_answers = [ans["answer"] for ans in gts[ques_id]["answers"]]
            if len(set(gt_answers)) > 1:
                for ans_dic in gts[ques_id]["answers"]:
                    ans_dic["answer"] = self.process_punctuation(ans_dic["answer"])
            gt_acc = []
            for gt_ans_datum in gts[ques_id]["answers"]:
                other = [item for item in gts[ques_id]["answers"] if item != gt_ans_datum]
                matching = [item for item in other if item["answer"] == res_ans]
                gt_acc.append(min(1, float(len(matching)) / 3))
            avg = float(sum(gt_acc)) / len(gt_acc)
            acc_qa.append(avg)
            acc_ans_type.setdefault(gts[ques_id]["answer_type"], []).append(avg)
            acc_ques_type.setdefault(gts[ques_id]["question_type"], []).append(avg)
        mean = lambda xs: float(sum(xs)) / len(xs)
        return {"accuracy": mean(acc_qa),
                "per_answer_type": {k: mean(v) for k, v in acc_ans_type.items()},
                "per_question_type": {k: mean(v) for k, v in acc_ques_type.items()},
                "n": len(acc_qa)}


def record(question_id, answers, answer_type="other", question_type="what is"):
    return {"question_id": question_id, "answer_type": answer_type,
            "question_type": question_type, "image_id": 1,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                        for i, a in enumerate(answers)]}


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"),
    ("the dog.", "dog"),
    ("yes!", "yes"),
    ("dont", "don't"),
    ("10,000", "10000"),
    ("a cat", "cat"),
    ("3.5", "3.5"),                   # a period before a digit stays
    ("x, y", "x y"),                  # a mark next to a space is deleted...
    ("black/white", "black white"),   # ...any other becomes a space
    ("  None\t", "0"),
    ("it's", "it's"),                 # apostrophes are not in the list
    ("Im", "im"),                     # the "Im" key is capitalised, so never matches
    ("." * 40, "." * 8),              # only 32 periods are stripped (count=re.UNICODE)
])
def test_normalize_answer_matches_official_quirks(raw, expected):
    assert normalize_answer(raw) == expected
    reference = OfficialStyleEval()
    text = raw.replace("\n", " ").replace("\t", " ").strip()
    assert reference.process_digit_article(reference.process_punctuation(text)) == expected


def test_contraction_table_spot_checks():
    assert CONTRACTIONS["dont"] == "don't"
    assert CONTRACTIONS["yall'd've"] == "y'all'd've"
    assert CONTRACTIONS["somebody'd"] == "somebodyd"  # the official table has it backwards
    assert len(CONTRACTIONS) == 120


def test_hand_worked_accuracies():
    annotations = [
        # 3 of 10 say "2", 7 say "two"; "Two" normalises to "2". Held out a "2": 2/3;
        # held out a "two": 3/3. (3 * 2/3 + 7 * 1) / 10 = 0.9
        record(1, ["2"] * 3 + ["two"] * 7, "number", "how many"),
        # One "yes" among ten: 9 subsets hold it (1/3), one doesn't (0) -> 0.3
        record(2, ["yes"] + ["no"] * 9, "yes/no", "is the"),
        # All ten agree on "yes!", so the humans' answers are not normalised and the
        # normalised prediction "yes" matches none of them: 0.
        record(3, ["yes!"] * 10, "yes/no", "is the"),
        # They disagree, so "yes!" becomes "yes " (a space, not stripped): still 0.
        record(4, ["yes!"] * 9 + ["no"], "yes/no", "is there"),
    ]
    predictions = {1: "Two", 2: "Yes", 3: "yes", 4: "yes"}
    result = vqa_accuracy(predictions, annotations)
    assert result["n"] == 4
    assert result["accuracy"] == pytest.approx((0.9 + 0.3 + 0 + 0) / 4)
    assert result["per_answer_type"] == pytest.approx({"number": 0.9, "yes/no": 0.1})
    assert result["per_question_type"] == pytest.approx(
        {"how many": 0.9, "is the": 0.15, "is there": 0.0})


POOL = ["Two", "2", "two", "the dog.", "dog", "yes!", "yes", "Yes", "no", "dont",
        "don't", "10,000", "10000", "a cat", "cat", "3.5", "black/white", "black white",
        "red, white", "none", "0", "it's", "x - y", "(left)", "left", "a red car."]


def random_question(question_id, rng):
    # Few distinct answers per question, so that disagreement and agreement both occur.
    choices = rng.sample(POOL, rng.randint(1, 3))
    answers = [rng.choice(choices) for _ in range(10)]
    return record(question_id, answers, rng.choice(["yes/no", "number", "other"]),
                  rng.choice(["what color", "how many", "is the"]))


def test_parity_with_official_style_reference_on_random_questions():
    rng = random.Random(0)
    annotations = [random_question(q, rng) for q in range(300)]
    predictions = {q: rng.choice(POOL) for q in range(300)}
    got = vqa_accuracy(predictions, annotations)
    expected = OfficialStyleEval().evaluate(predictions, annotations)
    assert got["n"] == expected["n"] == 300
    assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert got["per_answer_type"] == pytest.approx(expected["per_answer_type"], abs=1e-12)
    assert got["per_question_type"] == pytest.approx(expected["per_question_type"], abs=1e-12)
    assert 0.05 < got["accuracy"] < 0.95  # the pool produces both hits and misses


def test_missing_and_unknown_predictions():
    annotations = [record(q, ["cat"] * 10) for q in range(8)]
    with pytest.raises(DataError, match=r"no answer for 7 question\(s\).*0, 1, 2, 3, 4 and 2 more"):
        vqa_accuracy({7: "cat"}, annotations)
    result = vqa_accuracy({7: "cat", 3: "dog"}, annotations, allow_missing=True)
    assert (result["accuracy"], result["n"]) == (0.5, 2)
    with pytest.raises(DataError, match="question_id 99 not found in the annotations"):
        vqa_accuracy({99: "cat"}, annotations, allow_missing=True)


def test_malformed_annotations_are_data_errors():
    with pytest.raises(DataError, match=r"annotations\[0\]: missing field 'answer_type'"):
        vqa_accuracy({1: "a"}, [{"question_id": 1, "answers": [{"answer": "a"}],
                                 "question_type": "what"}])
    with pytest.raises(DataError, match="duplicate question_id 1"):
        vqa_accuracy({1: "a"}, [record(1, ["a"]), record(1, ["a"])])


def test_answer_soft_scores():
    answers = ["two", "2", "Two", "2 ", "yes", "yes", "no", "red", "red", "red."]
    # "2" x4 after normalisation, "yes" x2, "no" x1, "red" x3.
    assert answer_soft_scores(answers) == pytest.approx(
        {"2": 1.0, "yes": 0.6, "no": 0.3, "red": 0.9})
    # Each score is what vqa_accuracy would give that answer as a prediction.
    annotations = [record(1, ["2"] * 4 + ["yes"] * 2 + ["no"] + ["red"] * 3)]
    for answer, score in answer_soft_scores(answers).items():
        assert vqa_accuracy({1: answer}, annotations)["accuracy"] == pytest.approx(score)


def test_exact_match_with_groups():
    predictions = {1: "Yes.", 2: "two", 3: "left lung", 4: "the heart"}
    answers = {1: "yes", 2: "2", 3: "right lung", 4: "Heart"}
    groups = {1: "CLOSED", 2: "OPEN", 3: "OPEN", 4: "OPEN"}
    result = exact_match_accuracy(predictions, answers, groups)
    assert result["accuracy"] == 0.75
    assert result["per_group"] == pytest.approx({"CLOSED": 1.0, "OPEN": 2 / 3})
    assert result["n"] == 4
    with pytest.raises(DataError, match="no group for question_id 4"):
        exact_match_accuracy(predictions, answers, {1: "CLOSED", 2: "OPEN", 3: "OPEN"})
    with pytest.raises(DataError, match="no answer for 1 question"):
        exact_match_accuracy({1: "yes"}, {1: "yes", 2: "no"})


def write_vqa_files(tmp_path, annotations, predictions):
    questions = {"questions": [{"question_id": a["question_id"], "image_id": 1,
                                "question": "?"} for a in annotations]}
    files = {"questions.json": questions, "annotations.json": {"annotations": annotations},
             "results.json": [{"question_id": q, "answer": a} for q, a in predictions.items()]}
    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content))
    return tmp_path / "results.json", tmp_path / "questions.json", tmp_path / "annotations.json"


def test_vqa_files_match_official_style_reference(tmp_path):
    rng = random.Random(1)
    annotations = [random_question(q, rng) for q in range(50)]
    predictions = {q: rng.choice(POOL) for q in range(50)}
    got = eval_vqa_files(*write_vqa_files(tmp_path, annotations, predictions))
    expected = OfficialStyleEval().evaluate(predictions, annotations)
    assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert got["per_answer_type"] == pytest.approx(expected["per_answer_type"], abs=1e-12)
    assert got["per_question_type"] == pytest.approx(expected["per_question_type"], abs=1e-12)


def test_vqa_file_errors_name_file_and_field(tmp_path):
    annotations = [record(1, ["cat"] * 10), record(2, ["dog"] * 10)]
    results, questions, annotations_path = write_vqa_files(
        tmp_path, annotations, {1: "cat", 2: "dog"})
    with pytest.raises(DataError, match=r"missing.json: VQA questions file not found"):
        eval_vqa_files(results, tmp_path / "missing.json", annotations_path)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"question_id": 1, "answer": "cat"},\n{"question_id": 2 "answer": "dog"}]')
    with pytest.raises(DataError, match=r"bad.json: .*not valid JSON: .* line 2 column 19"):
        eval_vqa_files(bad, questions, annotations_path)
    bad.write_text('[{"question_id": 1, "answer": 3}]')
    with pytest.raises(DataError, match=r"bad.json: item 0.answer should be str, got int"):
        eval_vqa_files(bad, questions, annotations_path)
    bad.write_text('[{"question_id": 1, "answer": "cat"}]')
    with pytest.raises(DataError, match=r"bad.json: predictions: no answer for 1 question.*2"):
        eval_vqa_files(bad, questions, annotations_path)
    assert eval_vqa_files(bad, questions, annotations_path, allow_missing=True)["n"] == 1
    bad.write_text('{"questions": [{"question_id": 1}]}')
    with pytest.raises(DataError, match=r"annotations.json: question_id 2 is annotated but "
                                        r"not in the questions file"):
        eval_vqa_files(results, bad, annotations_path)
    bad.write_text('{"annotations": [{"question_id": 1, "answers": [], "answer_type": "x", '
                   '"question_type": "y"}, {"question_id": 2, "answers": []}]}')
    with pytest.raises(DataError, match=r"bad.json: annotations\[0\].answers: expected a "
                                        r"non-empty list"):
        eval_vqa_files(results, questions, bad)
