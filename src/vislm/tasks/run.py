"""Train one config end to end: data, tokenizer, model, training, evaluation, saving."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from vislm.config import Config, save_config
from vislm.data.tokenizer import TextTokenizer, train_tokenizer
from vislm.finetune import freeze, initialise_from
from vislm.models.hf.export import export_config
from vislm.pretrained import build_model, save_pretrained
from vislm.tasks import TASKS
from vislm.tasks.data import SplitRecords, load_split
from vislm.train import Trainer

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def corpus(split: SplitRecords) -> list:
    texts = [c for r in split.captions for c in r.captions]
    texts += [q.question for q in split.questions] + [a for q in split.questions for a in q.answers]
    return texts


def make_tokenizer(cfg: Config, train_split: SplitRecords) -> TextTokenizer:
    if cfg.tokenizer.path:
        # `pkg:NAME` names a model shipped inside an installed package (see models.hf.loading).
        if cfg.tokenizer.path.startswith("pkg:"):
            from vislm.models.hf.loading import resolve

            return TextTokenizer.load(resolve(cfg.tokenizer.path))
        return TextTokenizer.load(cfg.tokenizer.path)
    return train_tokenizer(corpus(train_split), cfg.tokenizer.vocab_size, cfg.tokenizer.kind,
                           cfg.tokenizer.lowercase)


def count_parameters(model: torch.nn.Module) -> Dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "total": total}


def train(cfg: Config, out_dir: str | Path, resume: bool = False, task_out: dict | None = None) -> dict:
    """Train `cfg`, evaluate it on every eval split, and save the model into `out_dir`.

    Returns {"metrics": {split: {...}}, "params": ..., "train_seconds", "samples_per_s"};
    writes out_dir/config.yaml, log.jsonl, checkpoints/, model/ and metrics.json.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    seed_everything(cfg.train.seed)

    names = [cfg.data.train_split, *cfg.data.eval_splits]
    splits = {name: load_split(cfg.data, name) for name in dict.fromkeys(names)}
    tokenizer = make_tokenizer(cfg, splits[cfg.data.train_split])
    task = TASKS[cfg.task](cfg, tokenizer, splits)
    model = build_model(cfg, tokenizer, **task.model_kwargs())
    if cfg.model.init_from:
        initialise_from(model, cfg.model.init_from, cfg.model.init_modules)
    if cfg.model.freeze:
        freeze(model, cfg.model.freeze)
    params = count_parameters(model)
    log.info("%s: %s parameters (%s trainable)", cfg.model.fusion, f"{params['total']:,}",
             f"{params['trainable']:,}")

    # Evaluation during training watches the first eval split; with eval_every 0 the only
    # evaluation is the final one below, over every eval split.
    first_eval = cfg.data.eval_splits[0]
    evaluate = (lambda m: task.evaluate(m, first_eval)) if cfg.train.eval_every > 0 else None
    trainer = Trainer(model, task.train_dataset, task.collate, cfg.train, out_dir, evaluate=evaluate,
                      num_workers=cfg.data.num_workers)
    trainer.fit(resume=resume)

    model.eval()
    metrics = {split: task.evaluate(model, split) for split in cfg.data.eval_splits}
    save_pretrained(model, export_config(model, cfg), tokenizer, out_dir / "model", task.state())
    result = {"task": cfg.task, "fusion": cfg.model.fusion, "metrics": metrics, "params": params,
              "train_seconds": trainer.train_seconds, "samples_per_s": trainer.samples_per_s}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    if task_out is not None:
        task_out["task"] = task
        task_out["model"] = model
    return result
