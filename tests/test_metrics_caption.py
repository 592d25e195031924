"""Caption metrics: hand-worked numbers, the Java-free fallback, file loading, and (when
Java is installed) parity with pycocoevalcap's own tokenizer and scorers."""

import json
import math
import shutil
import warnings

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from vislm.errors import DataError
from vislm.metrics import caption
from vislm.metrics.caption import caption_scores, perplexity, ptb_like_tokenize
from vislm.metrics.files import eval_caption_files

HAS_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAS_JAVA, reason="Java is not installed")

# Outputs of pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1 jar, then its
# punctuation filter), recorded once with Java and re-checked wherever Java exists by
# `test_recorded_outputs_match_java_ptbtokenizer`.
PTB_CASES = [
    ("A man riding a wave on top of a surfboard.",
     "a man riding a wave on top of a surfboard"),
    ("The dog's bone isn't here, they're \"happy\" and we'll go.",
     "the dog 's bone is n't here they 're happy and we 'll go"),
    ("A black-and-white photo of 10,000 people at 3:30 p.m. in the U.S.",
     "a black-and-white photo of 10,000 people at 3:30 p.m. in the u.s."),
    ("A man (wearing a hat) rides a horse...",
     "a man -lrb- wearing a hat -rrb- rides a horse"),
    ("I can't, won't, don't; cannot gonna wanna",
     "i ca n't wo n't do n't can not gon na wan na"),
    ("A CAT ON A MAT!!! $5.00 50%", "a cat on a mat !!! $ 5.00 50 %"),
    ("the dog’s bone isn’t “here” ‘ok’", "the dog 's bone is n't here ok"),
    ("Dr. Smith's office at 5th Ave.", "dr. smith 's office at 5th ave."),
    ("some bananas, apples, etc.", "some bananas apples etc."),
    ("a man 's hat , and a dog .", "a man 's hat and a dog"),
    ('A sign reading: "No Parking" on a street.', "a sign reading no parking on a street"),
    ("A pizza with pepperoni - cut into 8 slices -- yum.",
     "a pizza with pepperoni cut into 8 slices yum"),
    ("A vintage photo from the 1950's of a car.", "a vintage photo from the 1950 's of a car"),
    ("a bowl of soup with 1/2 of a sandwich & a cup w/o handle",
     "a bowl of soup with 1/2 of a sandwich & a cup w/o handle"),
    ('the letter "a" on a sign [test] {curly}',
     "the letter a on a sign -lsb- test -rsb- -lcb- curly -rcb-"),
    ("No. 5 on the jersey, at 12:30pm, 0.5 or .5 miles",
     "no. 5 on the jersey at 12:30 pm 0.5 or .5 miles"),
    ("'em 'cause '90s 'tis", "'em 'cause '90s 't is"),
    ("a plate of food.A fork", "a plate of food.a fork"),
    ("naïve café in São Paulo", "naïve café in são paulo"),
    ("", ""),
]

PREDICTIONS = {
    11: "A man riding a horse on the beach.",
    12: "Two dogs are playing in the snow!",
    13: "a plate of food with a fork",
    14: "",  # an empty caption must still be scored (as zero), not crash
    15: "A cat sitting on a laptop's keyboard.",
}
REFERENCES = {
    11: ["A man rides a horse along the beach.", "A person on horseback by the sea.",
         "A rider and his horse on the sand."],
    12: ["Two dogs playing in the snow.", "A pair of dogs run through snow.",
         "Dogs play outside in the winter."],
    13: ["A plate of food with a fork and knife.", "Dinner served on a white plate."],
    14: ["A red bus on a city street.", "A double-decker bus in London."],
    15: ["A cat lies on a laptop keyboard.", "A kitten sitting on a computer.",
         "A cat on the keys of a laptop.", "The cat's on the laptop."],
}


@pytest.fixture
def no_java(monkeypatch):
    monkeypatch.setattr(caption.shutil, "which", lambda name: None)


@pytest.mark.parametrize("text, expected", PTB_CASES)
def test_fallback_tokenizer_reproduces_ptb_output(text, expected):
    assert ptb_like_tokenize(text) == expected


