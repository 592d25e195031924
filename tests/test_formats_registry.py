"""load_split: dispatch through DATASETS, per-data-set defaults, val carved from train, limit, image checks."""

import json

import pytest
from PIL import Image

from vislm.config import DataConfig, load_config
from vislm.data.formats.vqarad import default_vqarad_root
from vislm.data.formats.webdataset import write_shards
from vislm.errors import ConfigError, DataError
from vislm.registry import DATASETS
from vislm.tasks.data import load_split, read_split

NAMES = ["shapes", "coco", "karpathy", "vqav2", "visual_genome", "easyvqa", "vqarad", "csv", "jsonl", "folder",
         "webdataset"]


def make_image(path, color="red"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), color).save(path)


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def coco_root(tmp_path):
    """COCO captions and VQAv2 files at their published names, for split "val"."""
    images, annotations, questions = [], [], []
    for index in range(6):
        image_id = 10 + index
        name = f"COCO_val2014_{image_id:012d}.jpg"
        make_image(tmp_path / "val2014" / name)
        images.append({"id": image_id, "file_name": name})
        annotations.append({"id": index, "image_id": image_id, "caption": f"picture {index}"})
        questions.append({"image_id": image_id, "question": f"what is {index}?", "question_id": 100 + index})
    write_json(tmp_path / "annotations" / "captions_val2014.json", {"images": images, "annotations": annotations})
    write_json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", {"questions": questions})
    write_json(tmp_path / "v2_mscoco_val2014_annotations.json", {"annotations": [
        {"question_id": q["question_id"], "image_id": q["image_id"], "answers": [{"answer": "red"}] * 10,
         "multiple_choice_answer": "red", "answer_type": "other", "question_type": "what is"} for q in questions]})
    return tmp_path


def test_every_data_set_is_registered():
    assert set(NAMES) <= set(DATASETS.names())


def test_unknown_data_set():
    with pytest.raises(DataError, match="data.dataset: unknown data set 'imagenet'; expected one of .*vqarad"):
        load_split(DataConfig(dataset="imagenet"), "train")


def test_coco_and_vqav2_published_names(coco_root):
    captions = load_split(DataConfig(dataset="coco", root=str(coco_root)), "val")
    assert [r.image_id for r in captions.captions] == list(range(10, 16)) and captions.questions == []
    vqa = load_split(DataConfig(dataset="vqav2", root=str(coco_root)), "val")
    assert len(vqa.questions) == 6
    assert vqa.questions[0].image_path == coco_root / "val2014" / "COCO_val2014_000000000010.jpg"


def test_vqav2_image_pattern_must_name_the_id(coco_root):
    with pytest.raises(ConfigError, match=r"data.images: .* must contain \{image_id\}"):
        load_split(DataConfig(dataset="vqav2", root=str(coco_root), images="val2014"), "val")


def test_missing_images_fail_load_but_not_read(coco_root):
    (coco_root / "val2014" / "COCO_val2014_000000000012.jpg").unlink()
    cfg = DataConfig(dataset="coco", root=str(coco_root))
    with pytest.raises(DataError, match=r"COCO_val2014_000000000012.jpg: image file not found \(1 of 6 images"):
        load_split(cfg, "val")
    assert len(read_split(cfg, "val").captions) == 6


def test_val_holdout_moves_whole_images_deterministically(coco_root):
    cfg = DataConfig(dataset="vqav2", root=str(coco_root), val_holdout=2, split_seed=7)
    # Here "train" is read from the val2014 files, the only ones the fixture has.
    cfg.questions, cfg.annotations = "v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json"
    cfg.images = "val2014/COCO_val2014_{image_id:012d}.jpg"
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    train_ids, val_ids = {q.image_id for q in train.questions}, {q.image_id for q in val.questions}
    assert len(val_ids) == 2 and not train_ids & val_ids and train_ids | val_ids == set(range(10, 16))
    assert {q.image_id for q in load_split(cfg, "val").questions} == val_ids
    draws = set()
    for seed in range(5):
        cfg.split_seed = seed
        draws.add(frozenset(q.image_id for q in load_split(cfg, "val").questions))
    assert len(draws) > 1  # the seed chooses the draw
    cfg.val_holdout = 6
    with pytest.raises(DataError, match="data.val_holdout: 6 images asked for val, but train has only 6"):
        load_split(cfg, "val")


