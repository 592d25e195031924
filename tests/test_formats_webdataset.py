"""WebDataset shards: writing, streaming items like the map-style datasets, rank x worker splitting."""

import io
import json
import tarfile
from collections import Counter

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vislm.data.datasets import CaptionPairs, ImageSet, VQAItems
from vislm.data.formats.coco import CaptionRecord
from vislm.data.formats.vqav2 import VQARecord
from vislm.data.formats.webdataset import ShardedDataset, iter_samples, list_shards, read_shard_records, write_shards
from vislm.data.transforms import ImageTransform
from vislm.errors import DataError

TRANSFORM = ImageTransform(8)


def make_records(tmp_path, count=8):
    captions, questions = [], []
    for index in range(count):
        suffix = ".jpg" if index % 2 else ".png"
        path = tmp_path / "src" / f"img{index}{suffix}"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (6 + index, 6), (30 * index, 100, 200)).save(path)
        captions.append(CaptionRecord(100 + index, path, [f"caption {index} a", f"caption {index} b"]))
        questions.append(VQARecord(1000 + index, 100 + index, path, f"question {index}?", ["yes"] * 10, "yes",
                                   "yes/no", "is the"))
    return captions, questions


def sorted_items(items, key):
    return sorted(items, key=lambda item: (item[key], item.get("text", "")))


def assert_same_items(streamed, mapped, key):
    streamed, mapped = sorted_items(streamed, key), sorted_items(mapped, key)
    assert len(streamed) == len(mapped)
    for ours, theirs in zip(streamed, mapped):
        assert ours.keys() == theirs.keys()
        for name in ours:
            if isinstance(ours[name], torch.Tensor):
                assert torch.equal(ours[name], theirs[name])
            else:
                assert ours[name] == theirs[name]


@pytest.fixture
def shards(tmp_path):
    captions, questions = make_records(tmp_path)
    return write_shards([*captions, *questions], tmp_path / "shards", shard_size=2), captions, questions


def test_shards_hold_each_image_once_with_original_bytes(shards):
    paths, captions, _ = shards
    assert [p.name for p in paths] == [f"shard-00000{i}.tar" for i in range(4)]
    with tarfile.open(paths[0]) as tar:
        assert tar.getnames() == ["000000000.png", "000000000.json", "000000001.jpg", "000000001.json"]
        assert tar.extractfile("000000001.jpg").read() == captions[1].image_path.read_bytes()
        meta = json.loads(tar.extractfile("000000000.json").read())
    assert meta["image_id"] == 100 and meta["captions"] == ["caption 0 a", "caption 0 b"]
    assert meta["questions"][0]["question_id"] == 1000


@pytest.mark.parametrize("mode, dataset, key", [("caption", CaptionPairs, "image_id"), ("image", ImageSet, "image_id"),
                                                ("vqa", VQAItems, "question_id")])
def test_streamed_items_equal_map_style_items(shards, mode, dataset, key):
    paths, captions, questions = shards
    records = questions if mode == "vqa" else captions
    mapped = [dataset(records, TRANSFORM)[i] for i in range(len(dataset(records, TRANSFORM)))]
    assert_same_items(list(ShardedDataset(paths[0].parent, TRANSFORM, mode)), mapped, key)


def test_two_ranks_times_two_workers_see_every_sample_once(shards):
    paths, captions, _ = shards
    seen = Counter()
    for rank in range(2):
        dataset = ShardedDataset(paths, TRANSFORM, "caption", shuffle=True, seed=3, rank=rank, world_size=2)
        dataset.set_epoch(1)
        loader = DataLoader(dataset, batch_size=None, num_workers=2)
        seen.update((item["image_id"], item["text"]) for item in loader)
    expected = {(r.image_id, caption) for r in captions for caption in r.captions}
    assert set(seen) == expected and set(seen.values()) == {1}


