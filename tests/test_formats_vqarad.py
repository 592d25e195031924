"""VQA-RAD: fixtures in the published schema, and the real shared copy when it is there."""

import json

import pytest
from PIL import Image

from vislm.data.formats._json import stable_image_id
from vislm.data.formats.vqarad import default_vqarad_root, read_vqarad
from vislm.errors import DataError
from vislm.metrics.vqa import vqa_accuracy

TRAINSET = [
    {"qid": 1, "image_name": "synpic54610.jpg", "image_organ": "HEAD", "answer": "Yes", "answer_type": "CLOSED",
     "question_type": "PRES", "question": "Are regions of the brain infarcted?", "phrase_type": "freeform"},
    {"qid": 4, "image_name": "synpic28602.jpg", "image_organ": "CHEST", "answer": "ultrasound",
     "answer_type": "OPEN", "question_type": "MODALITY", "question": "What type of imaging is this?",
     "phrase_type": "freeform"},
    {"qid": 9, "image_name": "synpic28602.jpg", "image_organ": "CHEST", "answer": 2, "answer_type": "CLOSED ",
     "question_type": "COUNT", "question": "How many kidneys are there?", "phrase_type": "para"},
]


@pytest.fixture
def root(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("synpic54610.jpg", "synpic28602.jpg"):
        Image.new("L", (8, 8), 90).save(tmp_path / "images" / name, format="JPEG")
    (tmp_path / "trainset.json").write_text(json.dumps(TRAINSET))
    return tmp_path


def test_fixture_records(root):
    records = read_vqarad(root, "train")
    assert [r.question_id for r in records] == [1, 4, 9]
    # answer_type keeps OPEN/CLOSED for the per-type accuracy, trailing space stripped
    assert [r.answer_type for r in records] == ["CLOSED", "OPEN", "CLOSED"]
    assert records[2].answers == ["2"] * 10 and records[2].multiple_choice_answer == "2"
    assert records[0].answers == ["yes"] * 10 and records[0].multiple_choice_answer == "Yes"
    assert records[1].image_path == root / "images" / "synpic28602.jpg"
    assert records[1].image_id == records[2].image_id == stable_image_id("synpic28602.jpg")
    assert records[0].image_id != records[1].image_id


def test_published_answers_score_full_marks_with_the_vqav2_metric(root):
    records = read_vqarad(root, "train")
    annotations = [{"question_id": r.question_id, "answers": [{"answer": a} for a in r.answers],
                    "answer_type": r.answer_type, "question_type": r.question_type} for r in records]
    result = vqa_accuracy({r.question_id: r.multiple_choice_answer for r in records}, annotations)
    assert result["accuracy"] == 1.0 and result["per_answer_type"] == {"CLOSED": 1.0, "OPEN": 1.0}


def test_missing_split_file(root):
    with pytest.raises(DataError, match=r"testset.json: VQA-RAD question file not found"):
        read_vqarad(root, "test")


def test_unknown_split(root):
    with pytest.raises(DataError, match="unknown VQA-RAD split 'val'"):
        read_vqarad(root, "val")


def test_missing_image(root):
    (root / "images" / "synpic54610.jpg").unlink()
    with pytest.raises(DataError, match=r"trainset.json: \[0\] \(qid 1\) image file not found"):
        read_vqarad(root, "train")


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: d[0].pop("answer"), r"\[0\] is missing field 'answer'"),
        (lambda d: d[0].update(answer=["yes"]), r"\[0\].answer must be a string or an integer, got a list"),
        (lambda d: d[1].update(qid=1), r"\[1\] repeats qid 1"),
        (lambda d: d[2].update(answer_type=None), r"\[2\].answer_type must be a string, got null"),
        (lambda d: d[0].update(image_name="../synpic1.jpg"), r"\[0\].image_name must be a relative path inside"),
        (lambda d: d[0].update(image_name="/etc/passwd"), r"\[0\].image_name must be a relative path inside"),
    ],
)
def test_malformed_records(root, change, expected):
    data = json.loads(json.dumps(TRAINSET))
    change(data)
    (root / "trainset.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=expected) as error:
        read_vqarad(root, "train", check_files=False)
    assert str(error.value).startswith(str(root / "trainset.json"))


def test_not_a_list(root):
    (root / "trainset.json").write_text('{"qid": 1}')
    with pytest.raises(DataError, match="trainset.json: expected a JSON list at the top level"):
        read_vqarad(root, "train")


REAL_ROOT = default_vqarad_root()


@pytest.mark.skipif(REAL_ROOT is None, reason="VQA-RAD is not in ../shared/data/vqa_rad")
def test_real_vqarad_counts():
    train = read_vqarad(REAL_ROOT, "train")
    test = read_vqarad(REAL_ROOT, "test")
    assert (len(train), len(test)) == (3064, 451)
    assert {r.answer_type for r in train + test} == {"OPEN", "CLOSED"}
    assert len({r.image_id for r in train + test}) == 314
    assert all(isinstance(a, str) for r in train for a in r.answers)
