"""The shapes world: layout, determinism, faithful captions, correct answers, held-out pairs."""

import json
import re
from collections import Counter
from itertools import combinations

import numpy as np
import pytest
from PIL import Image

from vislm.data import shapes
from vislm.data.shapes import (
    COLOR_RGB,
    COLORS,
    SHAPES,
    SIZES,
    caption_is_faithful,
    ensure_shapes_world,
    generate_shapes_world,
    heldout_pairs,
    mentioned_pairs,
    read_scenes,
    render_scene,
)
from vislm.errors import DataError

SIZES_FOR_TESTS = {"train": 20, "val": 5, "test": 5, "comp_test": 5}
SPLITS = list(SIZES_FOR_TESTS)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_shapes_world(tmp_path_factory.mktemp("world"), seed=0, sizes=SIZES_FOR_TESTS)


def load(path):
    return json.loads(path.read_text())


def all_files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def scenes_of(world, split):
    return {s["image_id"]: s for s in load(world / "annotations" / f"scenes_{split}.json")["scenes"]}


# --- Layout and determinism -------------------------------------------------------------------------


def test_layout_is_exactly_as_documented(world):
    expected = {"world.json"}
    next_id = 1
    for split, count in SIZES_FOR_TESTS.items():
        expected |= {f"images/{split}/{image_id:06d}.png" for image_id in range(next_id, next_id + count)}
        next_id += count
        expected |= {
            f"annotations/captions_{split}.json",
            f"annotations/scenes_{split}.json",
            f"vqa/v2_OpenEnded_shapes_{split}_questions.json",
            f"vqa/v2_shapes_{split}_annotations.json",
        }
    assert set(all_files(world)) == expected


def test_world_description(world):
    description = load(world / "world.json")
    assert description == {
        "seed": 0,
        "sizes": SIZES_FOR_TESTS,
        "image_size": 64,
        "shapes": list(SHAPES),
        "colors": list(COLORS),
        "heldout_pairs": [list(pair) for pair in heldout_pairs(0)],
        "version": 1,
    }


def test_same_seed_gives_identical_bytes_and_another_seed_differs(world, tmp_path):
    again = all_files(generate_shapes_world(tmp_path / "again", seed=0, sizes=SIZES_FOR_TESTS))
    assert again == all_files(world)
    other = all_files(generate_shapes_world(tmp_path / "other", seed=1, sizes=SIZES_FOR_TESTS))
    assert other.keys() == again.keys()
    assert other["images/train/000001.png"] != again["images/train/000001.png"]
    assert other["annotations/captions_train.json"] != again["annotations/captions_train.json"]
    assert heldout_pairs(1) != heldout_pairs(0)


def test_vocabulary_is_rich_enough():
    assert len(SHAPES) >= 5 and len(COLORS) >= 8 and SIZES == ("small", "large")
    assert set(COLOR_RGB) == set(COLORS)
    # Colours must be far apart to be nameable: at least 100 apart in RGB space.
    for first, second in combinations(COLORS, 2):
        assert np.linalg.norm(np.subtract(COLOR_RGB[first], COLOR_RGB[second])) > 100, (first, second)


def test_ids_are_unique_across_splits(world):
    image_ids, question_ids, caption_ids = [], [], []
    for split in SPLITS:
        image_ids += [image["id"] for image in load(shapes.captions_file(world, split))["images"]]
        caption_ids += [a["id"] for a in load(shapes.captions_file(world, split))["annotations"]]
        question_ids += [q["question_id"] for q in load(shapes.questions_file(world, split))["questions"]]
    assert len(image_ids) == len(set(image_ids)) == sum(SIZES_FOR_TESTS.values())
    assert len(question_ids) == len(set(question_ids))
    assert len(caption_ids) == len(set(caption_ids))