def test_shuffle_changes_shard_order_per_epoch_but_not_the_partition(shards):
    paths, _, _ = shards
    orders = []
    for epoch in range(4):
        per_rank = []
        for rank in range(2):
            dataset = ShardedDataset(paths, TRANSFORM, shuffle=True, seed=0, rank=rank, world_size=2)
            dataset.set_epoch(epoch)
            per_rank.append(dataset.my_shards())
        assert sorted(per_rank[0] + per_rank[1]) == sorted(paths)
        orders.append(per_rank[0] + per_rank[1])
    assert len({tuple(order) for order in orders}) > 1


def test_read_shard_records_extracts_images(shards, tmp_path):
    paths, captions, questions = shards
    got_captions, got_questions, missing = read_shard_records(paths, tmp_path / "out")
    assert missing == []
    assert [(r.image_id, r.captions) for r in got_captions] == [(r.image_id, r.captions) for r in captions]
    assert [q.question_id for q in got_questions] == [q.question_id for q in questions]
    assert got_captions[3].image_path == tmp_path / "out" / "000000003.jpg"
    assert got_captions[3].image_path.read_bytes() == captions[3].image_path.read_bytes()


def test_the_webdataset_package_reads_our_shards(shards):
    wds = pytest.importorskip("webdataset")
    paths, _, _ = shards
    samples = list(wds.WebDataset([str(p) for p in paths], shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(8)]
    assert json.loads(samples[2]["json"])["image_id"] == 102 and "png" in samples[2]


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def png_bytes():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    return buffer.getvalue()


GOOD_META = json.dumps({"image_id": 1, "captions": ["x"], "questions": []}).encode()


@pytest.mark.parametrize(
    "members, expected",
    [
        ([("a.png", png_bytes())], "sample a has no .json member"),
        ([("a.json", b"{nope")], r"sample a.json is not valid UTF-8 JSON"),
        ([("a.json", b'{"image_id": "1", "captions": [], "questions": []}')], "sample a.image_id must be an integer"),
        ([("a.json", b'{"image_id": 1, "captions": [2], "questions": []}')],
         "sample a.captions must be a list of strings"),
        ([("../a.json", GOOD_META)], "member.name must be a relative path inside"),
        ([("/abs/a.json", GOOD_META)], "member.name must be a relative path inside"),
        ([("a.json", GOOD_META), ("a.json", GOOD_META)], "sample a has two 'json' members"),
        ([("README", b"hi")], "member 'README' has no key.extension name"),
    ],
)
def test_malformed_shards_name_the_shard(tmp_path, members, expected):
    shard = write_tar(tmp_path / "bad.tar", members)
    with pytest.raises(DataError, match=expected) as error:
        list(iter_samples(shard))
    assert str(error.value).startswith(str(shard)) and "\n" not in str(error.value)


def test_not_a_tar_file(tmp_path):
    shard = tmp_path / "junk.tar"
    shard.write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(DataError, match="junk.tar: not a readable tar shard"):
        list(iter_samples(shard))


def test_missing_shards(tmp_path):
    with pytest.raises(DataError, match="shard folder or tar file not found"):
        list_shards(tmp_path / "nothing")
    with pytest.raises(DataError, match="no .tar shards in this folder"):
        list_shards(tmp_path)
    with pytest.raises(DataError, match="gone.tar: shard not found"):
        list(iter_samples(tmp_path / "gone.tar"))


def test_undecodable_image_names_shard_and_sample(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [("k.png", b"not a png"), ("k.json", GOOD_META)])
    with pytest.raises(DataError, match=r"s.tar: sample k.png: cannot decode image"):
        list(ShardedDataset(shard, TRANSFORM))


def test_sample_without_image_is_reported(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [("k.json", GOOD_META)])
    assert read_shard_records([shard])[2] == ["s.tar/k"]
    with pytest.raises(DataError, match="sample k has no image member"):
        list(ShardedDataset(shard, TRANSFORM))


def test_write_refuses_one_id_for_two_images(tmp_path):
    captions, _ = make_records(tmp_path, 2)
    captions[1].image_id = captions[0].image_id
    with pytest.raises(DataError, match="image id 100 also names"):
        write_shards(captions, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # checked before anything is written
