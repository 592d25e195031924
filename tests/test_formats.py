"""COCO captions and VQAv2 readers: the published schemas, and every kind of broken file."""

import copy
import json

import pytest

from vislm.data.formats.coco import CaptionRecord, coco_image_paths, read_coco_captions
from vislm.data.formats.vqav2 import VQARecord, read_vqav2
from vislm.errors import DataError

# --- Fixtures in the exact published schemas ------------------------------------------------------

COCO = {
    "info": {"description": "COCO 2014 Dataset", "url": "http://cocodataset.org", "version": "1.0", "year": 2014,
             "contributor": "COCO Consortium", "date_created": "2017/09/01"},
    "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "Attribution-NonCommercial-ShareAlike License"}],
    "images": [
        {"license": 3, "file_name": "COCO_val2014_000000391895.jpg", "coco_url": "http://x/391895.jpg", "height": 360,
         "width": 640, "date_captured": "2013-11-14 11:18:45", "flickr_url": "http://y", "id": 391895},
        {"license": 4, "file_name": "COCO_val2014_000000522418.jpg", "coco_url": "http://x/522418.jpg", "height": 480,
         "width": 640, "date_captured": "2013-11-14 11:38:44", "flickr_url": "http://y", "id": 522418},
        {"license": 1, "file_name": "sub/COCO_val2014_000000000042.jpg", "height": 10, "width": 10, "id": 42},
    ],
    "annotations": [
        {"image_id": 522418, "id": 770337, "caption": "A woman wearing a net on her head cutting a cake. "},
        {"image_id": 391895, "id": 788, "caption": "A man with a red helmet on a small moped on a dirt road. "},
        {"image_id": 522418, "id": 771687, "caption": "A woman cutting a large white sheet cake.\n"},
    ],
}

QUESTIONS = {
    "info": {"description": "This is v2.0 of the VQA dataset.", "version": "2.0", "year": 2017},
    "task_type": "Open-Ended",
    "data_type": "mscoco",
    "license": {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "Creative Commons Attribution 4.0 International License"},
    "data_subtype": "val2014",
    "questions": [
        {"image_id": 391895, "question": "What is the man riding?", "question_id": 391895000},
        {"image_id": 522418, "question": "Is she cutting a cake? ", "question_id": 522418001},
    ],
}


def answers(*words):
    return [{"answer": word, "answer_confidence": "yes", "answer_id": index + 1} for index, word in enumerate(words)]


