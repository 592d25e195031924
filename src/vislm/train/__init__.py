"""Training: the `Trainer` loop, optimizer and schedule, checkpoints."""

from vislm.train.trainer import Trainer

__all__ = ["Trainer"]
