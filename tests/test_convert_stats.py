"""Format conversion (records survive a round trip through every target) and data summaries."""

import json
from pathlib import Path

import pytest
from PIL import Image

from vislm.cli import main
from vislm.config import DataConfig
from vislm.data.formats.convert import convert
from vislm.data.formats.coco import CaptionRecord
from vislm.data.formats.stats import summarize
from vislm.data.formats.vqav2 import VQARecord
from vislm.errors import DataError
from vislm.tasks.data import load_split


def make_image(path, color="red", mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (5, 4), color).save(path)
    return path


@pytest.fixture
def source(tmp_path):
    """A JSONL file with two captioned images (one JPEG) and three questions."""
    make_image(tmp_path / "in" / "a.png")
    make_image(tmp_path / "in" / "sub" / "b.jpg", "blue")
    rows = [
        {"image": "a.png", "caption": ["a red square", "red"]},
        {"image": "sub/b.jpg", "caption": "a blue square"},
        {"image": "a.png", "question": "what colour is it?", "answer": "Red", "answer_type": "other"},
        {"image": "sub/b.jpg", "question": "is it blue?", "answer": ["yes", "yes", "no"], "question_type": "is it"},
        {"image": "sub/b.jpg", "question": "is it red?", "answer": "no", "question_id": 40},
    ]
    path = tmp_path / "in" / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read(path):
    records = load_split(DataConfig(dataset="jsonl", root=str(path.parent), annotations=path.name), "train")
    return records.captions, records.questions


def read_back(result):
    return load_split(DataConfig(**result["config"]), "train")


def caption_view(records):
    return sorted((r.image_id, tuple(r.captions), r.image_path.read_bytes()) for r in records)


def question_view(records):
    return sorted((q.question_id, q.image_id, q.question, tuple(q.answers), q.answer_type, q.question_type)
                  for q in records)


@pytest.mark.parametrize("target", ["coco", "jsonl", "webdataset"])
def test_captions_survive_conversion(source, tmp_path, target):
    captions, questions = read(source)
    result = convert(captions, questions, target, tmp_path / "out", shard_size=1)
    assert caption_view(read_back(result).captions) == caption_view(captions)


@pytest.mark.parametrize("target", ["vqav2", "jsonl", "webdataset"])
def test_questions_survive_conversion(source, tmp_path, target):
    captions, questions = read(source)
    result = convert(captions, questions, target, tmp_path / "out")
    again = read_back(result).questions
    assert question_view(again) == question_view(questions)
    assert all(Path(q.image_path).is_file() for q in again)


def test_vqav2_output_is_the_published_schema_with_png_images(source, tmp_path):
    _, questions = read(source)
    convert([], questions, "vqav2", tmp_path / "out", split="val")
    written = json.loads((tmp_path / "out" / "annotations.json").read_text())
    first = written["annotations"][0]
    assert written["data_subtype"] == "val"
    assert first["answers"][0] == {"answer": "red", "answer_confidence": "yes", "answer_id": 1}
    assert first["multiple_choice_answer"] == "Red"
    assert sorted(p.suffix for p in (tmp_path / "out" / "images").iterdir()) == [".png", ".png"]


def test_written_files_name_images_inside_the_output_folder(source, tmp_path):
    captions, _ = read(source)
    convert(captions, [], "coco", tmp_path / "out")
    written = json.loads((tmp_path / "out" / "captions.json").read_text())
    assert all("/" not in image["file_name"] for image in written["images"])
    assert [a["id"] for a in written["annotations"]] == [1, 2, 3]


def test_nothing_to_write_is_an_error(source, tmp_path):
    captions, questions = read(source)
    with pytest.raises(DataError, match="the input has no captions to write as COCO captions"):
        convert([], questions, "coco", tmp_path / "out")
    with pytest.raises(DataError, match="the input has no questions to write as VQAv2"):
        convert(captions, [], "vqav2", tmp_path / "out")
    with pytest.raises(DataError, match="unknown target format 'parquet'"):
        convert(captions, questions, "parquet", tmp_path / "out")


def test_summary_numbers(tmp_path):
    image = make_image(tmp_path / "a.png")
    captions = [CaptionRecord(1, image, ["one two three", "one"]), CaptionRecord(2, tmp_path / "gone.png", ["a b"])]
    questions = [
        VQARecord(1, 1, image, "q?", ["Yes"] * 10, None, "yes/no", None),
        VQARecord(2, 1, image, "q?", ["two", "2", "2"], "2", "number", None),
        VQARecord(3, 2, tmp_path / "gone.png", "q?", ["yes."], None, None, None),
    ]
    summary = summarize(captions, questions)
    assert (summary["images"], summary["captions"], summary["questions"]) == (2, 3, 3)
    assert summary["caption_words"] == {"min": 1, "mean": 2.0, "median": 2, "max": 3}
    assert summary["top_answers"] == {"yes": 2, "2": 1}  # normalised like the VQA metric
    assert summary["answer_types"] == {"yes/no": 1, "number": 1, "unknown": 1}
    assert summary["missing_images"] == {"count": 1, "first": [str(tmp_path / "gone.png")]}
    assert summarize([], [])["caption_words"] is None


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_convert_then_stats(source, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "data", "convert", "--from", "jsonl", "--to", "webdataset", str(source),
                           "--out", str(tmp_path / "shards"), "--shard-size", "1")
    assert code == 0 and len(json.loads(out)["files"]) == 2
    code, out, _ = run_cli(capsys, "data", "convert", "--from", "webdataset", "--to", "coco",
                           str(tmp_path / "shards"), "--out", str(tmp_path / "coco"))
    assert code == 0
    code, out, _ = run_cli(capsys, "data", "stats", "--format", "coco", str(tmp_path / "coco" / "captions.json"),
                           "--images", str(tmp_path / "coco" / "images"))
    summary = json.loads(out)
    assert (code, summary["images"], summary["captions"], summary["missing_images"]["count"]) == (0, 2, 3, 0)
    code, out, _ = run_cli(capsys, "data", "stats", "--format", "webdataset", str(tmp_path / "shards"))
    assert (code, json.loads(out)["questions"]) == (0, 3)


def test_cli_stats_counts_missing_images(source, tmp_path, capsys):
    (tmp_path / "in" / "sub" / "b.jpg").unlink()
    code, out, _ = run_cli(capsys, "data", "stats", "--format", "jsonl", str(source))
    missing = str(tmp_path / "in" / "sub" / "b.jpg")
    assert code == 0 and json.loads(out)["missing_images"] == {"count": 1, "first": [missing]}


def test_cli_csv_column_renames(tmp_path, capsys):
    make_image(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text("file,text\na.png,hello there\n")
    code, out, _ = run_cli(capsys, "data", "stats", "--format", "csv", str(tmp_path / "t.csv"),
                           "--column", "image=file", "--column", "caption=text")
    assert code == 0 and json.loads(out)["caption_words"]["max"] == 2


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["data", "convert", "--from", "vqav2", "--to", "jsonl", "q.json", "--out", "x"],
         "format vqav2 takes 2 input path(s), got 1"),
        (["data", "stats", "--format", "coco", "missing.json"], "missing.json: annotation file not found"),
        (["data", "stats", "--format", "csv", "t.csv", "--column", "caption"], "expected OURS=THEIRS"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch, argv, expected):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and expected in err and err.count("\n") == 1