def pycocoevalcap_scores(gts, res):
    """BLEU, ROUGE-L and CIDEr from pycocoevalcap's scorers on already-tokenised text."""
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"BLEU-{n}": b for n, b in enumerate(bleu, 1)}
    scores["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    scores["CIDEr"] = Cider().compute_score(gts, res)[0]
    return scores


def test_hand_worked_scores(no_java):
    # Unigram precision 1/2, equal lengths (no brevity penalty): BLEU-1 = 0.5.
    # LCS 1 of 2 words both ways: ROUGE-L F = 0.5. A single image gives every n-gram
    # idf log(1) - log(1) = 0, so CIDEr = 0.
    scores = caption_scores({1: "A cat."}, {1: ["a dog"]})
    assert scores["BLEU-1"] == pytest.approx(0.5)
    assert scores["ROUGE-L"] == pytest.approx(0.5)
    assert scores["CIDEr"] == 0.0
    assert scores["METEOR"] is None and scores["SPICE"] is None
    # Two images, each predicted exactly: "a" has idf 0, "cat"/"dog" and the bigrams
    # idf log 2, so 1- and 2-gram cosines are 1, 3- and 4-grams are empty (0):
    # CIDEr = 10 * mean(1, 1, 0, 0) = 5.
    exact = caption_scores({1: "a cat", 2: "a dog"}, {1: ["a cat"], 2: ["A dog."]})
    assert exact["CIDEr"] == pytest.approx(5.0)
    assert exact["BLEU-2"] == pytest.approx(1.0)


def test_scores_equal_pycocoevalcap_scorers_on_fallback_tokens(no_java):
    gts = {i: [ptb_like_tokenize(c) for c in refs] for i, refs in REFERENCES.items()}
    res = {i: [ptb_like_tokenize(PREDICTIONS[i])] for i in REFERENCES}
    expected = pycocoevalcap_scores(gts, res)
    got = caption_scores(PREDICTIONS, REFERENCES, meteor=True)
    assert got["METEOR"] is None  # asked for, but Java is absent
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert 0.1 < got["BLEU-1"] < 0.9 and got["CIDEr"] > 0.1  # a discriminating example


def test_input_validation():
    refs = {1: ["a cat"], 2: ["a dog"], 3: ["a cow"], 4: ["x"], 5: ["y"], 6: ["z"], 7: ["w"]}
    with pytest.raises(DataError, match=r"predictions\[9\]: no reference captions"):
        caption_scores({9: "a cat"}, refs)
    with pytest.raises(DataError, match=r"references\[1\]: expected a non-empty list"):
        caption_scores({1: "a cat"}, {1: []})
    with pytest.raises(DataError, match=r"no caption for 6 referenced image\(s\), e.g. 2, 3, "
                                        r"4, 5, 6 and 1 more"):
        caption_scores({1: "a cat"}, refs, meteor=False)
    with pytest.raises(DataError, match=r"predictions\['1'\]: caption must be a string"):
        caption_scores({"1": None}, {"1": ["a"]})


def test_allow_missing_scores_only_predicted_images(no_java):
    partial = {i: PREDICTIONS[i] for i in (11, 12)}
    got = caption_scores(partial, REFERENCES, allow_missing=True)
    expected = caption_scores(partial, {i: REFERENCES[i] for i in (11, 12)})
    assert got == expected


def test_spice_request_without_corenlp_warns_and_returns_none(no_java):
    with pytest.warns(RuntimeWarning, match="SPICE not computed: Java is not installed"):
        scores = caption_scores({1: "a cat"}, {1: ["a cat"]}, spice=True)
    assert scores["SPICE"] is None


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(37.0)) == pytest.approx(37.0)
    assert perplexity(1e6) == math.inf
    with pytest.raises(ValueError):
        perplexity(-0.1)


def write_coco_files(tmp_path, predictions, references):
    results = [{"image_id": i, "caption": c} for i, c in predictions.items()]
    annotations = {
        "images": [{"id": i} for i in references],
        "annotations": [{"image_id": i, "id": 100 * i + k, "caption": c}
                        for i, refs in references.items() for k, c in enumerate(refs)],
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "captions.json").write_text(json.dumps(annotations))
    return tmp_path / "results.json", tmp_path / "captions.json"


def test_caption_file_errors_name_file_and_field(tmp_path, no_java):
    results, captions = write_coco_files(tmp_path, PREDICTIONS, REFERENCES)
    with pytest.raises(DataError, match=r"nope.json: caption predictions file not found"):
        eval_caption_files(tmp_path / "nope.json", captions)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 1,\n  "caption": "a" "b"}]')
    with pytest.raises(DataError, match=r"bad.json: .*not valid JSON: .* line 2 column 18"):
        eval_caption_files(bad, captions)
    bad.write_text('[{"image_id": 11, "text": "a"}]')
    with pytest.raises(DataError, match=r"bad.json: item 0 has no 'caption' field"):
        eval_caption_files(bad, captions)
    bad.write_text('{"annotations": [{"image_id": 11, "caption": 5}]}')
    with pytest.raises(DataError, match=r"bad.json: annotations\[0\].caption should be str"):
        eval_caption_files(results, bad)
    bad.write_text('{"images": [{"id": 11}, {"id": 12}], '
                   '"annotations": [{"image_id": 11, "caption": "a"}]}')
    with pytest.raises(DataError, match=r"bad.json: image 12 in 'images' has no caption"):
        eval_caption_files(results, bad)
    bad.write_text('[{"image_id": 11, "caption": "a"}, {"image_id": 11, "caption": "b"}]')
    with pytest.raises(DataError, match=r"bad.json: image_id 11 appears more than once"):
        eval_caption_files(bad, captions)
    bad.write_text('[{"image_id": 11, "caption": "a"}]')
    with pytest.raises(DataError, match=r"bad.json: predictions: no caption for 4"):
        eval_caption_files(bad, captions)


@needs_java
def test_recorded_outputs_match_java_ptbtokenizer():
    """pycocoevalcap's PTBTokenizer itself (one JVM start) gives the recorded outputs."""
    tokens = PTBTokenizer().tokenize({k: [{"caption": text}] for k, (text, _) in
                                      enumerate(PTB_CASES)})
    assert [tokens[k][0] for k in range(len(PTB_CASES))] == [out for _, out in PTB_CASES]


@pytest.mark.slow
@needs_java
def test_caption_files_match_pycocoevalcap_with_java(tmp_path):
    """The whole COCO caption evaluation (PTB tokenizer and METEOR in Java, SPICE left
    out) run directly with pycocoevalcap's classes, against eval_caption_files."""
    results, captions = write_coco_files(tmp_path, PREDICTIONS, REFERENCES)
    got = eval_caption_files(results, captions, meteor=True)

    gts = {i: [{"caption": c} for c in refs] for i, refs in REFERENCES.items()}
    res = {i: [{"caption": PREDICTIONS[i]}] for i in REFERENCES}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    expected = pycocoevalcap_scores(gts, res)
    # pycocoevalcap's Meteor class; the instance vislm started above, to pay for one JVM.
    expected["METEOR"] = caption._meteor_scorer().compute_score(gts, res)[0]

    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert 0.05 < got["METEOR"] < 0.9
    assert got["SPICE"] is None
