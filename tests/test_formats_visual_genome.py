"""Visual Genome image_data / region_descriptions / question_answers files in their published schema."""

import json

import pytest
from PIL import Image

from vislm.data.formats.visual_genome import read_visual_genome
from vislm.errors import DataError

IMAGE_DATA = [  # v1.2 uses "image_id"; the url tells which image folder holds the file
    {"width": 800, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg", "height": 600, "image_id": 1,
     "coco_id": None, "flickr_id": None},
    {"width": 800, "url": "https://cs.stanford.edu/people/rak248/VG_100K/10.jpg", "height": 600, "image_id": 10,
     "coco_id": 1234, "flickr_id": 5678},
]

REGIONS = [
    {"regions": [
        {"region_id": 1382, "width": 82, "height": 139, "image_id": 1, "phrase": "the clock is green in colour",
         "y": 57, "x": 421},
        {"region_id": 1383, "width": 182, "height": 109, "image_id": 1, "phrase": "shade is along the street ",
         "y": 372, "x": 320},
        {"region_id": 1384, "width": 10, "height": 10, "image_id": 1, "phrase": " ", "y": 0, "x": 0},
    ], "id": 1},
    {"regions": [], "id": 10},
]

QAS = [
    {"id": 1, "qas": [
        {"a_objects": [], "question": "What color is the clock?", "image_id": 1, "qa_id": 986768,
         "answer": "Green.", "q_objects": []},
        {"a_objects": [], "question": "Where are the shadows?", "image_id": 1, "qa_id": 986769,
         "answer": "On the sidewalk.", "q_objects": []},
    ]},
    {"id": 10, "qas": []},
]


def write(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def vg(tmp_path):
    for folder, name in (("VG_100K_2", "1.jpg"), ("VG_100K", "10.jpg")):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.new("RGB", (4, 4), "green").save(tmp_path / folder / name, format="JPEG")
    return (write(tmp_path / "image_data.json", IMAGE_DATA), write(tmp_path / "region_descriptions.json", REGIONS),
            write(tmp_path / "question_answers.json", QAS))


def test_regions_become_captions_and_url_picks_the_folder(vg, tmp_path):
    captions, _ = read_visual_genome(*vg)
    assert [(r.image_id, r.image_path) for r in captions] == [
        (1, tmp_path / "VG_100K_2" / "1.jpg"), (10, tmp_path / "VG_100K" / "10.jpg")]
    # The blank phrase is skipped; the image without regions is kept, without captions.
    assert captions[0].captions == ["the clock is green in colour", "shade is along the street"]
    assert captions[1].captions == []


def test_single_answers_are_repeated_for_soft_scoring(vg):
    _, questions = read_visual_genome(*vg)
    assert [q.question_id for q in questions] == [986768, 986769]
    first = questions[0]
    # normalised like VQAv2's answers, so the official metric can match a prediction "green"
    assert first.answers == ["green"] * 10 and first.multiple_choice_answer == "Green."
    assert (first.question_type, questions[1].question_type) == ("what", "where")
    assert first.image_path == questions[0].image_path


def test_v1_0_ids_and_a_missing_url_fall_back_to_the_folder_holding_the_file(vg, tmp_path):
    write(tmp_path / "image_data.json", [{"id": 10, "width": 1, "height": 1}])
    captions, questions = read_visual_genome(tmp_path / "image_data.json")
    assert captions[0].image_path == tmp_path / "VG_100K" / "10.jpg" and questions == []


def test_missing_image_data_file(tmp_path):
    with pytest.raises(DataError, match="image_data.json: image data file not found"):
        read_visual_genome(tmp_path / "image_data.json")


def test_missing_image_names_the_image_data_file(vg, tmp_path):
    (tmp_path / "VG_100K" / "10.jpg").unlink()
    with pytest.raises(DataError, match=r"image_data.json: image file for image id 10 not found"):
        read_visual_genome(*vg)


@pytest.mark.parametrize(
    "file_index, data, expected",
    [
        (1, {"regions": []}, "expected a JSON list at the top level, got an object"),
        (1, [{"id": 99, "regions": []}], r"\[0\] has image id 99, which is not in"),
        (1, [{"id": 1, "regions": [{"phrase": 3}]}], r"\[0\].regions\[0\].phrase must be a string"),
        (2, [{"id": 1, "qas": [{"qa_id": 5, "question": "Why?"}]}], r"\[0\].qas\[0\] is missing field 'answer'"),
        (2, [{"id": 1, "qas": [{"qa_id": 5, "question": "Why?", "answer": "x"}] * 2}], "repeats qa_id 5"),
        (0, [{"image_id": "one"}], r"\[0\].image_id must be an integer"),
    ],
)
def test_malformed_files_name_file_and_record(vg, file_index, data, expected):
    write(vg[file_index], data)
    with pytest.raises(DataError, match=expected) as error:
        read_visual_genome(*vg, check_files=False)
    assert str(error.value).startswith(str(vg[file_index])) and "\n" not in str(error.value)


def test_invalid_json(vg):
    vg[2].write_text("[{")
    with pytest.raises(DataError, match="question_answers.json: invalid JSON"):
        read_visual_genome(*vg)


def test_url_that_escapes_the_image_root_is_refused(vg, tmp_path):
    write(tmp_path / "image_data.json", [{"image_id": 1, "url": "http://x/VG_100K/.."}])
    with pytest.raises(DataError, match=r"\[0\].url must be a relative path inside"):
        read_visual_genome(tmp_path / "image_data.json", check_files=False)
