"""Karpathy split files (dataset_coco.json / dataset_flickr30k.json) in their published schema."""

import copy
import json

import pytest
from PIL import Image

from vislm.data.formats.karpathy import read_karpathy
from vislm.errors import DataError


def sentence(raw, sentid, imgid):
    return {"tokens": raw.lower().strip(" .").split(), "raw": raw, "imgid": imgid, "sentid": sentid}


COCO_SPLITS = {
    "images": [
        {"filepath": "val2014", "sentids": [0, 1], "filename": "COCO_val2014_000000391895.jpg", "imgid": 0,
         "split": "test", "cocoid": 391895,
         "sentences": [sentence("A man with a red helmet on a small moped on a dirt road. ", 0, 0),
                       sentence("Man riding a motor bike on a dirt road on the countryside.", 1, 0)]},
        {"filepath": "train2014", "sentids": [2], "filename": "COCO_train2014_000000057870.jpg", "imgid": 1,
         "split": "train", "cocoid": 57870, "sentences": [sentence("A restaurant has modern wooden tables.", 2, 1)]},
        {"filepath": "val2014", "sentids": [3], "filename": "COCO_val2014_000000000042.jpg", "imgid": 2,
         "split": "restval", "cocoid": 42, "sentences": [sentence("A dog on a couch.", 3, 2)]},
        {"filepath": "val2014", "sentids": [4], "filename": "COCO_val2014_000000000073.jpg", "imgid": 3,
         "split": "val", "cocoid": 73, "sentences": [sentence("Two cats asleep.", 4, 3)]},
    ],
    "dataset": "coco",
}

FLICKR_SPLITS = {
    "images": [
        {"sentids": [0, 1], "imgid": 0, "split": "train", "filename": "1000092795.jpg",
         "sentences": [sentence("Two young guys with shaggy hair look at their hands.", 0, 0),
                       sentence("Two friends enjoy time spent together.", 1, 0)]},
        {"sentids": [2], "imgid": 1, "split": "test", "filename": "10002456.jpg",
         "sentences": [sentence("Several men in hard hats are operating a giant pulley system.", 2, 1)]},
    ],
    "dataset": "flickr30k",
}


def write_split_file(tmp_path, data, name):
    for image in data["images"]:
        path = tmp_path / "images" / image.get("filepath", "") / image["filename"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), "red").save(path, format="JPEG")
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def coco_file(tmp_path):
    return write_split_file(tmp_path, COCO_SPLITS, "dataset_coco.json")


def test_train_includes_restval_and_uses_coco_ids(coco_file, tmp_path):
    records = read_karpathy(coco_file, tmp_path / "images", "train")
    assert [r.image_id for r in records] == [57870, 42]
    assert records[0].image_path == tmp_path / "images" / "train2014" / "COCO_train2014_000000057870.jpg"
    assert records[1].captions == ["A dog on a couch."]


def test_restval_can_stay_out_of_train(coco_file, tmp_path):
    records = read_karpathy(coco_file, tmp_path / "images", "train", restval_into_train=False)
    assert [r.image_id for r in records] == [57870]


def test_test_split_keeps_every_sentence_stripped(coco_file, tmp_path):
    (record,) = read_karpathy(coco_file, tmp_path / "images", "test")
    assert record.captions == ["A man with a red helmet on a small moped on a dirt road.",
                               "Man riding a motor bike on a dirt road on the countryside."]


def test_flickr30k_has_no_filepath_and_uses_imgid(tmp_path):
    path = write_split_file(tmp_path, FLICKR_SPLITS, "dataset_flickr30k.json")
    (record,) = read_karpathy(path, tmp_path / "images", "test")
    assert record.image_id == 1
    assert record.image_path == tmp_path / "images" / "10002456.jpg"


def test_unknown_split_is_refused(coco_file, tmp_path):
    with pytest.raises(DataError, match="unknown split 'dev'"):
        read_karpathy(coco_file, tmp_path / "images", "dev")


def test_missing_file(tmp_path):
    with pytest.raises(DataError) as error:
        read_karpathy(tmp_path / "dataset_coco.json", tmp_path, "train")
    assert "dataset_coco.json" in str(error.value) and "not found" in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_image_names_the_split_file(coco_file, tmp_path):
    (tmp_path / "images" / "val2014" / "COCO_val2014_000000000073.jpg").unlink()
    with pytest.raises(DataError, match=r"dataset_coco.json: image file for image id 73 not found"):
        read_karpathy(coco_file, tmp_path / "images", "val")
    assert read_karpathy(coco_file, tmp_path / "images", "val", check_files=False)[0].image_id == 73


def test_invalid_json(tmp_path):
    path = tmp_path / "dataset_coco.json"
    path.write_text('{"images": [')
    with pytest.raises(DataError, match=r"dataset_coco.json: invalid JSON at line 1"):
        read_karpathy(path, tmp_path, "train")


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: d["images"][0].pop("sentences"), r"images\[0\] is missing field 'sentences'"),
        (lambda d: d["images"][0].update(split="holdout"), r"images\[0\].split must be one of"),
        (lambda d: d["images"][1]["sentences"][0].update(raw=7), r"images\[1\].sentences\[0\].raw must be a string"),
        (lambda d: d["images"][1].update(cocoid=391895), "repeats image id 391895"),
    ],
)
def test_malformed_records(tmp_path, change, expected):
    data = copy.deepcopy(COCO_SPLITS)
    change(data)
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=expected) as error:
        read_karpathy(path, tmp_path, "train", check_files=False)
    assert str(error.value).startswith(str(path))


def test_a_blank_sentence_is_kept_with_where_it_is(tmp_path):
    # One bad sample, not a broken file: the run's data.on_error decides (test_bad_data.py).
    data = copy.deepcopy(COCO_SPLITS)
    data["images"][0]["sentences"][1]["raw"] = " \t"
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    record = read_karpathy(path, tmp_path, "test", check_files=False)[0]
    assert record.captions == ["A man with a red helmet on a small moped on a dirt road.", ""]
    assert record.blank == {1: f"{path}: images[0].sentences[1].raw is empty or only whitespace"}


@pytest.mark.parametrize("field, value", [("filename", "../../etc/passwd"), ("filepath", "/etc"),
                                          ("filepath", "val2014/../../.."), ("filename", "..\\secret.jpg")])
def test_escaping_paths_are_refused(tmp_path, field, value):
    data = copy.deepcopy(COCO_SPLITS)
    data["images"][0][field] = value
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=f"images\\[0\\].{field} must be a relative path inside"):
        read_karpathy(path, tmp_path, "test", check_files=False)
