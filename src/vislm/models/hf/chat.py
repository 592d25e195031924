"""Chat-style prompts for the Hugging Face bridges (LLaVA's conversation format):

    USER: <image>\\n{prompt} ASSISTANT: {answer}</s>

`ChatTemplate.encode` turns prompts (and, for training, answers) into token ids, the
attention mask, the labels (-100 everywhere but the answer and its EOS, so the loss is
on the answer only) and, per row, the index in input_ids where the image goes: the
placeholder itself never becomes a token, so no tokenizer needs an <image> token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from vislm.data.tokenizer import TextTokenizer
from vislm.errors import ConfigError
from vislm.objectives.lm import IGNORE

DEFAULT_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"
PLACEHOLDER = "<image>"
PROMPT_FIELD = "{prompt}"


@dataclass(frozen=True)
class ChatTemplate:
    text: str = DEFAULT_TEMPLATE

    def __post_init__(self):
        for needed in (PLACEHOLDER, PROMPT_FIELD):
            if self.text.count(needed) != 1:
                raise ConfigError(f"chat template must contain {needed} exactly once, "
                                  f"got {self.text!r}")

    def encode(self, tokenizer: TextTokenizer, prompts: Sequence[str],
               answers: Optional[Sequence[str]] = None, padding_side: str = "right") -> dict:
        """{input_ids, attention_mask, labels (B, T), image_position (B,)}.

        Training batches pad on the right; generation pads on the left, so that every
        prompt ends where decoding starts.
        """
        if answers is not None and len(answers) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        rows = [self._row(tokenizer, prompt, None if answers is None else answers[i])
                for i, prompt in enumerate(prompts)]
        width = max(len(ids) for ids, _, _ in rows)
        B = len(rows)
        input_ids = torch.full((B, width), tokenizer.pad_id, dtype=torch.long)
        attention_mask = torch.zeros(B, width, dtype=torch.long)
        labels = torch.full((B, width), IGNORE, dtype=torch.long)
        image_position = torch.zeros(B, dtype=torch.long)
        for b, (ids, row_labels, before) in enumerate(rows):
            start = width - len(ids) if padding_side == "left" else 0
            span = slice(start, start + len(ids))
            input_ids[b, span] = torch.tensor(ids)
            attention_mask[b, span] = 1
            labels[b, span] = torch.tensor(row_labels)
            image_position[b] = start + before
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "image_position": image_position}

    def _row(self, tokenizer: TextTokenizer, prompt: str, answer: Optional[str]):
        """(ids, labels, number of ids before the image) for one example."""
        head, tail = self.text.split(PLACEHOLDER)
        # str.replace, not str.format: a prompt may contain braces.
        before = [tokenizer.bos_id] + _plain_ids(tokenizer, head.replace(PROMPT_FIELD, prompt))
        after = _plain_ids(tokenizer, tail.replace(PROMPT_FIELD, prompt))
        ids = before + after
        labels = [IGNORE] * len(ids)
        if answer is not None:
            # A leading space: byte-level BPE vocabularies (GPT-2, Llama) spell a word that
            # follows "ASSISTANT:" with its space; WordPiece ignores it.
            target = _plain_ids(tokenizer, " " + answer.strip()) + [tokenizer.eos_id]
            ids, labels = ids + target, labels + target
        return ids, labels, len(before)


def _plain_ids(tokenizer: TextTokenizer, text: str) -> List[int]:
    """Token ids of `text` without the BOS/EOS a post-processor would add."""
    if not text:
        return []
    return tokenizer.backend.encode(text, add_special_tokens=False).ids
