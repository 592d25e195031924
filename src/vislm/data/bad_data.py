"""Bad samples: drop and count them, or stop at the first, and stop when there are too many.

Real corpora hold a few broken files: truncated downloads, text files named .jpg, a
caption made of control characters. Under `data.on_error: skip` (the training default)
such a sample is dropped, counted under its reason, and named in the summary that ends
the run's log; under `raise` the first one stops the run with its one-line DataError.
Either way, more than `data.max_skip_fraction` of the samples bad stops the run: a few
bad files are noise, a tenth of the data bad is a broken download or a wrong path, and
training on what is left would only hide it.

Evaluation never skips (`BadData("raise")`): a score over a silently smaller test set is
not comparable with anyone else's.

Counts are grouped by reason: the caller's, or one read off the error, whose message is
`"<file>: <problem> (<details>)"` (vislm.errors): the problem, without file and details.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Callable

from torch.utils.data import Dataset, default_collate

from vislm.errors import ConfigError, DataError

# A batch (dict) may carry the samples that failed while it was being made, as
# (index, message) pairs (SkippingDataset); the trainer takes them out and counts them.
SKIPPED_KEY = "skipped_samples"
POLICIES = ("raise", "skip")
_EXAMPLES = 3  # messages kept per reason, for the summary


class BadData:
    """A policy ("raise" or "skip"), a limit, and the tally of what was skipped and why."""

    def __init__(self, on_error: str = "skip", max_fraction: float = 0.01):
        if on_error not in POLICIES:
            raise ConfigError(f"data.on_error must be raise or skip, got {on_error!r}")
        if not 0.0 <= max_fraction <= 1.0:
            raise ConfigError(f"data.max_skip_fraction must be in [0, 1], got {max_fraction}")
        self.on_error = on_error
        self.max_fraction = max_fraction
        self.skipped = 0
        self.reasons: dict[str, dict[str, Any]] = {}  # reason -> {"count", "examples"}
        self.notes: dict[str, dict[str, Any]] = {}  # handled, not skipped: reason -> same

    @classmethod
    def from_config(cls, data_cfg: Any) -> "BadData":
        return cls(data_cfg.on_error, data_cfg.max_skip_fraction)

    @property
    def skipping(self) -> bool:
        return self.on_error == "skip"

    def skip(self, error: DataError | str, count: int = 1, reason: str | None = None) -> None:
        """`count` samples are lost to `error`: raise it, or count it (under `reason`, by
        default read off the message), as the policy says."""
        message = str(error)
        if not self.skipping:
            raise error if isinstance(error, DataError) else DataError(message)
        self.skipped += count
        _tally(self.reasons, reason or reason_of(message), message, count)

    def note(self, message: str, reason: str, count: int = 1) -> None:
        """Something handled without skipping (e.g. an answer outside the vocabulary)."""
        _tally(self.notes, reason, message, count)

    def check(self, total: int, what: str = "training samples") -> None:
        """Stop when more than max_fraction of `total` samples were skipped."""
        if total > 0 and self.skipped > self.max_fraction * total:
            raise DataError(self.too_many(self.skipped, total, what))

    def too_many(self, bad: int, total: int, what: str) -> str:
        first = next((r["examples"][0] for r in self.reasons.values() if r["examples"]), "")
        return (f"{bad} of {total} {what} are bad ({bad / total:.1%}, more than "
                f"data.max_skip_fraction={self.max_fraction:g}); first: {first}")

    def summary(self) -> dict:
        """JSON-ready: {"skipped": n, "reasons": {reason: {"count", "examples"}}, "notes": {...}}."""
        return {"skipped": self.skipped, "reasons": self.reasons, "notes": self.notes}

    def summary_lines(self) -> list[str]:
        if not self.skipped and not self.notes:
            return ["bad data: nothing skipped"]
        lines = [f"bad data: {self.skipped} samples skipped"]
        for kind, table in (("skipped", self.reasons), ("noted, kept", self.notes)):
            for reason, entry in sorted(table.items(), key=lambda item: -item[1]["count"]):
                lines.append(f"  {kind}: {entry['count']} samples: {reason}; e.g. {entry['examples'][0]}")
        return lines

    def log_summary(self, logger: logging.Logger) -> None:
        level = logging.WARNING if self.skipped else logging.INFO
        for line in self.summary_lines():
            logger.log(level, "%s", line)


def reason_of(message: str) -> str:
    """'<shard>: sample 12.jpg: cannot decode image (OSError: x (y))' -> 'cannot decode image'."""
    text = message.strip()
    if text.endswith(")"):  # drop the details: the last balanced parenthesised group
        depth = 0
        for index in range(len(text) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(text[index], 0)
            if depth == 0:
                text = text[:index].rstrip()
                break
    return text.rpartition(": ")[2].strip() or message


def _tally(table: dict[str, dict[str, Any]], reason: str, message: str, count: int) -> None:
    entry = table.setdefault(reason, {"count": 0, "examples": []})
    entry["count"] += count
    if len(entry["examples"]) < _EXAMPLES and message not in entry["examples"]:
        entry["examples"].append(message)


# ---------------------------------------------------------------------------------------
# Samples that fail while training (images decoded per batch, data.cache_images=false)


class SkippingDataset(Dataset):
    """A map-style dataset whose items that fail to load are replaced by others that load.

    Replacing rather than dropping keeps every micro-batch full: the samples per step, the
    equivalence of gradient accumulation with a larger batch and the equal-sized all_gather
    of the distributed contrastive loss all rely on it. Replacements are drawn from the
    whole dataset (bad files come in runs: one image's captions, one broken folder) by a
    generator seeded with the failed index, so the data order stays a function of the seed
    and a resumed run stays exact. Each item
    carries the failures met on the way as (index, message) pairs (SKIPPED_KEY);
    SkippingCollate moves them into the batch, which is how they reach the trainer from
    DataLoader workers.
    """

    def __init__(self, dataset: Dataset, max_tries: int = 16):
        self.dataset = dataset
        self.max_tries = max_tries

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        failures: list[tuple[int, str]] = []
        draws = random.Random(index)  # its own generator: the global ones drive dropout
        position = index
        for _ in range(self.max_tries):
            if failures:
                position = draws.randrange(len(self))
            try:
                item = self.dataset[position]
            except DataError as error:
                failures.append((position, str(error)))
                continue
            return {**item, SKIPPED_KEY: failures}
        raise DataError(f"{len(failures)} tries to load a training sample failed, from index {index} on; "
                        f"last: {failures[-1][1]}")


class SkippingCollate:
    """Wraps a collate function: items lose their SKIPPED_KEY, the batch gains all of them."""

    def __init__(self, collate: Callable[[list], Any] | None):
        self.collate = collate or default_collate

    def __call__(self, items: list[dict]) -> Any:
        failures = [failure for item in items for failure in item.pop(SKIPPED_KEY, [])]
        batch = self.collate(items)
        batch[SKIPPED_KEY] = failures
        return batch
