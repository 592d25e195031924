"""easy-VQA from the installed package: the real data, and the package's failures as DataErrors."""

import json
from pathlib import Path

import pytest
from PIL import Image

from vislm.data.formats.easyvqa import read_easyvqa
from vislm.errors import DataError

easy_vqa = pytest.importorskip("easy_vqa")


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """The package's functions, answering from two tiny questions in tmp_path."""
    image = tmp_path / "7.png"
    Image.new("RGB", (4, 4), "blue").save(image)
    questions = (["what color is the shape?", "is there a circle?"], ["blue", "no"], [7, 7])
    monkeypatch.setattr(easy_vqa, "get_test_questions", lambda: questions)
    monkeypatch.setattr(easy_vqa, "get_test_image_paths", lambda: {7: str(image)})
    return questions, image


def test_published_counts_and_conventions():
    train = read_easyvqa("train")
    test = read_easyvqa("test", check_files=False)
    assert (len(train), len(test)) == (38_575, 9_673)
    assert len({r.image_id for r in train}) == 4000 and len({r.image_id for r in test}) == 1000
    first = train[0]
    assert (first.question, first.answers, first.question_id) == ("what is the blue shape?", ["rectangle"] * 10, 0)
    assert first.image_path.name == f"{first.image_id}.png" and first.image_path.is_file()
    assert {r.answer_type for r in train} == {"yes/no", "shape", "color"}
    assert sum(r.answer_type == "yes/no" for r in train) == 28_407  # the package README's figure


def test_there_is_no_val_split():
    with pytest.raises(DataError, match="unknown split 'val'.*val_holdout"):
        read_easyvqa("val")


def test_fake_package_reads(fake_package):
    records = read_easyvqa("test")
    assert [(r.question_id, r.answers[0], r.answer_type) for r in records] == [
        (0, "blue", "color"), (1, "no", "yes/no")]


def test_missing_data_file_is_named(monkeypatch):
    def missing():
        raise FileNotFoundError(2, "No such file or directory", "/site/easy_vqa/data/test/questions.json")

    monkeypatch.setattr(easy_vqa, "get_test_questions", missing)
    with pytest.raises(DataError, match=r"^/site/easy_vqa/data/test/questions.json: easy-VQA data not found"):
        read_easyvqa("test")


def test_malformed_data_is_named(monkeypatch):
    def broken():
        raise json.JSONDecodeError("Expecting value", "[", 1)

    monkeypatch.setattr(easy_vqa, "get_test_questions", broken)
    with pytest.raises(DataError, match=r"test/questions.json: invalid JSON"):
        read_easyvqa("test")


@pytest.mark.parametrize(
    "questions, expected",
    [
        ((["q?"], ["blue", "red"], [7]), "1 questions but 2 answers"),
        ((["q?"], ["purple"], [7]), r"\[0\] has answer 'purple', which is not in"),
        ((["q?"], ["blue"], [8]), r"\[0\] refers to image id 8, which has no image"),
        (([3], ["blue"], [7]), r"\[0\] must be \[question string, answer string, integer image id\]"),
    ],
)
def test_inconsistent_package_data(fake_package, monkeypatch, questions, expected):
    monkeypatch.setattr(easy_vqa, "get_test_questions", lambda: questions)
    with pytest.raises(DataError, match=expected) as error:
        read_easyvqa("test")
    assert "questions.json" in str(error.value)


def test_missing_image(fake_package):
    _, image = fake_package
    Path(image).unlink()
    with pytest.raises(DataError, match="image file for image id 7 not found"):
        read_easyvqa("test")