# --- Images and scenes -----------------------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS)
def test_scenes_are_well_formed_and_apart(world, split):
    for image_id, scene in scenes_of(world, split).items():
        objects = scene["objects"]
        assert 1 <= len(objects) <= 4
        pairs = [(o["color"], o["shape"]) for o in objects]
        assert len(set(pairs)) == len(pairs)  # "the red circle" is never ambiguous
        for obj in objects:
            x0, y0, x1, y1 = obj["bbox"]
            assert obj["shape"] in SHAPES and obj["color"] in COLORS and obj["size"] in SIZES
            assert x1 - x0 == y1 - y0 == {"small": 11, "large": 20}[obj["size"]]
            assert 2 <= x0 and x1 <= 62 and 2 <= y0 and y1 <= 62
            assert (obj["x"], obj["y"]) == ((x0 + x1) / 2, (y0 + y1) / 2)
        for a, b in combinations(objects, 2):
            gap = max(b["bbox"][0] - a["bbox"][2], a["bbox"][0] - b["bbox"][2],
                      b["bbox"][1] - a["bbox"][3], a["bbox"][1] - b["bbox"][3])
            assert gap >= 3, (image_id, a, b)
        assert [o["x"] for o in objects] == sorted(o["x"] for o in objects)  # stored left to right


@pytest.mark.parametrize("split", SPLITS)
def test_pixels_show_the_scene(world, split):
    for image_id, scene in scenes_of(world, split).items():
        with Image.open(world / "images" / split / f"{image_id:06d}.png") as image:
            assert image.mode == "RGB" and image.size == (64, 64)
            picture = np.asarray(image, dtype=int)
        background = scene["background"]
        assert max(background) <= 40  # dark
        assert picture[0, 0].tolist() == background
        for obj in scene["objects"]:
            centre = picture[int(obj["y"]), int(obj["x"])]
            assert np.abs(centre - COLOR_RGB[obj["color"]]).max() <= 2, (image_id, obj)


def shape_mask(shape, size):
    width = {"small": 11, "large": 20}[size]
    image = render_scene([{"shape": shape, "color": "white", "bbox": [2, 2, 2 + width, 2 + width]}], (0, 0, 0), 64)
    return np.asarray(image)[:, :, 0] > 127


@pytest.mark.parametrize("size", SIZES)
def test_shapes_are_told_apart_even_when_small(size):
    masks = {shape: shape_mask(shape, size) for shape in SHAPES}
    for first, second in combinations(SHAPES, 2):
        overlap = (masks[first] & masks[second]).sum() / (masks[first] | masks[second]).sum()
        assert overlap < 0.8, (first, second, overlap)
    for shape, mask in masks.items():
        rows, columns = np.nonzero(mask)
        assert rows.min() >= 2 and columns.max() < 2 + {"small": 11, "large": 20}[size], shape  # inside its box


# --- Captions ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS)
def test_caption_file_schema(world, split):
    data = load(shapes.captions_file(world, split))
    assert set(data) == {"info", "licenses", "images", "annotations"} and data["licenses"] == []
    for image in data["images"]:
        assert set(image) == {"id", "file_name", "width", "height"}
        assert image["file_name"] == f"{image['id']:06d}.png" and image["width"] == image["height"] == 64
    for annotation in data["annotations"]:
        assert set(annotation) == {"id", "image_id", "caption"}
    per_image = Counter(a["image_id"] for a in data["annotations"])
    assert per_image == {image["id"]: 5 for image in data["images"]}


def captions_by_image(world, split):
    captions = {}
    for annotation in load(shapes.captions_file(world, split))["annotations"]:
        captions.setdefault(annotation["image_id"], []).append(annotation["caption"])
    return captions


@pytest.mark.parametrize("split", SPLITS)
def test_every_caption_is_faithful_and_never_pluralises(world, split):
    scenes = scenes_of(world, split)
    for image_id, captions in captions_by_image(world, split).items():
        objects = scenes[image_id]["objects"]
        assert len(set(captions)) == 5
        for caption in captions:
            assert caption_is_faithful(caption, objects), (caption, objects)
            assert not re.search(r"\b(circles|squares|triangles|stars|diamonds|crosses)\b", caption)


