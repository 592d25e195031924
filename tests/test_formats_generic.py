"""CSV, JSONL and image-folder sources."""

import json
import os

import pytest
from PIL import Image

from vislm.data.formats._json import stable_image_id
from vislm.data.formats.generic import read_csv, read_folder, read_jsonl
from vislm.errors import ConfigError, DataError


def make_image(path, color="red"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), color).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    make_image(tmp_path / "pics" / "a.png")
    make_image(tmp_path / "pics" / "b.png", "blue")
    return tmp_path


def test_csv_captions_merge_per_image(images):
    path = images / "train.csv"
    path.write_text("image,caption\npics/a.png,a red square\npics/b.png,  a blue square \npics/a.png,red\n",
                    encoding="utf-8-sig")  # Excel writes a BOM
    captions, questions = read_csv(path)
    assert [(r.image_path, r.captions) for r in captions] == [
        (images / "pics" / "a.png", ["a red square", "red"]), (images / "pics" / "b.png", ["a blue square"])]
    assert captions[0].image_id == stable_image_id("pics/a.png") and questions == []


def test_csv_questions_with_renamed_columns_and_ids(images):
    path = images / "vqa.csv"
    path.write_text("picture,q,a,question_id,answer_type\npics/a.png,what colour?,red,17,other\n"
                    "pics/b.png,is it blue?,yes,,yes/no\n")
    captions, questions = read_csv(path, {"image": "picture", "question": "q", "answer": "a"})
    assert captions == []
    assert [(q.question_id, q.question, q.answers, q.answer_type) for q in questions] == [
        (17, "what colour?", ["red"] * 10, "other"), (1, "is it blue?", ["yes"] * 10, "yes/no")]


def test_jsonl_lists_of_captions_and_answers(images):
    path = images / "data.jsonl"
    rows = [{"image": "pics/a.png", "caption": ["one", "two"], "image_id": 5},
            {"image": "pics/b.png"},
            {"image": "pics/a.png", "image_id": 5, "question": "what?", "answer": ["red", "red", "pink"]}]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    captions, questions = read_jsonl(path)
    assert [(r.image_id, r.captions) for r in captions] == [(5, ["one", "two"]), (stable_image_id("pics/b.png"), [])]
    assert questions[0].answers == ["red", "red", "pink"] and questions[0].multiple_choice_answer == "red"
    assert questions[0].question_id == 2  # its row position


def test_image_root_overrides_the_file_folder(images, tmp_path):
    path = tmp_path / "tables" / "t.csv"
    path.parent.mkdir()
    path.write_text("image,caption\na.png,x\n")
    captions, _ = read_csv(path, image_root=images / "pics")
    assert captions[0].image_path == images / "pics" / "a.png"


@pytest.mark.parametrize("reader, name", [(read_csv, "t.csv"), (read_jsonl, "t.jsonl")])
def test_missing_file(tmp_path, reader, name):
    with pytest.raises(DataError, match=f"{name}: (CSV|JSONL) file not found"):
        reader(tmp_path / name)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("picture,caption\na.png,x\n", "the header has no 'image' column"),
        ("image,caption\npics/a.png,x,extra\n", "line 2 has more fields than the header"),
        ("image,question\npics/a.png,what?\n", "line 2 has a question but no 'answer'"),
        ("image,caption,image_id\npics/a.png,x,seven\n", "line 2.image_id must be an integer, got 'seven'"),
        ("image,caption\npics/missing.png,x\n", "line 2: image file not found"),
        ("image,caption\n,x\n", "line 2 has no 'image'"),
        ("image,caption,image_id\npics/a.png,x,1\npics/b.png,y,1\n",
         "image id 1 is shared by 'pics/a.png' and 'pics/b.png'"),
    ],
)
def test_malformed_csv(images, text, expected):
    path = images / "t.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=expected) as error:
        read_csv(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"image": "pics/a.png"\n', "line 1: invalid JSON"),
        ('["pics/a.png"]\n', "line 1 must be a JSON object, got a list"),
        ('{"image": "pics/a.png", "caption": [1]}\n', "line 1.caption must be a string or a list of strings"),
        ('{"image": 3}\n', "line 1.image must be a string, got a number"),
    ],
)
def test_malformed_jsonl(images, text, expected):
    path = images / "t.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=expected):
        read_jsonl(path)


def test_not_utf8(images):
    path = images / "t.csv"
    path.write_bytes(b"image,caption\npics/a.png,caf\xe9\n")
    with pytest.raises(DataError, match="t.csv: not UTF-8 text"):
        read_csv(path)


@pytest.mark.parametrize("name", ["../outside.png", "/etc/passwd", "pics/../../x.png", "..\\x.png"])
@pytest.mark.parametrize("reader, suffix", [(read_csv, "csv"), (read_jsonl, "jsonl")])
def test_escaping_image_paths_are_refused(images, name, reader, suffix):
    path = images / f"t.{suffix}"
    path.write_text(f"image,caption\n{name},x\n" if suffix == "csv" else json.dumps({"image": name}) + "\n")
    with pytest.raises(DataError, match="line [12].image must be a relative path inside"):
        reader(path, check_files=False)


def test_unknown_column_rename_is_a_config_error(images):
    with pytest.raises(ConfigError, match="data.columns: unknown column 'text'"):
        read_csv(images / "t.csv", {"text": "caption"})


def test_folder_lists_images_sorted_without_hidden_files(images):
    make_image(images / "pics" / "sub" / "c.JPG")
    (images / "pics" / "notes.txt").write_text("not an image")
    make_image(images / "pics" / ".hidden.png")
    records = read_folder(images / "pics")
    assert [r.image_path.relative_to(images / "pics").as_posix() for r in records] == ["a.png", "b.png", "sub/c.JPG"]
    assert all(r.captions == [] for r in records)
    assert records[2].image_id == stable_image_id("sub/c.JPG")


def test_folder_missing_or_empty(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        read_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="no image files"):
        read_folder(tmp_path)


def test_folder_refuses_links_that_leave_it(images, tmp_path):
    outside = make_image(tmp_path / "elsewhere" / "secret.png")
    os.symlink(outside, images / "pics" / "link.png")
    with pytest.raises(DataError, match="link.png: a link that leaves the image folder"):
        read_folder(images / "pics")
