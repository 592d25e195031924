"""LiT on the shapes world: does a locked, pretrained text tower understand captions that
no training caption ever phrased that way?

LiT (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning") locks a
pretrained tower and trains the other with the contrastive loss. Here the pretrained
tower is the text one: the real MiniLM sentence encoder (configs/lit_minilm.yaml, its
weights locked) while vislm's CNN image tower learns to land images where MiniLM puts
their captions. The baseline is the same dual encoder with a text tower (and tokenizer)
trained from scratch on the same captions, for the same steps.

Both are then asked to retrieve test images from captions written with templates and
words the shapes world never uses ("a photo with a round red thing", "a blue box"),
built from the scene truth of the test split:

    unseen_templates   new sentence frames, the world's own shape words
    synonyms           new frames and other words for the shapes (box, disc, plus sign)

    result = run_lit_comparison("runs/lit", "data/shapes")   # a few minutes on 2 cores
"""

from __future__ import annotations

import copy
import json
import logging
import random
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from vislm.config import Config, load_config
from vislm.data.datasets import ImageSet
from vislm.data.shapes import generate_shapes_world, read_scenes, scenes_file, world_file
from vislm.metrics.retrieval import retrieval_metrics_from_embeddings
from vislm.models.hf.loading import PKG_PREFIX, resolve
from vislm.tasks.base import stack_images
from vislm.tasks.run import train

log = logging.getLogger(__name__)

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "lit_minilm.yaml"

# -----------------------------------------------------------------------------
# Captions the training data never phrased this way

# Frames absent from the world's caption generator (vislm.data.shapes.make_captions).
_TEMPLATES = ("a photo with {things}", "an image containing {things}", "{things} together",
              "this picture has {things} in it", "look: {things}")
