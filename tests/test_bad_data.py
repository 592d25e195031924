"""Bad data: a corpus of broken and odd inputs, each converted, normalised, or (under
data.on_error) raised with a message naming the file, or skipped, counted and summarised;
a limit on how much may be skipped; and evaluation that never skips.

Covered elsewhere: one-line errors for each broken image (test_images.py), for malformed,
repeated-id and escaping records in every reader (test_formats*.py, test_safe_loading.py).
"""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vislm.config import DataConfig, load_config
from vislm.data.bad_data import SKIPPED_KEY, BadData, SkippingCollate, SkippingDataset, reason_of
from vislm.data.collate import AnswerVocabulary, CaptionCollator
from vislm.data.formats.generic import read_jsonl
from vislm.data.images import load_image
from vislm.data.shapes import generate_shapes_world
from vislm.data.text import clean_text
from vislm.data.tokenizer import train_tokenizer
from vislm.errors import DataError
from vislm.tasks.data import load_split
from vislm.tasks.run import corpus, train
from vislm.tasks.vqa import VQATask

# --- The corpus ----------------------------------------------------------------------------------


def noise(width=24, height=16, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)


def png_bytes(image):
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_corpus(folder):
    """name -> path; "bad_*" files cannot be used, "odd_*" files must load as upright RGB."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(noise())
    good_png = png_bytes(rgb)
    rgb.save(folder / "whole.jpg", quality=90)
    files = {
        "bad_truncated_jpeg": (folder / "whole.jpg").read_bytes()[:300],
        "bad_truncated_png": good_png[: len(good_png) // 2],
        "bad_corrupt_png": good_png[:60] + bytes(b ^ 0xFF for b in good_png[60:120]) + good_png[120:],
        "bad_zero_bytes": b"",
        "bad_text_named_as_image": b"<html>404 not found</html>\n",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.jpg"
        paths[name].write_bytes(data)
    # A decompression bomb: a tiny file that decodes to 81 million pixels.
    paths["bad_bomb"] = folder / "bad_bomb.png"
    Image.new("1", (9000, 9000)).save(paths["bad_bomb"])
    paths["bad_missing"] = folder / "bad_missing.png"
    odd = {
        "odd_cmyk": Image.fromarray(noise()).convert("CMYK"),
        "odd_16_bit": Image.fromarray(noise(channels=1)[..., 0].astype(np.uint16) * 257),
        "odd_palette": Image.fromarray(noise()).convert("P"),
        "odd_grayscale": Image.fromarray(noise(channels=1)[..., 0]),
        "odd_rgba": Image.fromarray(noise(channels=4)),
    }
    for name, image in odd.items():
        paths[name] = folder / f"{name}.{'jpg' if name == 'odd_cmyk' else 'png'}"
        image.save(paths[name])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    paths["odd_exif_rotated"] = folder / "odd_exif_rotated.jpg"
    rgb.save(paths["odd_exif_rotated"], exif=exif)
    return paths


def test_every_corpus_image_loads_upright_rgb_or_fails_naming_the_file(tmp_path):
    paths = write_corpus(tmp_path)
    for name, path in paths.items():
        if name.startswith("bad_"):
            with pytest.raises(DataError) as error:
                load_image(path)
            assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value), name
        else:
            image = load_image(path)
            assert image.mode == "RGB", name
            assert image.size == ((16, 24) if name == "odd_exif_rotated" else (24, 16)), name


# --- Text ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, clean", [
    ("a red\tsquare\n\n next to  a circle ", "a red square next to a circle"),
    ("a \x00red\x1b[31m square\x7f", "a red[31m square"),
    ("zero\u200bwidth and \u202eoverride\u202c", "zerowidth and override"),
    ("lone \ud800surrogate", "lone surrogate"),
    ("no\u00a0break\u3000spaces", "no break spaces"),
    ("carré rouge, 红色的正方形, مربع أحمر", "carré rouge, 红色的正方形, مربع أحمر"),  # mixed scripts stay
    ("e\u0301", "\u00e9"),  # NFC
    ("می\u200cخواهم 👩\u200d💻", "می\u200cخواهم 👩\u200d💻"),  # joiners carry meaning
    ("\x00\x07\u200b \t", ""),
])
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


def test_a_ten_thousand_character_caption_is_truncated_by_the_tokenizer():
    tokenizer = train_tokenizer(["a red square", "a blue circle"] * 5, vocab_size=40)
    long = clean_text("a red square " * 800)
    assert len(long) > 10_000
    batch = CaptionCollator(tokenizer, max_len=12)([{"image": torch.zeros(3), "text": long, "image_id": 1}])
    assert batch["input_ids"].shape == (1, 12) and batch["attention_mask"].all()


# --- The policy and its tally --------------------------------------------------------------------


def test_raise_policy_raises_the_error_itself():
    error = DataError("x.png: cannot decode image (OSError: truncated)")
    with pytest.raises(DataError) as raised:
        BadData("raise").skip(error)
    assert raised.value is error


def test_skip_policy_counts_by_reason_keeps_examples_and_enforces_the_limit():
    bad = BadData("skip", max_fraction=0.1)
    bad.skip("a.png: cannot decode image (OSError: truncated)", count=3)
    bad.skip("b.png: cannot decode image (UnidentifiedImageError: x)")
    bad.skip("c.png: image file not found")
    bad.note("d.png: answer outside the answer vocabulary, zero target (question id 7: 'maybe')", "outside")
    assert bad.skipped == 5
    assert {reason: entry["count"] for reason, entry in bad.reasons.items()} == {
        "cannot decode image": 4, "image file not found": 1}
    assert bad.reasons["cannot decode image"]["examples"][0].startswith("a.png: ")
    assert bad.notes["outside"]["count"] == 1
    bad.check(total=50)  # 10%: at the limit, not past it
    with pytest.raises(DataError, match=r"5 of 49 training samples are bad \(10.2%, more than "
                                        r"data.max_skip_fraction=0.1\); first: a.png: cannot decode"):
        bad.check(total=49)
    assert bad.summary_lines()[0] == "bad data: 5 samples skipped"
    assert reason_of("no colon here") == "no colon here"
    assert reason_of("s.tar: sample 5.png: cannot decode image (OSError: x (3 bytes))") == "cannot decode image"
    assert reason_of("/My Photos (2020)/a.png: image file not found") == "image file not found"


def test_a_bad_policy_or_limit_is_a_config_error():
    with pytest.raises(ValueError, match="data.on_error"):
        BadData("ignore")
    with pytest.raises(ValueError, match="data.max_skip_fraction"):
        BadData("skip", 1.5)
    with pytest.raises(ValueError, match="data.on_error"):
        load_config(None, ["data.on_error=ignore"])


# --- Failures at batch time (no image cache) -----------------------------------------------------


class Flaky(torch.utils.data.Dataset):
    def __init__(self, size, bad):
        self.size, self.bad = size, set(bad)

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        if index in self.bad:
            raise DataError(f"img{index}.png: cannot decode image (OSError: broken)")
        return {"x": torch.tensor([float(index)])}


def test_skipping_dataset_replaces_a_failed_item_and_reports_it():
    data = SkippingDataset(Flaky(8, bad={2, 3, 5}))
    assert data[1] == {"x": torch.tensor([1.0]), SKIPPED_KEY: []}
    item = data[2]
    failed = [index for index, _ in item[SKIPPED_KEY]]
    assert failed[0] == 2 and set(failed) <= {2, 3, 5} and item["x"].item() not in (2.0, 3.0, 5.0)
    assert torch.equal(data[2]["x"], item["x"])  # the same replacement every time: exact resume
    batch = SkippingCollate(None)([data[0], data[2]])
    assert batch["x"][0].item() == 0.0 and len(batch[SKIPPED_KEY]) == len(failed)
    with pytest.raises(DataError, match="16 tries to load a training sample failed, from index 0 on; last: img"):
        SkippingDataset(Flaky(3, bad={0, 1, 2}))[0]


# --- End to end: `vislm train` on a shapes world holding the corpus --------------------------------

TINY = ["data.image_size=32", "data.eval_splits=[test]", "tokenizer.vocab_size=120",
        "model.vision_kwargs={dim: 16, widths: [8, 8, 16]}", "model.text_kwargs={dim: 16, depth: 1, heads: 2}",
        "model.fusion_kwargs={embed_dim: 8}", "train.epochs=2", "train.batch_size=4", "train.warmup_steps=1",
        "train.precision=fp32", "train.progress=false", "train.eval_every=0", "eval.batch_size=16"]
# Train images replaced by corpus files: five that cannot be used, six odd ones that must load.
SWAPS = {1: "bad_truncated_png", 2: "bad_zero_bytes", 3: "bad_text_named_as_image", 4: "bad_bomb",
         5: "bad_missing", 6: "odd_cmyk", 7: "odd_16_bit", 8: "odd_palette", 9: "odd_exif_rotated",
         10: "odd_rgba", 11: "odd_grayscale"}
BAD_REASONS = {"cannot decode image", "image file not found", "caption empty once control characters are removed",
               "image too large, refusing a possible decompression bomb"}


@pytest.fixture(scope="module")
def broken_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    world = generate_shapes_world(root / "world", seed=4, sizes={"train": 16, "test": 3}, image_size=32)
    corpus_paths = write_corpus(root / "corpus")
    for image_id, name in SWAPS.items():
        target = world / "images" / "train" / f"{image_id:06d}.png"
        target.unlink()
        if name != "bad_missing":
            shutil.copy(corpus_paths[name], target)
    captions_file = world / "annotations" / "captions_train.json"
    captions = json.loads(captions_file.read_text())
    edits = {12: "\x00\x07\u200b", 13: "a red\tsquare \x1b[31m 红色 مربع" * 3, 14: "a red square " * 800}
    for annotation in captions["annotations"]:
        if annotation["image_id"] in edits:
            annotation["caption"] = edits.pop(annotation["image_id"])
    captions_file.write_text(json.dumps(captions))
    return world


def samples_of(world, image_ids, questions=True):
    """Captions (and questions) of these train images."""
    split = load_split(DataConfig(root=str(world)), "train", check_files=False)
    captions = sum(len(r.captions) for r in split.captions if r.image_id in image_ids)
    return captions + (sum(1 for q in split.questions if q.image_id in image_ids) if questions else 0)


def run(world, out, *overrides):
    cfg = load_config("configs/demo_retrieval.yaml", [f"data.root={world}", *TINY, *overrides])
    return train(cfg, out)


@pytest.mark.parametrize("cached", [True, False])
def test_training_skips_counts_and_summarises_the_bad_samples(broken_world, tmp_path, cached):
    result = run(broken_world, tmp_path, "data.max_skip_fraction=0.5", f"data.cache_images={str(cached).lower()}")
    summary = result["bad_data"]
    assert set(summary["reasons"]) == BAD_REASONS
    examples = [e for entry in summary["reasons"].values() for e in entry["examples"]]
    for image_id in (1, 2, 3, 4, 5):
        assert any(f"{image_id:06d}.png: " in e for e in examples), image_id
    assert not any(f"{image_id:06d}.png: " in e for e in examples for image_id in range(6, 12))
    if cached:
        # Decoded up front: each bad image takes its captions and questions; one caption is
        # empty once cleaned.
        assert summary["skipped"] == samples_of(broken_world, {1, 2, 3, 4, 5}) + 1
    else:
        # Only the missing file is found up front; the others fail as batches load them,
        # counted once per caption pair however many epochs meet it.
        assert summary["reasons"]["image file not found"]["count"] == samples_of(broken_world, {5})
        decode = summary["reasons"]["cannot decode image"]["count"]
        assert 0 < decode <= samples_of(broken_world, {1, 2, 3}, questions=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1] == {"bad_data": summary}
    assert json.loads((tmp_path / "metrics.json").read_text())["bad_data"] == summary


def test_the_raise_policy_stops_at_the_first_bad_file(broken_world, tmp_path):
    with pytest.raises(DataError) as error:
        run(broken_world, tmp_path, "data.on_error=raise")
    # Missing files are looked for first, as the split is read; then text, then images.
    assert "000005.png: image file not found" in str(error.value) and "\n" not in str(error.value)
    (broken_world / "images" / "train" / "000005.png").write_bytes(b"")  # now present, and broken
    try:
        with pytest.raises(DataError, match=r"000012.png: caption empty once control characters are removed "
                                            r"\(caption 0 of image id 12: '\\x00\\x07\\u200b'\)$"):
            run(broken_world, tmp_path, "data.on_error=raise")
    finally:
        (broken_world / "images" / "train" / "000005.png").unlink()


def test_too_many_bad_samples_stop_the_run_with_the_first_one_named(broken_world, tmp_path):
    bad, total = samples_of(broken_world, {1, 2, 3, 4, 5}) + 1, samples_of(broken_world, set(range(1, 17)))
    with pytest.raises(DataError, match=rf"^{bad} of {total} training samples are bad \(\d+\.\d%, more than "
                                        r"data.max_skip_fraction=0.01\); first: .*000012.png: caption empty"):
        run(broken_world, tmp_path)


def test_evaluation_never_skips(tmp_path):
    world = generate_shapes_world(tmp_path / "world", seed=4, sizes={"train": 8, "test": 2}, image_size=32)
    victim = world / "images" / "test" / "000010.png"
    victim.write_bytes(b"GIF89a broken")
    with pytest.raises(DataError, match=f"{victim}: cannot decode image"):
        run(world, tmp_path / "run", "train.epochs=1")


# --- A caption left blank in its annotation file ------------------------------------------------

BLANK = "caption empty or only whitespace in its annotation file"


@pytest.fixture
def small_world(tmp_path):
    return generate_shapes_world(tmp_path / "world", seed=4, sizes={"train": 8, "test": 2}, image_size=32)


def blank_a_caption(world, split, position):
    """Make one caption of `split` whitespace only; return the message that must name it."""
    path = world / "annotations" / f"captions_{split}.json"
    data = json.loads(path.read_text())
    annotation = data["annotations"][position]
    annotation["caption"] = " \t\n\u3000 "
    path.write_text(json.dumps(data))
    return f"{path}: annotations[{position}].caption is empty or only whitespace (annotation id {annotation['id']})"


def test_skip_drops_a_blank_caption_counts_it_and_names_it_in_the_summary(small_world, tmp_path):
    where = blank_a_caption(small_world, "train", 3)
    captions = samples_of(small_world, set(range(1, 9)), questions=False)
    result = run(small_world, tmp_path / "run", "data.on_error=skip", "data.max_skip_fraction=0.1", "train.epochs=1")
    summary = result["bad_data"]
    assert summary["skipped"] == 1 and summary["reasons"] == {BLANK: {"count": 1, "examples": [where]}}
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1] == {"bad_data": summary}
    # The other captions all trained: the epoch has as many steps of 4 as they fill.
    assert [r["step"] for r in log if "loss" in r][-1] == (captions - 1) // 4


def test_raise_stops_at_a_blank_caption_naming_the_file_record_and_field(small_world, tmp_path):
    where = blank_a_caption(small_world, "train", 3)
    with pytest.raises(DataError) as error:
        run(small_world, tmp_path / "run", "data.on_error=raise")
    assert str(error.value) == where


def test_a_blank_caption_in_an_evaluation_split_raises_whatever_the_policy(small_world, tmp_path):
    where = blank_a_caption(small_world, "test", 0)
    with pytest.raises(DataError) as error:
        run(small_world, tmp_path / "run", "data.on_error=skip", "data.max_skip_fraction=1")
    assert str(error.value) == where


# --- VQA answers outside the vocabulary ----------------------------------------------------------


def test_an_answer_outside_the_vocabulary_is_a_zero_target_and_is_counted(tmp_path):
    vocabulary = AnswerVocabulary(["yes", "no"])
    assert vocabulary.scores(["maybe"] * 10).tolist() == [0.0, 0.0]
    assert vocabulary.scores(["yes"] * 9 + ["maybe"]).tolist() == [1.0, 0.0]

    world = generate_shapes_world(tmp_path / "world", seed=1, sizes={"train": 6}, image_size=32)
    cfg = load_config("configs/demo_vqa.yaml", [f"data.root={world}", "data.eval_splits=[]"])
    splits = {"train": load_split(cfg.data, "train")}
    outside = [q for q in splits["train"].questions if not {"yes", "no"} & set(q.answers)]
    assert outside  # the shapes world also asks for colours, shapes and counts
    task = VQATask(cfg, train_tokenizer(corpus(splits["train"]), 80), splits, answers=["yes", "no"])
    note = task.bad_data.notes["answer outside the answer vocabulary, zero target"]
    assert note["count"] == len(outside) and task.bad_data.skipped == 0


# --- Repeated ids in home-made tables (the JSON formats: test_formats*.py) ----------------------


def test_repeated_question_ids_and_one_id_for_two_images_are_refused(tmp_path):
    table = tmp_path / "t.jsonl"
    rows = [{"image": "a.png", "question": "q?", "answer": "x", "question_id": 7},
            {"image": "b.png", "question": "q?", "answer": "y", "question_id": 7}]
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="line 2 repeats question id 7"):
        read_jsonl(table, check_files=False)
    rows = [{"image": "a.png", "caption": "x", "image_id": 3}, {"image": "b.png", "caption": "y", "image_id": 3}]
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="image id 3 is shared by 'a.png' and 'b.png'"):
        read_jsonl(table, check_files=False)
