"""Text tokenisation: train a WordPiece or BPE tokenizer on a corpus, or load a saved one.

Everything goes through the `tokenizers` library, whose `tokenizer.json` is also what a
Hugging Face tokenizer directory holds, so a tokenizer trained here loads in
`transformers.PreTrainedTokenizerFast` and a pre-trained one (for example the BERT
WordPiece vocabulary shipped with MiniLM) loads here.

Every sequence is wrapped as BOS ... EOS. For a BERT vocabulary these are [CLS] and [SEP],
so the same ids serve a bidirectional encoder (pool at [CLS]) and a causal decoder (start
at BOS, stop at EOS).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from vislm.errors import DataError

# Names of the special tokens, in id order, for tokenizers trained here.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]")
# Where a pre-trained vocabulary names them differently (BERT), these are tried in order.
_ALIASES = {
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "bos": ("[BOS]", "[CLS]", "<s>", "<|endoftext|>"),
    "eos": ("[EOS]", "[SEP]", "</s>", "<|endoftext|>"),
    "mask": ("[MASK]", "<mask>"),
}


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the ids of its special tokens and batch encoding."""

    def __init__(self, backend: Tokenizer):
        self.backend = backend
        # Padding and truncation are done here, per batch, not inside the backend.
        backend.no_padding()
        backend.no_truncation()
        ids = {role: self._find(names) for role, names in _ALIASES.items()}
        missing = [role for role in ("pad", "bos", "eos") if ids[role] is None]
        if missing:
            raise DataError(f"tokenizer has no {', '.join(missing)} token; expected one of "
                            + "; ".join("/".join(_ALIASES[r]) for r in missing))
        self.pad_id: int = ids["pad"]
        self.unk_id: int | None = ids["unk"]
        self.bos_id: int = ids["bos"]
        self.eos_id: int = ids["eos"]
        self.mask_id: int | None = ids["mask"]
        # The post-processor of a pre-trained tokenizer already adds [CLS]/[SEP]; a
        # tokenizer without one gets BOS/EOS added here so both behave the same.
        probe = backend.encode("a").ids
        self._adds_specials = bool(probe) and probe[0] == self.bos_id and probe[-1] == self.eos_id

    def _find(self, names: Sequence[str]) -> int | None:
        for name in names:
            token_id = self.backend.token_to_id(name)
            if token_id is not None:
                return token_id
        return None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode_one(self, text: str, max_len: int) -> List[int]:
        ids = self.backend.encode(text).ids
        if not self._adds_specials:
            ids = [self.bos_id] + ids + [self.eos_id]
        if len(ids) > max_len:
            # Keep BOS, cut the body and still end with EOS so decoders learn to stop.
            ids = ids[: max_len - 1] + [self.eos_id]
        return ids

    def __call__(self, texts: Sequence[str], max_len: int = 40) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch: (input_ids, attention_mask), padded to the longest sequence."""
        encoded = [self.encode_one(t, max_len) for t in texts]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a generated sequence: stops at EOS and drops special tokens."""
        kept = []
        for token_id in ids:
            token_id = int(token_id)
            if token_id == self.eos_id:
                break
            kept.append(token_id)
        return self.backend.decode(kept, skip_special_tokens=True).strip()

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        # The config lets transformers' AutoTokenizer read the same directory.
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "pad_token": self.backend.id_to_token(self.pad_id),
            "bos_token": self.backend.id_to_token(self.bos_id),
            "eos_token": self.backend.id_to_token(self.eos_id),
        }
        if self.unk_id is not None:
            config["unk_token"] = self.backend.id_to_token(self.unk_id)
        if self.mask_id is not None:
            config["mask_token"] = self.backend.id_to_token(self.mask_id)
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "TextTokenizer":
        """Load `tokenizer.json` from a directory (a vislm run or a Hugging Face model)."""
        path = Path(directory)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise DataError(f"{path}: tokenizer file not found (expected a tokenizer.json "
                            "or a directory holding one)")
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust library raises plain Exceptions
            raise DataError(f"{path}: cannot read tokenizer ({str(exc).splitlines()[0]})") from exc
        return cls(backend)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000, kind: str = "wordpiece",
                    lowercase: bool = True) -> TextTokenizer:
    """Train a tokenizer on a corpus (captions, questions) with the `tokenizers` library.
    The same corpus and settings give the same vocabulary, with the same ids, every time."""
    if kind == "wordpiece":
        backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        backend.decoder = decoders.WordPiece()
    elif kind == "bpe":
        backend = Tokenizer(models.BPE(unk_token="[UNK]"))
        backend.decoder = decoders.BPEDecoder(suffix="</w>")
    else:
        raise ValueError(f"tokenizer.kind: expected 'wordpiece' or 'bpe', got {kind!r}")
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    backend.normalizer = normalizers.Sequence(steps)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise DataError("cannot train a tokenizer on an empty corpus")
    # The trainers number the word-position variants of single characters ("##e" inside a
    # word for WordPiece, "e</w>" at a word's end for BPE) in the iteration order of a
    # randomly seeded hash map, and break ties between equally frequent merges by those
    # numbers: the same corpus gave other ids, and now and then other merges, from one
    # training to the next (huggingface/tokenizers#1794). Listed up front, sorted, as extra
    # special tokens, they get fixed ids, and the merges follow; afterwards they are made
    # ordinary vocabulary again.
    pieces = _character_pieces(backend, texts, kind)
    specials = list(SPECIAL_TOKENS) + pieces
    if kind == "wordpiece":
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    else:
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      end_of_word_suffix="</w>")
    backend.train_from_iterator(texts, trainer=trainer)
    backend = _as_ordinary_tokens(backend, set(pieces))
    bos, eos = backend.token_to_id("[BOS]"), backend.token_to_id("[EOS]")
    backend.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", bos), ("[EOS]", eos)])
    return TextTokenizer(backend)


def _character_pieces(backend: Tokenizer, texts: Sequence[str], kind: str) -> List[str]:
    """The single-character tokens the trainer would create while reading the words of
    `texts` (normalised and split as the tokenizer will), other than the bare characters."""
    inner, last = set(), set()
    for text in dict.fromkeys(texts):  # each distinct text once
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)):
            inner.update(word[1:])
            last.add(word[-1])
    if kind == "wordpiece":
        return sorted("##" + c for c in inner)
    return sorted(c + "</w>" for c in last)


def _as_ordinary_tokens(backend: Tokenizer, tokens: set) -> Tokenizer:
    """`backend` with `tokens` kept in its vocabulary but no longer matched in raw text
    or dropped when decoding, as special tokens are."""
    spec = json.loads(backend.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in tokens]
    return Tokenizer.from_str(json.dumps(spec))
