"""Training straight from WebDataset shards: a stream has no length, so the trainer reads
train.steps_per_epoch steps per epoch; it reshuffles the shards each epoch and resumes exactly."""

import json

import pytest
import torch
from PIL import Image

from vislm.config import TrainConfig
from vislm.data.bad_data import BadData, SkippingCollate
from vislm.data.collate import CaptionCollator
from vislm.data.formats.coco import CaptionRecord
from vislm.data.formats.webdataset import ShardedDataset, write_shards
from vislm.data.tokenizer import train_tokenizer
from vislm.data.transforms import ImageTransform
from vislm.errors import ConfigError, DataError
import vislm.models  # noqa: F401  (registers the components)
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS
from vislm.train import Trainer

COLOURS = ["red", "green", "blue", "yellow"]


def make_records(root, count=12):
    records = []
    for index in range(count):
        colour = COLOURS[index % 4]
        path = root / "src" / f"{index}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (16, 16), colour).save(path)
        records.append(CaptionRecord(index, path, [f"a {colour} picture", f"all {colour} number {index}"]))
    return records


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    records = make_records(root)
    shards = write_shards(records, root / "shards", shard_size=3)  # 4 shards of 6 captions
    tokenizer = train_tokenizer([c for r in records for c in r.captions], vocab_size=60)
    return shards, CaptionCollator(tokenizer, max_len=12), tokenizer.vocab_size


class Counting(torch.nn.Module):
    """A tiny dual encoder that counts its calls and can crash on one, like a killed run."""

    def __init__(self, vocab_size, crash_on_call=None):
        super().__init__()
        torch.manual_seed(0)
        text = {**TEXT_MODELS.tiny_kwargs("encoder"), "vocab_size": vocab_size, "dropout": 0.2}
        self.model = FUSIONS.create("dual_encoder", vision_kwargs=VISION_ENCODERS.tiny_kwargs("cnn"),
                                    text_kwargs=text, embed_dim=8)
        self.calls, self.crash_on_call, self.image_ids = 0, crash_on_call, []

    def forward(self, batch):
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise KeyboardInterrupt("simulated crash")
        self.image_ids.append(batch["image_ids"].tolist())
        return self.model(batch)


def config(**overrides):
    base = dict(epochs=2, steps_per_epoch=4, batch_size=3, lr=0.01, warmup_steps=1, log_every=1, progress=False,
                seed=1, save_every_steps=2, keep_last=5)
    return TrainConfig(**{**base, **overrides})


def dataset(shards):
    return ShardedDataset(shards, ImageTransform(16), mode="caption", shuffle=True, seed=3)


def losses(out_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (out_dir / "log.jsonl").read_text().splitlines())}


def test_a_stream_trains_for_the_configured_steps_and_resumes_exactly(stream, tmp_path):
    shards, collate, vocab = stream
    straight = Counting(vocab)
    Trainer(straight, dataset(shards), collate, config(), tmp_path / "straight").fit()
    assert sorted(losses(tmp_path / "straight")) == list(range(1, 9))
    # Each epoch reads 4 steps of 3 captions from the start of a reshuffled shard order.
    epochs = [sum(straight.image_ids[:4], []), sum(straight.image_ids[4:], [])]
    assert all(len(ids) == 12 for ids in epochs) and epochs[0] != epochs[1]

    crashing = Counting(vocab, crash_on_call=7)  # in epoch 2, after the checkpoint at step 6
    with pytest.raises(KeyboardInterrupt):
        Trainer(crashing, dataset(shards), collate, config(), tmp_path / "resumed").fit()
    resumed = Counting(vocab)
    Trainer(resumed, dataset(shards), collate, config(), tmp_path / "resumed").fit(resume=True)
    assert resumed.image_ids == straight.image_ids[6:]  # steps 7 and 8, the same captions
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")


def test_a_stream_needs_steps_per_epoch_and_enough_data(stream, tmp_path):
    shards, collate, vocab = stream
    with pytest.raises(ConfigError, match="train.steps_per_epoch"):
        Trainer(Counting(vocab), dataset(shards), collate, config(steps_per_epoch=0), tmp_path)
    # 24 captions make 8 batches of 3: an epoch of 9 steps runs dry.
    trainer = Trainer(Counting(vocab), dataset(shards), collate, config(steps_per_epoch=9), tmp_path)
    with pytest.raises(DataError, match="stream ended after 8 of the 9 steps of epoch 1"):
        trainer.fit()


def test_a_stream_skips_and_counts_a_sample_whose_image_is_broken(stream, tmp_path):
    _, collate, vocab = stream
    records = make_records(tmp_path)
    broken = tmp_path / "src" / "broken.png"
    broken.write_bytes(b"not an image at all")
    records.insert(5, CaptionRecord(99, broken, ["a broken picture", "nothing to see"]))
    shards = write_shards(records, tmp_path / "shards", shard_size=3)
    with pytest.raises(DataError, match="sample 000000005.png: cannot decode image"):
        list(ShardedDataset(shards, ImageTransform(16)))  # the default: raise

    data = ShardedDataset(shards, ImageTransform(16), on_error="skip")
    bad = BadData("skip", max_fraction=0.1)
    model = Counting(vocab)
    # 12 good samples of 2 captions: 8 steps of 3 captions.
    Trainer(model, data, SkippingCollate(collate), config(epochs=1, steps_per_epoch=8), tmp_path / "run",
            bad_data=bad).fit()
    assert 99 not in sum(model.image_ids, []) and len(sum(model.image_ids, [])) == 24
    assert bad.skipped == 1 and bad.reasons["cannot decode image"]["count"] == 1
    example = bad.reasons["cannot decode image"]["examples"][0]
    assert "shard-000001.tar: sample 000000005.png: cannot decode image" in example