@pytest.mark.parametrize("split", SPLITS)
def test_canonical_caption_names_objects_left_to_right(world, split):
    scenes = scenes_of(world, split)
    for image_id, captions in captions_by_image(world, split).items():
        objects = scenes[image_id]["objects"]
        canonical = captions[0]
        named = re.findall(rf"\b({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b", canonical)
        assert named == [(o["size"], o["color"], o["shape"]) for o in objects], canonical
        if len(objects) == 1:
            obj = objects[0]
            row = ("top", "", "bottom")[min(2, int(obj["y"] * 3 / 64))]
            column = ("left", "", "right")[min(2, int(obj["x"] * 3 / 64))]
            for word in (row, column):
                assert not word or word in canonical, (canonical, obj)
            if not row and not column:
                assert canonical.endswith("in the center")


def test_captions_state_relations(world):
    relation = re.compile(r"\b(left of|right of|above|on top of|below|under|beneath)\b")
    with_relation = [
        caption
        for image_id, captions in captions_by_image(world, "train").items()
        for caption in captions
        if relation.search(caption)
    ]
    assert len(with_relation) > 20
    assert any("on top of" in c for c in with_relation) and any("to the left of" in c for c in with_relation)


def test_caption_relations_match_geometry():
    above = {"shape": "circle", "color": "red", "bbox": [20, 2, 31, 13]}
    below = {"shape": "square", "color": "blue", "bbox": [24, 40, 44, 60]}
    left = {"shape": "star", "color": "green", "bbox": [2, 30, 13, 41]}
    assert shapes.spatial_relation(above, below) == "above"
    assert shapes.spatial_relation(below, above) == "below"
    assert shapes.spatial_relation(left, below) == "left"
    assert shapes.spatial_relation(below, left) == "right"


SCENE = [
    {"shape": "circle", "color": "red", "size": "small"},
    {"shape": "square", "color": "blue", "size": "large"},
]


@pytest.mark.parametrize(
    "caption, faithful",
    [
        ("a small red circle above a large blue square", True),
        ("A Blue square, and a RED CIRCLE.", True),
        ("the red small circle is left of the blue square", True),  # size word between colour and shape
        ("a small red circle", False),  # an object left out
        ("a red circle above a blue square and a green star", False),  # an invented object
        ("a red square above a blue circle", False),  # attributes swapped
        ("a red circle and a blue thing shaped like a square", False),  # colour not attached to the shape
        ("", False),
    ],
)
def test_caption_is_faithful(caption, faithful):
    assert caption_is_faithful(caption, SCENE) is faithful


def test_mentioned_pairs():
    assert mentioned_pairs("two shapes: a large orange star, a small white cross; the orange star is on top") == {
        ("orange", "star"),
        ("white", "cross"),
    }
    assert mentioned_pairs("red circles and a blue large big square") == set()


# --- Questions and answers ---------------------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS)
def test_vqa_file_schemas(world, split):
    questions = load(shapes.questions_file(world, split))
    annotations = load(shapes.vqa_annotations_file(world, split))
    assert set(questions) == {"info", "task_type", "data_type", "data_subtype", "license", "questions"}
    assert (questions["task_type"], questions["data_type"], questions["data_subtype"]) == ("Open-Ended", "shapes", split)
    assert set(annotations) == {"info", "license", "data_type", "data_subtype", "annotations"}
    assert [q["question_id"] for q in questions["questions"]] == [a["question_id"] for a in annotations["annotations"]]
    for question, annotation in zip(questions["questions"], annotations["annotations"]):
        assert set(question) == {"image_id", "question", "question_id"}
        assert set(annotation) == {"question_id", "image_id", "question_type", "answer_type", "multiple_choice_answer", "answers"}
        assert annotation["image_id"] == question["image_id"]
        assert question["question"].startswith(annotation["question_type"])
        assert [a["answer_id"] for a in annotation["answers"]] == list(range(1, 11))
        for answer in annotation["answers"]:
            assert set(answer) == {"answer", "answer_confidence", "answer_id"}
            assert answer["answer_confidence"] == ("yes" if answer["answer"] == annotation["multiple_choice_answer"] else "maybe")
        counts = Counter(a["answer"] for a in annotation["answers"])
        assert counts[annotation["multiple_choice_answer"]] >= 7
    per_image = Counter(q["image_id"] for q in questions["questions"])
    assert set(per_image.values()) <= {4, 5, 6}
    assert len(per_image) == SIZES_FOR_TESTS[split]