ANNOTATIONS = {
    "info": QUESTIONS["info"],
    "license": QUESTIONS["license"],
    "data_subtype": "val2014",
    "data_type": "mscoco",
    "annotations": [
        {"question_type": "is the", "multiple_choice_answer": "yes", "answers": answers(*["yes"] * 9, "no"),
         "image_id": 522418, "answer_type": "yes/no", "question_id": 522418001},
        {"question_type": "what is the man", "multiple_choice_answer": "motorcycle",
         "answers": answers(*["motorcycle"] * 8, "moped", "scooter"), "image_id": 391895, "answer_type": "other",
         "question_id": 391895000},
    ],
}


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def make_images(image_dir, data=COCO):
    for image in data["images"]:
        target = image_dir / image["file_name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"not decoded by the reader")


@pytest.fixture
def coco(tmp_path):
    image_dir = tmp_path / "images"
    make_images(image_dir)
    return write_json(tmp_path / "captions.json", COCO), image_dir


def assert_data_error(call, expected_message):
    with pytest.raises(DataError) as error:
        call()
    assert str(error.value) == expected_message


# --- COCO captions ---------------------------------------------------------------------------------


def test_coco_captions_in_image_order_with_stripped_text(coco):
    path, image_dir = coco
    records = read_coco_captions(path, image_dir)
    assert records == [
        CaptionRecord(391895, image_dir / "COCO_val2014_000000391895.jpg",
                      ["A man with a red helmet on a small moped on a dirt road."]),
        CaptionRecord(522418, image_dir / "COCO_val2014_000000522418.jpg",
                      ["A woman wearing a net on her head cutting a cake.", "A woman cutting a large white sheet cake."]),
        CaptionRecord(42, image_dir / "sub" / "COCO_val2014_000000000042.jpg", []),  # kept, without captions
    ]


def test_coco_image_paths(coco):
    path, image_dir = coco
    assert coco_image_paths(path, image_dir) == {
        391895: image_dir / "COCO_val2014_000000391895.jpg",
        522418: image_dir / "COCO_val2014_000000522418.jpg",
        42: image_dir / "sub" / "COCO_val2014_000000000042.jpg",
    }


def test_missing_image_file(coco):
    path, image_dir = coco
    (image_dir / "COCO_val2014_000000522418.jpg").unlink()
    expected = f"{path}: image file for image id 522418 not found: {image_dir / 'COCO_val2014_000000522418.jpg'}"
    assert_data_error(lambda: read_coco_captions(path, image_dir), expected)
    assert len(read_coco_captions(path, image_dir, check_files=False)) == 3


def test_missing_annotation_file(tmp_path):
    path = tmp_path / "absent.json"
    assert_data_error(lambda: read_coco_captions(path, tmp_path), f"{path}: annotation file not found")


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "images": [],\n  "annotations": [}\n')
    assert_data_error(
        lambda: read_coco_captions(path, tmp_path),
        f"{path}: invalid JSON at line 3 column 19 (Expecting value)",
    )


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"images": [], "annotations": [], "x": "caf\u00e9"}'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.json: not UTF-8 text"):
        read_coco_captions(path, tmp_path)


def _delete(data, *keys):
    target = data
    for key in keys[:-1]:
        target = target[key]
    del target[keys[-1]]


