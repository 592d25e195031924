"""Caption metrics as the COCO caption evaluation computes them (pycocoevalcap).

Captions are tokenised with the Stanford PTBTokenizer that pycocoevalcap ships (lower
case, Penn Treebank split, punctuation tokens removed), then scored by pycocoevalcap's
own scorers: BLEU-1..4, METEOR, ROUGE-L and CIDEr (its CIDEr-D variant), plus SPICE on
request. All scores are on pycocoevalcap's scales (BLEU, METEOR, ROUGE-L and SPICE in
[0, 1]; CIDEr typically 0 to ~2).

Java is needed by the tokenizer, METEOR and SPICE. Without Java:
* tokenisation falls back to `ptb_like_tokenize`, a pure-Python imitation of the
  PTBTokenizer's output. It agrees on ordinary caption text (words, contractions,
  hyphens, numbers, abbreviations, quotes, brackets, trailing punctuation), but rare
  constructions (URLs, "5p.m.", "hello!how", "c++") may split differently, which
  moves scores slightly; report numbers made with Java.
* METEOR is None.

METEOR's JVM takes ~12 s to start (it loads a paraphrase table), so `meteor=False`
skips it, and the scorer is started once per process and reused.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from functools import lru_cache
from typing import Dict, Hashable, List, Mapping, Sequence, Tuple

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

from vislm.errors import DataError

logger = logging.getLogger(__name__)

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")

_PTB_JAR = os.path.join(os.path.dirname(os.path.abspath(ptbtokenizer.__file__)),
                        ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
_REMOVED_TOKENS = frozenset(PUNCTUATIONS)
# Characters that the Java tokenizer (or Python) treats as a line break. Captions are
# sent one per line, so these must become spaces or the lines would stop lining up.
_LINE_BREAKS = re.compile(r"[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def java_available() -> bool:
    return shutil.which("java") is not None


# ---------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------

def _java_ptb_tokenize(lines: List[str]) -> List[str]:
    """Run pycocoevalcap's PTBTokenizer jar with pycocoevalcap's flags.

    We call the jar ourselves rather than through `PTBTokenizer.tokenize` because that
    writes its temporary file into site-packages (fails on read-only installs), lets
    Java print to our stderr, and silently drops captions if the line count is off.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8",
                                     delete=False) as handle:
        handle.write("\n".join(lines))
    try:
        result = subprocess.run(
            ["java", "-cp", _PTB_JAR, "edu.stanford.nlp.process.PTBTokenizer",
             "-preserveLines", "-lowerCase", handle.name],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    finally:
        os.remove(handle.name)
    if result.returncode != 0:
        raise RuntimeError("PTBTokenizer failed: " + result.stderr.decode(errors="replace")[-500:])
    # Output ends with a newline, so splitting gives one extra empty entry at the end.
    tokenized = result.stdout.decode("utf-8").split("\n")[:len(lines)]
    if len(tokenized) != len(lines):
        raise RuntimeError(f"PTBTokenizer returned {len(tokenized)} lines for {len(lines)} captions")
    return tokenized


# Abbreviations that keep their period in the PTBTokenizer (checked against the jar).
_ABBREVIATIONS = (
    "mr mrs ms dr st jr sr vs etc prof mt ave blvd rd ct sq ft inc corp ltd co bros dept "
    "est gen gov sen rep rev sgt capt col lt maj cmdr adm pres univ assn cf al ph mo tel "
    "esq hon messrs mme mlle pvt cpl ens bldg jan feb mar apr jun jul aug sep sept oct nov "
    "dec calif fla mich minn va ga md conn ariz colo ind kan neb nev okla tenn wis wyo ky"
).split()

_TOKEN = re.compile(
    r"""
      (?P<url>https?://\S+|www\.\S+|[\w.+-]+@[\w-]+\.[\w.-]*\w)
    | (?P<tag></?[^\W\d_][^\s<>]*>)                   # <angle>
    | (?P<acronym>(?:[^\W\d_]\.){2,})                  # u.s.  e.g.  p.m.
    | (?P<abbreviation>(?<![\w'])(?:%s)\.(?!\w))      # mr.  st.  etc.
    | (?P<numbered>(?<![\w'])(?:no|fig)\.(?=\s*\d))     # no. 5  fig. 3
    | (?P<initial>(?<![\w'.])[^\W\d_]\.(?!\w))        # a.  j.
    | (?P<clitic>(?:'(?:s|re|ve|ll|d|m)|n't)(?!\w))   # pre-tokenised "man 's"
    | (?P<quoted_word>'(?:em|cause|n|tis|twas|\d\ds)(?!\w))  # 'em  'cause  '90s
    | (?P<language>[^\W\d_]\+\+|[cf]\#(?!\w))          # c++  c#
    | (?P<word>(?:[\#@](?=[^\W\d_]))?\w+(?:(?:[-/&'.!?]|(?<=\d)[,:](?=\d))\w+)*
               (?:\.(?=[,;:]))?)                    # "floor.," keeps its period
    | (?P<decimal>\.\d+)                               # .5
    | (?P<dots>\.+|…)
    | (?P<marks>[!?]+)                                 # "!!!" and "?!" stay one token
    | (?P<dashes>--+|[–—])
    | (?P<other>\S)
    """ % "|".join(_ABBREVIATIONS),
    re.VERBOSE,
)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_QUOTES = {'"': "''", "“": "``", "”": "''", "„": "``", "‘": "`", "`": "`", "'": "'"}
_SYMBOLS = {"£": "#", "€": "$", "¢": "cents"}
# Words the PTB lexer cuts in two.
_SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"],
                "wanna": ["wan", "na"], "lemme": ["lem", "me"], "gimme": ["gim", "me"],
                "'tis": ["'t", "is"], "'twas": ["'t", "was"]}