def strictly(relation, a, b):
    ax0, ay0, ax1, ay1 = a["bbox"]
    bx0, by0, bx1, by1 = b["bbox"]
    return {"to the left of": ax1 <= bx0, "to the right of": bx1 <= ax0, "above": ay1 <= by0, "below": by1 <= ay0}[relation]


OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below", "below": "above"}
RELATION = "(to the left of|to the right of|above|below)"


def expected_answer(question, objects):
    """Answer a generated question from the scene alone, independently of the generator."""
    def find(color, shape):
        (match,) = [o for o in objects if o["color"] == color and o["shape"] == shape]
        return match

    if question == "how many shapes are there?":
        return str(len(objects)), "number"
    if m := re.fullmatch(r"how many (\w+) shapes are there\?", question):
        return str(sum(o["color"] == m[1] for o in objects)), "number"
    if m := re.fullmatch(r"what color is the (\w+)\?", question):
        (match,) = [o for o in objects if o["shape"] == m[1]]  # asked only when unique
        return match["color"], "other"
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        (match,) = [o for o in objects if o["color"] == m[1]]
        return match["shape"], "other"
    if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", question):
        return ("yes" if any((o["color"], o["shape"]) == (m[1], m[2]) for o in objects) else "no"), "yes/no"
    if m := re.fullmatch(rf"is the (\w+) (\w+) {RELATION} the (\w+) (\w+)\?", question):
        a, b = find(m[1], m[2]), find(m[4], m[5])
        if strictly(m[3], a, b):
            return "yes", "yes/no"
        assert strictly(OPPOSITE[m[3]], a, b), question  # a "no" must be clearly the other way
        return "no", "yes/no"
    if m := re.fullmatch(rf"what shape is {RELATION} the (\w+) (\w+)\?", question):
        reference = find(m[2], m[3])
        (match,) = [o for o in objects if o is not reference and strictly(m[1], o, reference)]
        return match["shape"], "other"
    raise AssertionError(f"unexpected question: {question}")


@pytest.mark.parametrize("split", SPLITS)
def test_answers_agree_with_the_scenes(world, split):
    scenes = scenes_of(world, split)
    questions = load(shapes.questions_file(world, split))["questions"]
    annotations = load(shapes.vqa_annotations_file(world, split))["annotations"]
    for question, annotation in zip(questions, annotations):
        answer, answer_type = expected_answer(question["question"], scenes[question["image_id"]]["objects"])
        assert (annotation["multiple_choice_answer"], annotation["answer_type"]) == (answer, answer_type), question


def test_generator_is_right_on_many_scenes():
    # The small world above exercises few rare branches; 1,500 scenes reach them all.
    import random

    heldout = set(heldout_pairs(0))
    pool = [pair for pair in shapes.ALL_PAIRS if pair not in heldout]
    kinds = Counter()
    for seed in range(1500):
        rng = random.Random(seed)
        objects = shapes.sample_scene(rng, 64, pool)
        for caption in shapes.make_captions(objects, 64, rng):
            assert caption_is_faithful(caption, objects), (caption, objects)
        for question, answer, question_type, answer_type in shapes.make_questions(objects, rng, pool):
            assert not heldout & mentioned_pairs(question), question
            assert expected_answer(question, objects) == (answer, answer_type), (question, objects)
            kinds[question_type] += 1
    assert min(kinds.values()) > 100


def test_question_kinds_are_mixed_and_yes_no_balanced(world):
    annotations = load(shapes.vqa_annotations_file(world, "train"))["annotations"]
    kinds = Counter(a["question_type"] for a in annotations)
    assert set(kinds) == {"how many", "what color is the", "what shape is", "is there a", "is the"}
    yes_no = Counter(a["multiple_choice_answer"] for a in annotations if a["answer_type"] == "yes/no")
    assert 0.35 < yes_no["yes"] / (yes_no["yes"] + yes_no["no"]) < 0.65
    questions = load(shapes.questions_file(world, "train"))["questions"]
    for image_id in {q["image_id"] for q in questions}:
        asked = [q["question"] for q in questions if q["image_id"] == image_id]
        assert len(set(asked)) == len(asked)