def _set(value, *keys):
    def change(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return change


COCO_BREAKAGES = [
    ("top-level list", lambda d: d.clear() or d.update({"list": True}), None),
    ("no images", lambda d: _delete(d, "images"), "missing top-level key 'images'"),
    ("no annotations", lambda d: _delete(d, "annotations"), "missing top-level key 'annotations'"),
    ("images not a list", _set({}, "images"), "top-level key 'images' must be a list, got an object"),
    ("image not an object", _set("x.jpg", "images", 1), "images[1] must be an object, got a string"),
    ("image without file_name", lambda d: _delete(d, "images", 1, "file_name"), "images[1] is missing field 'file_name'"),
    ("image id as text", _set("391895", "images", 0, "id"), "images[0].id must be an integer, got a string"),
    ("image id as boolean", _set(True, "images", 0, "id"), "images[0].id must be an integer, got a boolean"),
    ("repeated image id", _set(391895, "images", 1, "id"), "images[1] repeats image id 391895"),
    ("absolute file name", _set("/etc/passwd", "images", 0, "file_name"),
     "images[0].file_name must be a relative path inside the image directory, got '/etc/passwd'"),
    ("escaping file name", _set("../secret.jpg", "images", 0, "file_name"),
     "images[0].file_name must be a relative path inside the image directory, got '../secret.jpg'"),
    ("annotation without caption", lambda d: _delete(d, "annotations", 2, "caption"), "annotations[2] is missing field 'caption'"),
    ("annotation without id", lambda d: _delete(d, "annotations", 0, "id"), "annotations[0] is missing field 'id'"),
    ("caption as number", _set(5, "annotations", 0, "caption"), "annotations[0].caption must be a string, got a number"),
    ("unknown image", _set(7, "annotations", 1, "image_id"), "annotation id 788 refers to unknown image_id 7"),
    ("repeated annotation id", _set(788, "annotations", 2, "id"), "annotations[2] repeats annotation id 788"),
]


@pytest.mark.parametrize("change, expected", [case[1:] for case in COCO_BREAKAGES], ids=[case[0] for case in COCO_BREAKAGES])
def test_broken_coco_file(tmp_path, change, expected):
    data = copy.deepcopy(COCO)
    change(data)
    path = tmp_path / "captions.json"
    if expected is None:  # the top level itself is wrong
        write_json(path, [data])
        expected = "expected a JSON object at the top level, got a list"
    else:
        write_json(path, data)
    make_images(tmp_path, COCO)
    assert_data_error(lambda: read_coco_captions(path, tmp_path), f"{path}: {expected}")


def test_a_blank_caption_is_kept_with_where_it_is(tmp_path):
    # One bad sample, not a broken file: the run's data.on_error decides (test_bad_data.py).
    data = copy.deepcopy(COCO)
    data["annotations"][1]["caption"] = " \n\t"
    path = write_json(tmp_path / "captions.json", data)
    make_images(tmp_path)
    record = next(r for r in read_coco_captions(path, tmp_path) if r.image_id == 391895)
    assert record.captions == [""]
    assert record.blank == {0: f"{path}: annotations[1].caption is empty or only whitespace (annotation id 788)"}


# --- VQAv2 -----------------------------------------------------------------------------------------


@pytest.fixture
def vqa(tmp_path):
    image_dir = tmp_path / "images"
    make_images(image_dir)
    paths = coco_image_paths(write_json(tmp_path / "captions.json", COCO), image_dir)
    questions = write_json(tmp_path / "questions.json", QUESTIONS)
    annotations = write_json(tmp_path / "annotations.json", ANNOTATIONS)
    return questions, annotations, paths


def test_vqa_questions_joined_with_answers(vqa):
    questions, annotations, paths = vqa
    records = read_vqav2(questions, annotations, image_path_for=paths)
    assert records == [
        VQARecord(391895000, 391895, paths[391895], "What is the man riding?",
                  ["motorcycle"] * 8 + ["moped", "scooter"], "motorcycle", "other", "what is the man"),
        VQARecord(522418001, 522418, paths[522418], "Is she cutting a cake?",
                  ["yes"] * 9 + ["no"], "yes", "yes/no", "is the"),
    ]


def test_vqa_without_annotations_like_test_dev(vqa):
    questions, _, paths = vqa
    records = read_vqav2(questions, image_path_for=lambda image_id: paths[image_id])
    assert [(r.question_id, r.answers, r.multiple_choice_answer, r.answer_type, r.question_type) for r in records] == [
        (391895000, [], None, None, None),
        (522418001, [], None, None, None),
    ]


def test_vqa_optional_annotation_fields_may_be_absent(vqa, tmp_path):
    questions, _, paths = vqa
    data = copy.deepcopy(ANNOTATIONS)
    for annotation in data["annotations"]:
        del annotation["multiple_choice_answer"], annotation["answer_type"], annotation["question_type"]
    records = read_vqav2(questions, write_json(tmp_path / "bare.json", data), image_path_for=paths)
    assert records[1].answers[0] == "yes" and records[1].multiple_choice_answer is None


def test_vqa_image_without_path(vqa):
    questions, annotations, paths = vqa
    del paths[522418]
    assert_data_error(
        lambda: read_vqav2(questions, annotations, image_path_for=paths),
        f"{questions}: question id 522418001 refers to image_id 522418, which has no image",
    )


def test_vqa_missing_image_file(vqa):
    questions, annotations, paths = vqa
    paths[391895].unlink()
    assert_data_error(
        lambda: read_vqav2(questions, annotations, image_path_for=paths),
        f"{questions}: image file for image id 391895 not found: {paths[391895]}",
    )
    assert len(read_vqav2(questions, annotations, image_path_for=paths, check_files=False)) == 2


def test_vqa_missing_questions_file(tmp_path):
    path = tmp_path / "questions.json"
    assert_data_error(lambda: read_vqav2(path, image_path_for={}), f"{path}: questions file not found")


QUESTION_BREAKAGES = [
    ("no questions key", lambda d: _delete(d, "questions"), "missing top-level key 'questions'"),
    ("question without text", lambda d: _delete(d, "questions", 1, "question"), "questions[1] is missing field 'question'"),
    ("question id as float", _set(1.5, "questions", 0, "question_id"), "questions[0].question_id must be an integer, got a number"),
    ("blank question", _set("  ", "questions", 0, "question"), "question id 391895000 has an empty question"),
    ("repeated question id", _set(391895000, "questions", 1, "question_id"), "questions[1] repeats question id 391895000"),
]


@pytest.mark.parametrize("change, expected", [c[1:] for c in QUESTION_BREAKAGES], ids=[c[0] for c in QUESTION_BREAKAGES])
def test_broken_questions_file(vqa, change, expected):
    questions, annotations, paths = vqa
    data = copy.deepcopy(QUESTIONS)
    change(data)
    write_json(questions, data)
    assert_data_error(lambda: read_vqav2(questions, annotations, image_path_for=paths), f"{questions}: {expected}")


ANNOTATION_BREAKAGES = [
    ("no annotations key", lambda d: _delete(d, "annotations"), "missing top-level key 'annotations'"),
    ("annotation not an object", _set([], "annotations", 0), "annotations[0] must be an object, got a list"),
    ("answers missing", lambda d: _delete(d, "annotations", 1, "answers"), "annotations[1] is missing field 'answers'"),
    ("answers empty", _set([], "annotations", 1, "answers"), "annotations[1] has no answers"),
    ("answer without text", lambda d: _delete(d, "annotations", 0, "answers", 3, "answer"),
     "annotations[0].answers[3] is missing field 'answer'"),
    ("answer as number", _set(2, "annotations", 0, "answers", 9, "answer"),
     "annotations[0].answers[9].answer must be a string, got a number"),
    ("answer type as list", _set(["yes/no"], "annotations", 0, "answer_type"),
     "annotations[0].answer_type must be a string, got a list"),
    ("repeated question", _set(391895000, "annotations", 0, "question_id"), "annotations[1] repeats question_id 391895000"),
]


@pytest.mark.parametrize("change, expected", [c[1:] for c in ANNOTATION_BREAKAGES], ids=[c[0] for c in ANNOTATION_BREAKAGES])
def test_broken_annotations_file(vqa, change, expected):
    questions, annotations, paths = vqa
    data = copy.deepcopy(ANNOTATIONS)
    change(data)
    if "repeats" in expected:
        data["annotations"][0]["image_id"] = 391895  # so only the repetition is wrong
    write_json(annotations, data)
    assert_data_error(lambda: read_vqav2(questions, annotations, image_path_for=paths), f"{annotations}: {expected}")


def test_annotation_for_an_unknown_question(vqa):
    questions, annotations, paths = vqa
    data = copy.deepcopy(ANNOTATIONS)
    data["annotations"][0]["question_id"] = 5
    write_json(annotations, data)
    assert_data_error(
        lambda: read_vqav2(questions, annotations, image_path_for=paths),
        f"{annotations}: annotations[0] has question_id 5, which is not in {questions}",
    )


def test_annotation_with_another_image_than_its_question(vqa):
    questions, annotations, paths = vqa
    data = copy.deepcopy(ANNOTATIONS)
    data["annotations"][1]["image_id"] = 522418
    write_json(annotations, data)
    assert_data_error(
        lambda: read_vqav2(questions, annotations, image_path_for=paths),
        f"{annotations}: annotations[1] (question_id 391895000) has image_id 522418 but the question has image_id 391895",
    )


def test_question_without_annotation(vqa):
    questions, annotations, paths = vqa
    data = copy.deepcopy(ANNOTATIONS)
    del data["annotations"][1]
    write_json(annotations, data)
    assert_data_error(
        lambda: read_vqav2(questions, annotations, image_path_for=paths),
        f"{annotations}: no annotation for question_id 391895000 (from {questions})",
    )


def test_malformed_annotations_json(vqa):
    questions, annotations, paths = vqa
    annotations.write_text('{"annotations": [1, 2,]}')
    with pytest.raises(DataError, match=r"annotations\.json: invalid JSON at line 1 column 23"):
        read_vqav2(questions, annotations, image_path_for=paths)