_CLITIC = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)$")
_CLOCK_TIME = re.compile(r"(\d+:\d+)([ap]m)")


def _split_word(word: str) -> List[str]:
    """"shouldn't've" -> should n't 've; "can't" -> ca n't; "12:30pm" -> 12:30 pm."""
    if word in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[word])
    clock = _CLOCK_TIME.fullmatch(word)
    if clock:
        return list(clock.groups())
    clitics: List[str] = []
    while True:
        match = _CLITIC.search(word)
        if match is None or match.start() == 0:
            return [word] + clitics
        clitics.insert(0, match.group(1))
        word = word[:match.start()]


def _ptb_tokens(caption: str) -> List[str]:
    tokens: List[str] = []
    text = caption.lower().replace("’", "'")
    for match in _TOKEN.finditer(text):
        kind, token = match.lastgroup, match.group()
        if kind in ("word", "quoted_word"):
            tokens.extend(_split_word(token))
        elif kind == "dots":
            tokens.append("." if token == "." else "...")
        elif kind == "dashes":
            tokens.append("--")
        elif kind == "other":
            tokens.append(_BRACKETS.get(token) or _QUOTES.get(token) or _SYMBOLS.get(token, token))
        else:
            tokens.append(token)
    return tokens


def ptb_like_tokenize(caption: str) -> str:
    """Pure-Python stand-in for pycocoevalcap's tokenisation (see the module docstring).

    Lower-cases, splits like the PTBTokenizer, and drops the tokens in pycocoevalcap's
    PUNCTUATIONS list. Like pycocoevalcap, it keeps lower-cased bracket tokens such as
    "-lrb-": that list holds only the upper-case forms.
    """
    return " ".join(t for t in _ptb_tokens(caption) if t not in _REMOVED_TOKENS)


def tokenize_captions(captions: Mapping[Hashable, Sequence[str]]) -> Dict[Hashable, List[str]]:
    """{key: [caption, ...]} -> {key: [tokenised caption, ...]}, in one Java call if
    Java is present, else with `ptb_like_tokenize`."""
    if not java_available():
        return {key: [ptb_like_tokenize(c) for c in texts] for key, texts in captions.items()}
    keys = [key for key, texts in captions.items() for _ in texts]
    lines = [_LINE_BREAKS.sub(" ", c) for texts in captions.values() for c in texts]
    out: Dict[Hashable, List[str]] = {key: [] for key in captions}
    for key, line in zip(keys, _java_ptb_tokenize(lines)):
        out[key].append(" ".join(w for w in line.rstrip().split(" ") if w not in _REMOVED_TOKENS))
    return out


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _meteor_scorer():
    # Imported here: constructing it starts the JVM, and only this path needs it.
    from pycocoevalcap.meteor.meteor import Meteor
    return Meteor()


