"""torch Datasets over the shapes world, the image cache, and the split loader."""

import json

import pytest
import torch
from torch.utils.data import DataLoader

from vislm.data import datasets, shapes
from vislm.data.datasets import CaptionPairs, ImageCache, ImageSet, VQAItems, load_shapes_split
from vislm.data.formats.coco import CaptionRecord
from vislm.data.images import load_image
from vislm.data.transforms import ImageTransform
from vislm.errors import DataError

SIZES = {"train": 6, "val": 3}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return shapes.generate_shapes_world(tmp_path_factory.mktemp("world"), seed=5, sizes=SIZES)


@pytest.fixture(scope="module")
def train(world):
    return load_shapes_split(world, "train")


@pytest.fixture
def transform():
    return ImageTransform(32)


def test_load_shapes_split_matches_the_files(world, train):
    captions, questions, scenes = train
    raw_questions = json.loads(shapes.questions_file(world, "train").read_text())["questions"]
    assert [r.image_id for r in captions] == [1, 2, 3, 4, 5, 6]
    assert all(len(r.captions) == 5 for r in captions)
    assert captions[2].image_path == world / "images" / "train" / "000003.png"
    assert [q.question_id for q in questions] == [q["question_id"] for q in raw_questions]
    assert all(len(q.answers) == 10 and q.multiple_choice_answer in q.answers for q in questions)
    assert {q.image_path for q in questions} <= {r.image_path for r in captions}
    assert sorted(scenes) == [1, 2, 3, 4, 5, 6]
    for record in captions:
        assert shapes.caption_is_faithful(record.captions[0], scenes[record.image_id])


def test_val_ids_continue_after_train(world):
    captions, _, scenes = load_shapes_split(world, "val")
    assert [r.image_id for r in captions] == [7, 8, 9] == sorted(scenes)


def test_unknown_split(world):
    with pytest.raises(DataError) as error:
        load_shapes_split(world, "comp_test")
    assert str(error.value) == f"{world / 'world.json'}: unknown split 'comp_test' (available: train, val)"


def test_missing_world(tmp_path):
    with pytest.raises(DataError) as error:
        load_shapes_split(tmp_path, "train")
    assert str(error.value) == f"{tmp_path / 'world.json'}: shapes world description not found"


def test_missing_scene(world, tmp_path):
    # A copy of the world's annotation files whose scenes file lacks image 3.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(world, copy)
    scenes_path = shapes.scenes_file(copy, "train")
    data = json.loads(scenes_path.read_text())
    data["scenes"] = [s for s in data["scenes"] if s["image_id"] != 3]
    scenes_path.write_text(json.dumps(data))
    with pytest.raises(DataError) as error:
        load_shapes_split(copy, "train")
    assert str(error.value) == f"{scenes_path}: no scene for image id 3 (listed in {shapes.captions_file(copy, 'train')})"


def test_caption_pairs_yield_every_caption_once(train, transform):
    captions, _, _ = train
    dataset = CaptionPairs(captions, transform)
    assert len(dataset) == 30
    items = [dataset[i] for i in range(len(dataset))]
    assert [(item["image_id"], item["text"]) for item in items] == [(r.image_id, c) for r in captions for c in r.captions]
    first = items[0]
    assert set(first) == {"image", "text", "image_id"}
    assert torch.equal(first["image"], transform(load_image(captions[0].image_path)))
    assert first["image"].shape == (3, 32, 32)


def test_caption_pairs_skip_images_without_captions(train, transform):
    captions, _, _ = train
    records = [CaptionRecord(99, captions[0].image_path, []), captions[1]]
    dataset = CaptionPairs(records, transform)
    assert len(dataset) == 5 and {dataset[i]["image_id"] for i in range(5)} == {captions[1].image_id}


def test_image_set(train, transform):
    captions, _, _ = train
    dataset = ImageSet(captions, transform)
    assert len(dataset) == 6
    item = dataset[4]
    assert set(item) == {"image", "image_id"} and item["image_id"] == 5
    assert torch.equal(item["image"], transform(load_image(captions[4].image_path)))


def test_vqa_items(train, transform):
    _, questions, _ = train
    dataset = VQAItems(questions, transform)
    assert len(dataset) == len(questions)
    item = dataset[3]
    record = questions[3]
    assert set(item) == {"image", "question", "answers", "question_id", "image_id"}
    assert (item["question"], item["answers"], item["question_id"], item["image_id"]) == (
        record.question, record.answers, record.question_id, record.image_id)
    item["answers"].append("edited")
    assert len(record.answers) == 10  # items do not share lists with the records


def test_items_batch_with_a_plain_collate(train, transform):
    captions, _, _ = train
    loader = DataLoader(CaptionPairs(captions, transform), batch_size=4, collate_fn=list)
    batch = next(iter(loader))
    assert torch.stack([item["image"] for item in batch]).shape == (4, 3, 32, 32)


def test_cache_decodes_each_image_once(train, transform, monkeypatch):
    captions, questions, _ = train
    decoded = []

    def counting_load(path):
        decoded.append(path)
        return load_image(path)

    monkeypatch.setattr(datasets, "load_image", counting_load)
    cache = ImageCache().preload([r.image_path for r in captions] * 2, transform)
    assert len(cache) == 6 and len(decoded) == 6 and captions[0].image_path in cache
    pairs = CaptionPairs(captions, transform, cache=cache)
    vqa = VQAItems(questions, transform, cache=cache)
    for index in range(len(pairs)):
        pairs[index]
    for index in range(len(vqa)):
        vqa[index]
    assert len(decoded) == 6
    assert torch.equal(pairs[0]["image"], transform(load_image(captions[0].image_path)))


def test_cache_fills_lazily_and_hands_out_copies(train, transform):
    captions, _, _ = train
    cache = ImageCache()
    images = ImageSet(captions, transform, cache=cache)
    first = images[0]["image"]
    assert len(cache) == 1
    first.zero_()  # a caller editing its batch in place...
    assert torch.equal(images[0]["image"], transform(load_image(captions[0].image_path)))  # ...changes nothing


def test_cache_refuses_a_second_transform(train, transform):
    captions, _, _ = train
    cache = ImageCache().preload([captions[0].image_path], transform)
    cache.get(captions[0].image_path, ImageTransform(32))  # equal settings are fine
    with pytest.raises(ValueError, match=r"ImageCache holds images made by ImageTransform\(size=32.*cannot serve ImageTransform\(size=16"):
        cache.get(captions[1].image_path, ImageTransform(16))


def test_broken_image_surfaces_as_data_error(train, transform, tmp_path):
    captions, _, _ = train
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    dataset = ImageSet([CaptionRecord(1, broken, ["a red circle"])], transform)
    with pytest.raises(DataError, match=r"broken\.png: cannot decode image"):
        dataset[0]
