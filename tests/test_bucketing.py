"""Length bucketing: same examples, less padding, deterministic, and padding is harmless."""

import random

import pytest
import torch

from vislm.config import TrainConfig
from vislm.data.bucketing import bucketed_batches, padding_fraction
from vislm.errors import ConfigError
from vislm.models.fusion.captioner import Captioner
from vislm.train import Trainer
from vislm.train.trainer import epoch_batches


def _lengths(n=1000, seed=0):
    rng = random.Random(seed)
    return [rng.randint(4, 30) for _ in range(n)]


def test_each_example_once_less_padding_and_seeded():
    lengths = _lengths()
    batches = bucketed_batches(lengths, batch_size=16, accum=2, seed=3)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) == (1000 // 32) * 32
    assert all(len(b) == 16 for b in batches)
    plain = epoch_batches(len(lengths), 16, 2, seed=3, epoch=0)
    assert padding_fraction(lengths, batches) < 0.5 * padding_fraction(lengths, plain)
    assert bucketed_batches(lengths, 16, 2, seed=3) == batches
    assert bucketed_batches(lengths, 16, 2, seed=4) != batches


def test_processes_split_every_global_batch():
    lengths = _lengths(200)
    parts = [bucketed_batches(lengths, 8, 1, seed=0, process_index=p, num_processes=2) for p in (0, 1)]
    assert len(parts[0]) == len(parts[1])
    assert not set(i for b in parts[0] for i in b) & set(i for b in parts[1] for i in b)


def test_padding_does_not_change_an_examples_loss():
    # What bucketing removes is padding; the model computes the same for each example.
    torch.manual_seed(0)
    model = Captioner(vision="cnn", vision_kwargs={"image_size": 16, "dim": 16, "widths": (8, 8, 16)},
                      text="decoder", text_kwargs={"vocab_size": 40, "dim": 16, "depth": 1,
                                                   "heads": 2, "max_len": 16}).eval()
    pixels, ids = torch.randn(1, 3, 16, 16), torch.randint(3, 40, (1, 6))
    short = {"pixel_values": pixels, "input_ids": ids, "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    padded = {"pixel_values": pixels, "input_ids": torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], 1),
              "attention_mask": torch.cat([torch.ones(1, 6), torch.zeros(1, 5)], 1).long()}
    assert abs(model(short)["loss"].item() - model(padded)["loss"].item()) < 1e-5


def test_trainer_trains_on_length_buckets(tmp_path):
    class Texts(torch.utils.data.Dataset):
        def __init__(self, n=24):
            self.sizes = [2 + i % 7 for i in range(n)]

        def __len__(self):
            return len(self.sizes)

        def __getitem__(self, i):
            return {"x": torch.full((self.sizes[i],), float(i))}

        def lengths(self):
            return self.sizes

    seen = []

    def collate(items):
        width = max(len(it["x"]) for it in items)
        seen.append([len(it["x"]) for it in items])
        return {"x": torch.stack([torch.nn.functional.pad(it["x"], (0, width - len(it["x"]))) for it in items])}

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, batch):
            return {"loss": ((batch["x"].mean() * self.w - 1) ** 2)}

    cfg = TrainConfig(epochs=2, batch_size=4, warmup_steps=0, log_every=1, progress=False,
                      length_bucketing=True)
    Trainer(Model(), Texts(), collate, cfg, tmp_path / "run").fit()
    assert len(seen) == 2 * 6
    # Each batch is one bucket: a spread of at most 2 lengths with 24 examples in one pool.
    assert max(max(b) - min(b) for b in seen) <= 2
    with pytest.raises(ConfigError, match="length of every example"):
        Trainer(Model(), torch.utils.data.TensorDataset(torch.zeros(8, 2)), None, cfg,
                tmp_path / "other").fit()
