"""Loading what a user hands us must not run code or reach outside the data root.

1. A scan of src/: no pickle (or its relatives), no eval/exec, torch.load only with
   weights_only=True, no yaml.load. Weights go through safetensors, configs through
   yaml.safe_load.
2. Every reader that takes file names from a data file refuses names that leave its root.
"""

import io
import json
import tarfile
import tokenize
from pathlib import Path

import pytest

from vislm.data.formats.coco import read_coco_captions
from vislm.data.formats.generic import read_csv, read_jsonl
from vislm.data.formats.karpathy import read_karpathy
from vislm.data.formats.visual_genome import read_visual_genome
from vislm.data.formats.vqarad import read_vqarad
from vislm.data.formats.webdataset import read_shard_records
from vislm.errors import DataError

SRC = Path(__file__).resolve().parent.parent / "src" / "vislm"

# Modules that deserialise arbitrary objects, so loading a file with them can run code.
_UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
_UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all",
                "Loader", "UnsafeLoader", "FullLoader"}


def unsafe_calls(source: str) -> list[str]:
    """What in `source` (Python code; comments and strings do not count) may run code on load."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
              if t.type in (tokenize.NAME, tokenize.OP)]
    found = []
    for i, token in enumerate(tokens):
        before = tokens[i - 1].string if i > 0 else ""
        after = tokens[i + 1].string if i + 1 < len(tokens) else ""
        line = token.start[0]
        if token.string in _UNSAFE_MODULES:
            found.append(f"line {line}: {token.string}")
        elif token.string in ("eval", "exec") and before != "." and after == "(":
            found.append(f"line {line}: {token.string}(")
        elif token.string == "allow_pickle" and after == "=" and tokens[i + 2].string == "True":
            found.append(f"line {line}: allow_pickle=True")
        elif before == "." and i >= 2 and tokens[i - 2].string == "yaml" and token.string in _UNSAFE_YAML:
            found.append(f"line {line}: yaml.{token.string}")
        elif token.string == "load" and before == "." and i >= 2 and tokens[i - 2].string == "torch":
            arguments = _call_arguments(tokens, i + 1)
            if "weights_only=True" not in arguments:
                found.append(f"line {line}: torch.load without weights_only=True")
    return found


def _call_arguments(tokens, open_index) -> str:
    """The tokens of the call whose '(' is at open_index, without spaces: 'a,weights_only=True'."""
    depth, text = 0, []
    for token in tokens[open_index:]:
        depth += {"(": 1, ")": -1}.get(token.string, 0)
        text.append(token.string)
        if depth == 0:
            break
    return "".join(text)


def test_the_scanner_finds_each_unsafe_pattern():
    planted = """
import pickle
from yaml import safe_load
value = eval("1 + 1")
exec(code)
state = torch.load(path)
state = torch.load(path, weights_only=False)
config = yaml.load(text, Loader=yaml.Loader)
array = np.load(file, allow_pickle=True)
"""
    assert len(unsafe_calls(planted)) == 8
    harmless = """
model.eval()  # eval( in a comment, and "pickle" in a string
state = torch.load(path, map_location="cpu", weights_only=True)
config = yaml.safe_load(text)
"""
    assert unsafe_calls(harmless) == []


def test_the_package_loads_nothing_unsafely():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50
    found = {str(path.relative_to(SRC)): unsafe_calls(path.read_text(encoding="utf-8")) for path in files}
    assert {name: hits for name, hits in found.items() if hits} == {}


# ---------------------------------------------------------------------------------------
# File names inside data files stay inside the data root


ESCAPES = ["../outside.png", "/etc/passwd", "a/../../outside.png", "..\\outside.png"]


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def coco(tmp_path, name):
    data = {"images": [{"id": 1, "file_name": name}], "annotations": [{"id": 1, "image_id": 1, "caption": "x"}]}
    return read_coco_captions(write_json(tmp_path / "captions.json", data), tmp_path, check_files=False)


def karpathy(tmp_path, name):
    data = {"images": [{"filename": name, "imgid": 1, "split": "train", "sentences": [{"raw": "x"}]}]}
    return read_karpathy(write_json(tmp_path / "dataset.json", data), tmp_path, "train", check_files=False)


def csv_table(tmp_path, name):
    (tmp_path / "train.csv").write_text(f"image,caption\n{name},x\n")
    return read_csv(tmp_path / "train.csv", check_files=False)


def jsonl_table(tmp_path, name):
    (tmp_path / "train.jsonl").write_text(json.dumps({"image": name, "caption": "x"}) + "\n")
    return read_jsonl(tmp_path / "train.jsonl", check_files=False)


def visual_genome(tmp_path, name):
    url = f"https://example.org/VG_100K/{name}"
    image_data = write_json(tmp_path / "image_data.json", [{"image_id": 1, "url": url}])
    return read_visual_genome(image_data, check_files=False)


def vqarad(tmp_path, name):
    item = {"qid": 1, "image_name": name, "question": "q?", "answer": "yes", "answer_type": "CLOSED"}
    write_json(tmp_path / "trainset.json", [item])
    return read_vqarad(tmp_path, "train", check_files=False)


def webdataset(tmp_path, name):
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        data = json.dumps({"image_id": 1, "captions": ["x"], "questions": []}).encode()
        info = tarfile.TarInfo(name.rsplit(".", 1)[0] + ".json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return read_shard_records([shard], tmp_path / "extracted")


READERS = [coco, karpathy, csv_table, jsonl_table, vqarad, webdataset]


@pytest.mark.parametrize("reader", READERS, ids=lambda reader: reader.__name__)
@pytest.mark.parametrize("name", ESCAPES)
def test_every_reader_refuses_file_names_that_leave_the_root(tmp_path, reader, name):
    with pytest.raises(DataError, match="must be a relative path inside"):
        reader(tmp_path, name)


@pytest.mark.parametrize("reader", [*READERS, visual_genome], ids=lambda reader: reader.__name__)
def test_every_reader_accepts_a_plain_name(tmp_path, reader):
    assert reader(tmp_path, "picture.png")  # so the refusals are about the names


@pytest.mark.parametrize("name", [*ESCAPES, ".."])
def test_visual_genome_urls_cannot_leave_the_root(tmp_path, name):
    # Only a URL's last two parts are used, and only when they are an image folder and a
    # file name; anything else falls back to VG_100K/<id>.jpg.
    try:
        captions, _ = visual_genome(tmp_path, name)
    except DataError as error:
        assert "must be a relative path inside" in str(error)
        return
    assert all(r.image_path.resolve().is_relative_to(tmp_path.resolve()) for r in captions)
