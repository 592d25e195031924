"""Fuzzing the two doors user input comes through: whatever a config or a data file holds,
the only exception that may come out is the one-line error meant for users (ConfigError for
configs, DataError for data files), never a TypeError or KeyError from deep inside."""

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vislm.config import Config, from_dict, load_config
from vislm.data.formats.coco import read_coco_captions
from vislm.data.formats.generic import read_jsonl
from vislm.data.formats.karpathy import read_karpathy
from vislm.data.formats.visual_genome import read_visual_genome
from vislm.data.formats.vqarad import read_vqarad
from vislm.data.formats.vqav2 import read_vqav2
from vislm.errors import ConfigError, DataError

# No example database (nothing written into the repository); a fixed budget per test.
FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def values(keys: list[str]) -> st.SearchStrategy:
    """JSON/YAML-like values whose mappings use `keys` (real field names) most of the time."""
    leaves = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12)
    key = st.sampled_from(keys) | st.text(max_size=6)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(key, inner, max_size=5),
                        max_leaves=25)


# ---------------------------------------------------------------------------------------
# Configs

SECTIONS = ["task", "data", "tokenizer", "model", "train", "eval"]
FIELDS = SECTIONS + [
    "dataset", "root", "image_size", "max_text_len", "eval_splits", "limit", "columns", "on_error",
    "max_skip_fraction", "vocab_size", "kind", "fusion", "vision", "vision_kwargs", "text_kwargs", "epochs",
    "batch_size", "lr", "betas", "precision", "max_bad_steps", "steps_per_epoch", "num_beams", "meteor",
]


@FUZZ
@given(values(FIELDS))
def test_from_dict_raises_only_config_errors(data):
    try:
        from_dict(Config, data)
    except ConfigError:
        pass


@FUZZ
@given(st.dictionaries(st.sampled_from(SECTIONS), values(FIELDS), max_size=4))
def test_sections_of_random_values_raise_only_config_errors(data):
    try:
        from_dict(Config, data)
    except ConfigError:
        pass


dotted = st.lists(st.sampled_from(FIELDS) | st.text(max_size=5), min_size=1, max_size=3).map(".".join)
yamlish = st.text(alphabet="[]{}:,'\"=.-_ #!&*|>%@`\n\ttrue0123456789abc", max_size=25)


@FUZZ
@given(st.lists(st.tuples(dotted, yamlish).map("=".join) | st.text(max_size=15), max_size=4))
def test_overrides_raise_only_config_errors(overrides):
    try:
        load_config(None, overrides)
    except ConfigError:
        pass


@FUZZ
@given(yamlish | st.text(max_size=40) | values(FIELDS).map(json.dumps))
def test_config_files_raise_only_config_errors(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path)
    except ConfigError:
        pass


# ---------------------------------------------------------------------------------------
# Data files: each reader on random documents shaped like its format, with any field
# missing, of the wrong type, empty, repeated or escaping the root now and then


ANY = values(["id", "image_id", "images", "answers", "captions"])
IDS = st.integers(0, 3)
TEXTS = st.sampled_from(["a red square", "yes", "2", "", "  ", "\x00\x1b", "a.png", "../a.png", "/etc", "train",
                         "val", "https://x.org/VG_100K/1.jpg", "CLOSED"])


def field(plausible: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(plausible, plausible, plausible, ANY)  # mostly plausible


def record(**fields: st.SearchStrategy) -> st.SearchStrategy:
    """A JSON object holding `fields`, now and then only some of them."""
    fields = {name: field(value) for name, value in fields.items()}
    every = st.fixed_dictionaries(fields)
    return st.one_of(every, every, every, st.fixed_dictionaries({}, optional=fields))


def records(**fields: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(record(**fields), max_size=4)


def document(shape: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(shape, shape, shape, ANY)


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data, allow_nan=True), encoding="utf-8")
    return path


def only_data_errors(read) -> None:
    try:
        read()
    except DataError:
        pass


COCO = record(images=records(id=IDS, file_name=TEXTS),
              annotations=records(id=IDS, image_id=IDS, caption=TEXTS))
QUESTIONS = record(questions=records(question_id=IDS, image_id=IDS, question=TEXTS))
ANNOTATIONS = record(annotations=records(question_id=IDS, image_id=IDS, answers=records(answer=TEXTS),
                                         multiple_choice_answer=TEXTS, answer_type=TEXTS, question_type=TEXTS))
KARPATHY = record(images=records(filename=TEXTS, filepath=TEXTS, imgid=IDS, cocoid=IDS, split=TEXTS,
                                 sentences=records(raw=TEXTS)))
VG_IMAGES = records(image_id=IDS, id=IDS, url=TEXTS)
VG_REGIONS = records(id=IDS, regions=records(phrase=TEXTS, image_id=IDS))
VG_QAS = records(id=IDS, qas=records(qa_id=IDS, question=TEXTS, answer=TEXTS))
VQARAD = records(qid=IDS, image_name=TEXTS, question=TEXTS, answer=TEXTS | IDS, answer_type=TEXTS,
                 question_type=TEXTS)
ROW = record(image=TEXTS, caption=TEXTS | st.lists(TEXTS, max_size=3), question=TEXTS,
             answer=TEXTS | st.lists(TEXTS, max_size=3), image_id=IDS | TEXTS, question_id=IDS | TEXTS,
             answer_type=TEXTS)


@FUZZ
@given(document(COCO))
def test_coco_reader(tmp_path, data):
    only_data_errors(lambda: read_coco_captions(write(tmp_path / "c.json", data), tmp_path, check_files=False))


@FUZZ
@given(document(QUESTIONS), document(ANNOTATIONS))
def test_vqav2_reader(tmp_path, questions, annotations):
    q, a = write(tmp_path / "q.json", questions), write(tmp_path / "a.json", annotations)
    only_data_errors(lambda: read_vqav2(q, a, image_path_for=lambda i: tmp_path / f"{i}.png", check_files=False))


@FUZZ
@given(document(KARPATHY), st.sampled_from(["train", "val", "test", "other"]))
def test_karpathy_reader(tmp_path, data, split):
    only_data_errors(lambda: read_karpathy(write(tmp_path / "k.json", data), tmp_path, split, check_files=False))


@FUZZ
@given(document(VG_IMAGES), document(VG_REGIONS), document(VG_QAS))
def test_visual_genome_reader(tmp_path, images, regions, qas):
    files = [write(tmp_path / f"{n}.json", d) for n, d in (("i", images), ("r", regions), ("q", qas))]
    only_data_errors(lambda: read_visual_genome(*files, check_files=False))


@FUZZ
@given(document(VQARAD))
def test_vqarad_reader(tmp_path, data):
    write(tmp_path / "trainset.json", data)
    only_data_errors(lambda: read_vqarad(tmp_path, "train", check_files=False))


@FUZZ
@given(st.lists(document(ROW), max_size=5))
def test_jsonl_reader(tmp_path, rows):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    only_data_errors(lambda: read_jsonl(path, check_files=False))