def _spice_unavailable_reason() -> str | None:
    if not java_available():
        return "Java is not installed"
    from pycocoevalcap.spice import spice
    from pycocoevalcap.spice.get_stanford_models import JAR
    lib = os.path.join(os.path.dirname(os.path.abspath(spice.__file__)), "lib")
    for jar in (f"{JAR}.jar", f"{JAR}-models.jar"):
        if not os.path.exists(os.path.join(lib, jar)):
            return (f"{jar} is missing from {lib} (pycocoevalcap downloads Stanford CoreNLP "
                    "on first use, which needs network access)")
    return None


def _spice_score(gts, res, requested: bool) -> float | None:
    if not requested:
        logger.info("SPICE not computed: pass spice=True to compute it")
        return None
    reason = _spice_unavailable_reason()
    if reason is not None:
        warnings.warn(f"SPICE not computed: {reason}", RuntimeWarning, stacklevel=3)
        return None
    from pycocoevalcap.spice.spice import Spice
    return float(Spice().compute_score(gts, res)[0])


def _few(ids: Sequence[Hashable], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _checked_ids(predictions: Mapping, references: Mapping, allow_missing: bool) -> List[Hashable]:
    for image_id, caption in predictions.items():
        if not isinstance(caption, str):
            raise DataError(f"predictions[{image_id!r}]: caption must be a string, "
                            f"got {type(caption).__name__}")
        if image_id not in references:
            raise DataError(f"predictions[{image_id!r}]: no reference captions for this image")
    for image_id, captions in references.items():
        if isinstance(captions, str) or not isinstance(captions, Sequence) or not captions:
            raise DataError(f"references[{image_id!r}]: expected a non-empty list of captions")
        if not all(isinstance(c, str) for c in captions):
            raise DataError(f"references[{image_id!r}]: every caption must be a string")
    missing = [i for i in references if i not in predictions]
    if missing and not allow_missing:
        raise DataError(f"predictions: no caption for {len(missing)} referenced image(s), "
                        f"e.g. {_few(missing)} (pass allow_missing=True to score only the "
                        "predicted ones)")
    if not predictions:
        raise DataError("predictions: no captions to score")
    return [i for i in references if i in predictions]


def caption_scores(predictions: Mapping[Hashable, str],
                   references: Mapping[Hashable, Sequence[str]],
                   meteor: bool = True, spice: bool = False,
                   allow_missing: bool = False) -> Dict[str, float | None]:
    """COCO caption metrics of `predictions` {image_id: caption} against `references`
    {image_id: [caption, ...]}.

    Returns {"BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE"}. METEOR is None
    when `meteor` is False or Java is missing; SPICE is None unless `spice` is True and
    it can run (a warning says why not). Every referenced image needs a prediction
    unless `allow_missing`; then only predicted images are scored, which, as in
    pycocoevalcap, also restricts CIDEr's document frequencies to those images.
    """
    image_ids = _checked_ids(predictions, references, allow_missing)
    tagged: Dict[Tuple[str, Hashable], Sequence[str]] = {}
    for image_id in image_ids:
        tagged[("ref", image_id)] = references[image_id]
        tagged[("pred", image_id)] = [predictions[image_id]]
    tokens = tokenize_captions(tagged)  # one JVM start for both sides
    gts = {i: tokens[("ref", i)] for i in image_ids}
    res = {i: tokens[("pred", i)] for i in image_ids}

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores: Dict[str, float | None] = {f"BLEU-{n}": float(b) for n, b in enumerate(bleu, 1)}
    scores["METEOR"] = None
    if meteor and java_available():
        scores["METEOR"] = float(_meteor_scorer().compute_score(gts, res)[0])
    elif meteor:
        logger.warning("METEOR not computed: Java is not installed")
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    scores["SPICE"] = _spice_score(gts, res, spice)
    return scores


def perplexity(mean_nll: float) -> float:
    """Perplexity from the mean per-token negative log-likelihood in nats (a mean cross
    entropy): exp(mean_nll), or inf where that overflows."""
    if math.isnan(mean_nll) or mean_nll < 0:
        raise ValueError(f"mean_nll must be a non-negative number, got {mean_nll}")
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf
