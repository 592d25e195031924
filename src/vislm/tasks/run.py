"""Train one config end to end: data, tokenizer, model, training, evaluation, saving.

Under a launcher (`accelerate launch`, `torchrun`) every process runs all of this: each
reads and screens the same data, uses the tokenizer the main process trained, trains its
share of every batch, and evaluates the whole of every eval split (so every process holds
the same metrics, none duplicated or missing). Only the main process writes files.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from vislm.config import Config, save_config
from vislm.data.text import clean_text
from vislm.data.tokenizer import TextTokenizer, train_tokenizer
from vislm.finetune import freeze, initialise_from
from vislm.models.frozen_cache import cache_frozen_outputs
from vislm.models.hf.export import export_config
from vislm.pretrained import build_model, save_pretrained
from vislm.tasks import TASKS
from vislm.tasks.data import SplitRecords, load_split
from vislm.train import Trainer
from vislm.train.checkpoint import latest_checkpoint
from vislm.train.trainer import process_state

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def corpus(split: SplitRecords) -> list:
    texts = [c for r in split.captions for c in r.captions]
    texts += [q.question for q in split.questions] + [a for q in split.questions for a in q.answers]
    return [clean_text(text) for text in texts]  # as the task will see them (vislm/tasks/screen.py)


def make_tokenizer(cfg: Config, train_split: SplitRecords) -> TextTokenizer:
    if cfg.tokenizer.path:
        # `pkg:NAME` names a model shipped inside an installed package (see models.hf.loading).
        if cfg.tokenizer.path.startswith("pkg:"):
            from vislm.models.hf.loading import resolve

            return TextTokenizer.load(resolve(cfg.tokenizer.path))
        return TextTokenizer.load(cfg.tokenizer.path)
    return train_tokenizer(corpus(train_split), cfg.tokenizer.vocab_size, cfg.tokenizer.kind,
                           cfg.tokenizer.lowercase)


def run_tokenizer(cfg: Config, train_split: SplitRecords, out_dir: Path, resume: bool, main: bool) -> TextTokenizer:
    """The run's tokenizer, kept in out_dir/tokenizer. Training one is not deterministic (the
    `tokenizers` trainer breaks ties between equally frequent merges in hash order), so a
    resumed run and the other processes of a launch load the main process's rather than
    train their own, whose token ids could differ. Call the main process first."""
    saved = out_dir / "tokenizer"
    # A checkpoint is only written after the tokenizer was saved whole.
    reuse = not main or (resume and latest_checkpoint(out_dir) is not None)
    if not cfg.tokenizer.path and reuse and (saved / "tokenizer.json").is_file():
        return TextTokenizer.load(saved)
    tokenizer = make_tokenizer(cfg, train_split)
    if main and not cfg.tokenizer.path:
        tokenizer.save(saved)
    return tokenizer


def count_parameters(model: torch.nn.Module) -> Dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "total": total}


def train(cfg: Config, out_dir: str | Path, resume: bool = False, task_out: dict | None = None) -> dict:
    """Train `cfg`, evaluate it on every eval split, and save the model into `out_dir`.

    Returns {"metrics": {split: {...}}, cfg.task: {metrics of the first eval split}, "params": ...,
    "train_seconds", "samples_per_s"};
    writes out_dir/config.yaml, log.jsonl, checkpoints/, model/ and metrics.json.
    """
    out_dir = Path(out_dir)
    state = process_state()
    out_dir.mkdir(parents=True, exist_ok=True)
    if state.is_main_process:
        save_config(cfg, out_dir / "config.yaml")
    seed_everything(cfg.train.seed)

    names = [cfg.data.train_split, *cfg.data.eval_splits]
    # Under data.on_error=skip missing training images are dropped and counted, not fatal.
    lenient = cfg.data.on_error == "skip"
    splits = {name: load_split(cfg.data, name, check_files=not (lenient and name == cfg.data.train_split))
              for name in dict.fromkeys(names)}
    with state.main_process_first():
        tokenizer = run_tokenizer(cfg, splits[cfg.data.train_split], out_dir, resume, state.is_main_process)
    task = TASKS[cfg.task](cfg, tokenizer, splits)
    model = build_model(cfg, tokenizer, **task.model_kwargs())
    if cfg.model.init_from:
        initialise_from(model, cfg.model.init_from, cfg.model.init_modules)
    if cfg.model.freeze:
        freeze(model, cfg.model.freeze)
    vision = getattr(model, "vision", None)
    if cfg.train.cache_frozen_vision and vision is not None and not any(p.requires_grad for p in vision.parameters()):
        cache_frozen_outputs(vision)
    params = count_parameters(model)
    log.info("%s: %s parameters (%s trainable)", cfg.model.fusion, f"{params['total']:,}",
             f"{params['trainable']:,}")

    # Evaluation during training watches the first eval split; with eval_every 0 the only
    # evaluation is the final one below, over every eval split.
    first_eval = cfg.data.eval_splits[0]
    evaluate = (lambda m: task.evaluate(m, first_eval)) if cfg.train.eval_every > 0 else None
    dataset, collate = task.training_data()
    trainer = Trainer(model, dataset, collate, cfg.train, out_dir, evaluate=evaluate,
                      num_workers=cfg.data.num_workers, bad_data=task.bad_data)
    trainer.fit(resume=resume)

    model.eval()
    metrics = {split: task.evaluate(model, split) for split in cfg.data.eval_splits}
    result = {"task": cfg.task, "fusion": cfg.model.fusion, "metrics": metrics, "params": params,
              "train_seconds": trainer.train_seconds, "samples_per_s": trainer.samples_per_s,
              "bad_data": task.bad_data.summary()}
    # metrics.json[cfg.task] (e.g. ["vqa"]["accuracy"]) is the first eval split's metrics,
    # the one training watches; "metrics" keeps every split for the code that reads it.
    result[cfg.task] = metrics[first_eval]
    if state.is_main_process:
        save_pretrained(model, export_config(model, cfg), tokenizer, out_dir / "model", task.state())
        (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
        # The log ends with what was skipped and why (a resume drops this line and writes it anew).
        with open(out_dir / "log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"bad_data": task.bad_data.summary()}) + "\n")
        task.bad_data.log_summary(log)
    state.wait_for_everyone()
    if task_out is not None:
        task_out["task"] = task
        task_out["model"] = model
    return result