def test_annotators_sometimes_disagree_plausibly(world):
    noisy = []
    for split in SPLITS:
        for annotation in load(shapes.vqa_annotations_file(world, split))["annotations"]:
            truth = annotation["multiple_choice_answer"]
            noisy += [(truth, a["answer"]) for a in annotation["answers"] if a["answer"] != truth]
    assert noisy  # 5% per answer over ~1,000 answers
    for truth, other in noisy:
        if truth in ("yes", "no"):
            assert other == {"yes": "no", "no": "yes"}[truth]
        elif truth.isdigit():
            assert abs(int(other) - int(truth)) == 1
        else:
            assert (truth in COLORS and other in COLORS) or (truth in SHAPES and other in SHAPES)


def test_annotator_noise_rate():
    import random

    answers = [a["answer"] for seed in range(2000) for a in shapes.annotator_answers("red", random.Random(seed))]
    assert 0.04 < 1 - answers.count("red") / len(answers) < 0.06


def test_dissent_is_capped_so_the_truth_keeps_a_majority(monkeypatch):
    import random

    monkeypatch.setattr(shapes, "ANNOTATOR_NOISE", 1.0)
    answers = [a["answer"] for a in shapes.annotator_answers("3", random.Random(0))]
    assert answers[3:] == ["3"] * 7 and set(answers[:3]) <= {"2", "4"}


# --- Held-out pairs ----------------------------------------------------------------------------------


def test_heldout_pairs_use_distinct_colours_and_shapes():
    pairs = heldout_pairs(0)
    assert len(pairs) == 6
    assert len({c for c, _ in pairs}) == len({s for _, s in pairs}) == 6
    assert heldout_pairs(0) == pairs  # seed-derived, not random per call


def texts_of(world, split):
    captions = [a["caption"] for a in load(shapes.captions_file(world, split))["annotations"]]
    questions = [q["question"] for q in load(shapes.questions_file(world, split))["questions"]]
    return captions + questions


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_heldout_pairs_never_appear_outside_comp_test(world, split):
    heldout = set(heldout_pairs(0))
    for scene in scenes_of(world, split).values():
        assert not heldout & {(o["color"], o["shape"]) for o in scene["objects"]}
    for text in texts_of(world, split):
        assert not heldout & mentioned_pairs(text), text


def test_every_comp_test_image_has_a_heldout_pair(world):
    heldout = set(heldout_pairs(0))
    scenes = scenes_of(world, "comp_test")
    assert len(scenes) == 5
    for scene in scenes.values():
        assert heldout & {(o["color"], o["shape"]) for o in scene["objects"]}


# --- Arguments, regeneration and reading back ----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_size": 16}, "image_size must be an integer of at least 32"),
        ({"sizes": {"train": -1}}, "sizes['train'] must be a non-negative integer, got -1"),
        ({"sizes": {"../up": 1}}, "split names must be lowercase letters, digits and '_', got '../up'"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        generate_shapes_world(tmp_path, **kwargs)


def test_ensure_reuses_a_matching_world_and_rebuilds_otherwise(tmp_path):
    sizes = {"train": 2, "val": 1}
    ensure_shapes_world(tmp_path, seed=0, sizes=sizes)
    marker = tmp_path / "images" / "train" / "000001.png"
    marker.write_bytes(b"left alone")
    ensure_shapes_world(tmp_path, seed=0, sizes=sizes)
    assert marker.read_bytes() == b"left alone"
    ensure_shapes_world(tmp_path, seed=3, sizes=sizes)
    assert marker.read_bytes().startswith(b"\x89PNG")
    assert load(tmp_path / "world.json")["seed"] == 3


def test_read_scenes(world, tmp_path):
    scenes = read_scenes(shapes.scenes_file(world, "val"))
    assert list(scenes) == [21, 22, 23, 24, 25]
    broken = load(shapes.scenes_file(world, "val"))
    broken["scenes"][2]["objects"][0]["color"] = "mauve"
    path = tmp_path / "scenes.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(DataError) as error:
        read_scenes(path)
    assert str(error.value) == (
        f"{path}: scenes[2].objects[0].color must be one of {', '.join(COLORS)}, got 'mauve'"
    )