# Other ways to name each shape; "{c}" is the colour word.
_SYNONYMS = {
    "circle": ("round {c} thing", "{c} disc", "{c} dot"),
    "square": ("{c} box", "{c} block", "four-sided {c} shape"),
    "triangle": ("three-sided {c} shape", "{c} wedge", "{c} pyramid shape"),
    "star": ("spiky {c} shape", "{c} five-pointed shape", "{c} starburst"),
    "diamond": ("{c} rhombus", "{c} lozenge", "{c} tilted square"),
    "cross": ("{c} plus sign", "{c} plus symbol", "{c} cross shape"),
}
PARAPHRASE_SETS = ("unseen_templates", "synonyms")
# A smoke run: a few steps on small images.
QUICK = ("data.image_size=32", "train.max_steps=2", "train.batch_size=8", "train.warmup_steps=1",
         "eval.batch_size=64")


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _listing(phrases: List[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def paraphrase(objects: List[dict], rng: random.Random, synonyms: bool) -> str:
    """One caption naming every object of a scene (colour and shape, nothing else) in an
    unseen frame, with the world's shape words or, with `synonyms`, other ones."""
    names = []
    for obj in rng.sample(objects, len(objects)):  # any order: the world lists left to right
        if synonyms:
            names.append(rng.choice(_SYNONYMS[obj["shape"]]).format(c=obj["color"]))
        else:
            names.append(f"{obj['color']} {obj['shape']}")
    return rng.choice(_TEMPLATES).format(things=_listing([_article(n) for n in names]))


def paraphrase_captions(scenes: Dict[int, List[dict]], synonyms: bool, per_image: int = 2,
                        seed: int = 0) -> Dict[int, List[str]]:
    """image id -> `per_image` distinct paraphrases (fewer if the scene allows fewer)."""
    rng = random.Random(f"vislm-lit/{seed}/{synonyms}")
    captions = {}
    for image_id in sorted(scenes):
        found: List[str] = []
        for _ in range(20 * per_image):
            if len(found) == per_image:
                break
            text = paraphrase(scenes[image_id], rng, synonyms)
            if text not in found:
                found.append(text)
        captions[image_id] = found
    return captions


# -----------------------------------------------------------------------------
# The two runs

def lit_configs(data_root: str | Path, quick: bool = False,
                overrides: Sequence[str] = ()) -> Dict[str, Config]:
    """{"locked_minilm": configs/lit_minilm.yaml, "scratch": the same with vislm's own
    text encoder and a tokenizer trained on the captions}; one data root, one budget.
    `overrides` ("train.max_steps=600", ...) apply to both."""
    locked = load_config(CONFIG, [f"data.root={data_root}", *(QUICK if quick else ()),
                                  *overrides])
    # run.train loads the tokenizer by path; a pkg: name is resolved here.
    if locked.tokenizer.path.startswith(PKG_PREFIX):
        locked.tokenizer.path = str(resolve(locked.tokenizer.path))
    scratch = copy.deepcopy(locked)
    scratch.tokenizer.path = ""  # trained on the training captions
    scratch.model.text_kwargs = {"dim": 128, "depth": 2, "heads": 4, "position": "rotary"}
    scratch.model.fusion_kwargs = {**locked.model.fusion_kwargs, "text": "encoder"}
    scratch.model.fusion_kwargs.pop("text_pool", None)  # the encoder's own default ([BOS])
    return {"locked_minilm": locked, "scratch": scratch}


@torch.no_grad()
def evaluate_paraphrases(model, task, sets: Dict[str, Dict[int, List[str]]]) -> Dict[str, dict]:
    """{set name: retrieval metrics} on the test images, each set's paraphrases being the
    texts. The images are embedded once; the test captions are not embedded again."""
    model.eval()
    split = task.cfg.data.eval_splits[0]
    records = task.splits[split].captions
    device = next(model.parameters()).device
    images = ImageSet(records, task.transform, task.cache)
    image_emb = torch.cat([model.encode_image(batch["pixel_values"].to(device)).float()
                           for batch in task.batches(images, stack_images)])
    metrics = {}
    for name, paraphrases in sets.items():
        texts, owners = [], []
        for index, record in enumerate(records):
            texts.extend(paraphrases[record.image_id])
            owners.extend([index] * len(paraphrases[record.image_id]))
        text_emb, size = [], task.cfg.eval.batch_size
        for start in range(0, len(texts), size):
            ids, mask = task.tokenizer(texts[start:start + size], task.cfg.data.max_text_len)
            text_emb.append(model.encode_text(ids.to(device), mask.to(device)).float())
        metrics[name] = retrieval_metrics_from_embeddings(image_emb, torch.cat(text_emb),
                                                          torch.tensor(owners))
    return metrics


def run_lit_comparison(out_dir: str | Path, data_root: str | Path, quick: bool = False,
                       overrides: Sequence[str] = ()) -> dict:
    """Train the locked-MiniLM and the from-scratch dual encoders with the same budget,
    evaluate both on the test captions and on the two paraphrase sets, and write
    out_dir/lit_comparison.json. A missing shapes world is generated at data_root.
    `overrides` change both runs alike, e.g. a longer budget: ["train.max_steps=600"]."""
    out_dir, data_root = Path(out_dir), Path(data_root)
    if not world_file(data_root).is_file():
        log.info("no shapes world at %s: generating one", data_root)
        generate_shapes_world(data_root)
    configs = lit_configs(data_root, quick, overrides)
    split = configs["locked_minilm"].data.eval_splits[0]
    scenes = read_scenes(scenes_file(data_root, split))
    sets = {name: paraphrase_captions(scenes, synonyms=name == "synonyms")
            for name in PARAPHRASE_SETS}
    result: dict = {"budget": _budget(configs["locked_minilm"]), "examples": {
        name: sets[name][min(scenes)] for name in PARAPHRASE_SETS}}
    for name, cfg in configs.items():
        handles: dict = {}
        run = train(cfg, out_dir / name, task_out=handles)
        metrics = {split: run["metrics"][split],
                   **evaluate_paraphrases(handles["model"], handles["task"], sets)}
        result[name] = {"metrics": metrics, "params": run["params"],
                        "train_seconds": run["train_seconds"]}
        log.info("%s: %s", name, {k: round(v["mean_R"], 3) for k, v in metrics.items()})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "lit_comparison.json").write_text(json.dumps(result, indent=2))
    return result


def _budget(cfg: Config) -> dict:
    return {"max_steps": cfg.train.max_steps, "epochs": cfg.train.epochs,
            "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
            "image_size": cfg.data.image_size}