def test_limit_keeps_first_images_or_questions(coco_root):
    assert len(load_split(DataConfig(dataset="coco", root=str(coco_root), limit=2), "val").captions) == 2
    assert len(load_split(DataConfig(dataset="vqav2", root=str(coco_root), limit=3), "val").questions) == 3


def test_csv_with_columns_from_a_config_override(tmp_path):
    make_image(tmp_path / "a.png")
    (tmp_path / "test.csv").write_text("file,text\na.png,a red square\n")
    cfg = load_config(None, ["data.dataset=csv", f"data.root={tmp_path}", "data.columns={image: file, caption: text}"])
    records = load_split(cfg.data, "test")
    assert records.captions[0].captions == ["a red square"]


def test_folder_and_jsonl(tmp_path):
    make_image(tmp_path / "pics" / "a.png")
    (tmp_path / "train.jsonl").write_text(json.dumps({"image": "pics/a.png", "question": "q?", "answer": "x"}) + "\n")
    assert len(load_split(DataConfig(dataset="folder", root=str(tmp_path / "pics")), "test").captions) == 1
    assert load_split(DataConfig(dataset="jsonl", root=str(tmp_path)), "train").questions[0].answers == ["x"] * 10


def test_webdataset_is_extracted_for_map_style_use(coco_root, tmp_path):
    captions = load_split(DataConfig(dataset="coco", root=str(coco_root)), "val").captions
    write_shards(captions, tmp_path / "wds" / "train", shard_size=4)
    records = load_split(DataConfig(dataset="webdataset", root=str(tmp_path / "wds")), "train")
    assert [r.captions for r in records.captions] == [r.captions for r in captions]
    assert records.captions[0].image_path == tmp_path / "wds" / "train_extracted" / "000000000.jpg"


def test_visual_genome_has_one_split(tmp_path):
    with pytest.raises(DataError, match="Visual Genome has no official splits"):
        load_split(DataConfig(dataset="visual_genome", root=str(tmp_path)), "test")
    with pytest.raises(DataError, match="neither region_descriptions.json nor question_answers.json"):
        load_split(DataConfig(dataset="visual_genome", root=str(tmp_path)), "train")


def test_easyvqa_val_carved_from_train():
    pytest.importorskip("easy_vqa")
    cfg = DataConfig(dataset="easyvqa", val_holdout=400, split_seed=0)
    train, val = read_split(cfg, "train"), read_split(cfg, "val")
    assert len(train.questions) + len(val.questions) == 38_575
    assert len({q.image_id for q in val.questions}) == 400
    assert not {q.image_id for q in train.questions} & {q.image_id for q in val.questions}


@pytest.mark.skipif(default_vqarad_root() is None, reason="VQA-RAD is not in ../shared/data/vqa_rad")
def test_vqarad_default_root():
    assert len(load_split(DataConfig(dataset="vqarad"), "test").questions) == 451


def test_captions_per_image_keeps_each_images_first_captions(tmp_path):
    from vislm.data.shapes import generate_shapes_world

    root = generate_shapes_world(tmp_path, seed=0, sizes={"train": 3, "val": 1, "test": 1, "comp_test": 1})
    everything = load_split(DataConfig(root=str(root)), "train").captions
    assert all(len(r.captions) == 5 for r in everything)
    for keep in (1, 2):
        kept = load_split(DataConfig(root=str(root), captions_per_image=keep), "train").captions
        assert [r.captions for r in kept] == [r.captions[:keep] for r in everything]
