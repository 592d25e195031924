"""Clean caption, question and answer text before anything counts or tokenises it.

Scraped text carries NUL bytes, escape sequences, zero-width and bidi-override marks,
lone surrogates (which cannot even be encoded as UTF-8) and runs of tabs and newlines.
None of it is language; all of it would reach the tokenizer's vocabulary. Length is not
limited here: the tokenizer truncates to data.max_text_len.
"""

from __future__ import annotations

import unicodedata

# Format characters that carry meaning in real writing and stay: the zero-width joiner and
# non-joiner shape Persian, Indic scripts and emoji sequences.
_KEPT_FORMAT = {"\u200c", "\u200d"}


def clean_text(text: str) -> str:
    """NFC-normalised `text` without control, format and surrogate characters, with every
    run of whitespace (tabs, newlines, no-break spaces) one space, and no space at the ends."""
    kept = []
    for char in unicodedata.normalize("NFC", text):
        if char.isspace():
            kept.append(" ")
        elif not _is_junk(char):
            kept.append(char)
    return " ".join("".join(kept).split())


def _is_junk(char: str) -> bool:
    category = unicodedata.category(char)
    if category == "Cf":
        return char not in _KEPT_FORMAT
    return category in ("Cc", "Cs")
