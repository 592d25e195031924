"""Retrieval re-ranked by ITM: the ranking arithmetic with fake scorers, then the task on a
tiny ALBEF model and a tiny shapes world."""

import pytest
import torch

from vislm.config import load_config
from vislm.data.images import load_image
from vislm.data.shapes import generate_shapes_world
from vislm.metrics.retrieval import retrieval_metrics_from_embeddings
from vislm.pretrained import build_model
from vislm.registry import VISION_ENCODERS
from vislm.tasks import RetrievalTask
from vislm.tasks.data import load_split
from vislm.tasks.rerank import (RECALL_KEYS, itm_pair_scorer, pair_features, rerank_metrics,
                                rerank_tradeoff, reranked_ranks)
from vislm.tasks.run import make_tokenizer


def embeddings(n_images=12, per_image=2, dim=6, noise=1.5, seed=0):
    """Noisy texts around their images: ITC gets some right, not all."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n_images, dim, generator=g)
    owners = torch.arange(n_images).repeat_interleave(per_image)
    texts = images[owners] + noise * torch.randn(len(owners), dim, generator=g)
    return images, texts, owners


def oracle(owners, prefer_true=True):
    """A fake ITM head: 1 for a true pair, 0 otherwise (or the reverse)."""
    def score(image_index, text_index):
        true = (owners[text_index] == image_index).float()
        return true if prefer_true else 1 - true
    return score


def itc(images, texts, owners):
    return retrieval_metrics_from_embeddings(images, texts, owners)


@pytest.mark.parametrize("tied", [False, True])
def test_k1_changes_nothing(tied):
    images, texts, owners = embeddings()
    if tied:  # images 0 and 1 alike: ITC ranks their texts pessimistically, and so must we
        images[1] = images[0]
        texts[owners == 1] = images[0]
    base = itc(images, texts, owners)
    for prefer in (True, False):  # whatever ITM says, one candidate cannot move
        got = rerank_metrics(images, texts, owners, oracle(owners, prefer), k=1, prefix="")
        for key in RECALL_KEYS:
            assert got[key] == pytest.approx(base[key]), key


@pytest.mark.parametrize("k", [5, 10])  # the recalls ITC reports
def test_oracle_lifts_r1_to_itc_recall_at_k(k):
    images, texts, owners = embeddings()
    base = itc(images, texts, owners)
    assert base["t2i_R@1"] < base[f"t2i_R@{k}"]  # else the test shows nothing
    got = rerank_metrics(images, texts, owners, oracle(owners), k=k)
    for d in ("i2t", "t2i"):
        assert got[f"itm_{d}_R@1"] == pytest.approx(base[f"{d}_R@{k}"])
        # Re-ranking only permutes the top k: whatever lay beyond stays there.
        assert got[f"itm_{d}_R@{k}"] == pytest.approx(base[f"{d}_R@{k}"])
        assert got[f"itm_{d}_R@10"] == pytest.approx(base[f"{d}_R@10"])


def test_adversarial_itm_pushes_true_pair_to_kth_place():
    images, texts, owners = embeddings(per_image=1)
    k = 4
    i2t, t2i, _ = reranked_ranks(images, texts, owners, oracle(owners, prefer_true=False), k)
    base_i2t, base_t2i, _ = reranked_ranks(images, texts, owners, oracle(owners), 1)
    inside = base_t2i <= k
    assert inside.any()
    assert torch.equal(t2i[inside], torch.full_like(t2i[inside], k))
    assert torch.equal(t2i[~inside], base_t2i[~inside])


def test_each_pair_is_scored_once():
    images, texts, owners = embeddings()
    seen = []

    def score(image_index, text_index):
        seen.extend(zip(image_index.tolist(), text_index.tolist()))
        return oracle(owners)(image_index, text_index)

    _, _, pairs = reranked_ranks(images, texts, owners, score, k=4)
    assert len(seen) == len(set(seen)) == pairs
    assert pairs < (len(images) + len(texts)) * 4  # both directions share some pairs


# --- On a model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return generate_shapes_world(root, seed=1, sizes={"train": 6, "val": 2, "test": 6, "comp_test": 2},
                                 image_size=32)  # the transform shrinks them to 16


def make_task(world, fusion="albef_pretrain", rerank_k=0):
    cfg = load_config(None, [
        "task=retrieval", f"data.root={world}", "data.image_size=16", "data.max_text_len=16",
        "tokenizer.vocab_size=120", f"model.fusion={fusion}", "model.vision=cnn",
        f"eval.rerank_k={rerank_k}", "eval.batch_size=5"])
    cfg.model.vision_kwargs = VISION_ENCODERS.tiny_kwargs("cnn")
    cfg.model.text_kwargs = {"dim": 16, "depth": 1, "heads": 2}  # vocabulary: the tokenizer's
    cfg.model.fusion_kwargs = {"embed_dim": 8, **({"fusion_depth": 1} if fusion == "albef_pretrain" else {})}
    splits = {name: load_split(cfg.data, name) for name in ("train", "test")}
    tokenizer = make_tokenizer(cfg, splits["train"])
    task = RetrievalTask(cfg, tokenizer, splits)
    torch.manual_seed(0)
    return task, build_model(cfg, tokenizer).eval()


def test_scorer_reads_the_pair_it_is_given(world):
    """Scores from the split-wide padded features equal the model run on that one pair."""
    task, model = make_task(world)
    scorer = itm_pair_scorer(model, pair_features(task, model, "test"), batch_size=4)
    texts, owners = task.captions("test")
    pairs = torch.tensor([[0, 0], [1, 0], [0, 3], [5, len(texts) - 1], [2, 7]])
    got = scorer(pairs[:, 0], pairs[:, 1])
    records = task.splits["test"].captions
    with torch.no_grad():
        for (i, t), score in zip(pairs.tolist(), got):
            pixels = task.transform(load_image(records[i].image_path))[None]
            ids, mask = task.tokenizer([texts[t]], 16)
            fused = model.fusion(model.text.encode(ids, mask), mask, model.vision(pixels))
            logits = model.itm_head(fused[:, 0])
            assert score.item() == pytest.approx((logits[0, 1] - logits[0, 0]).item(), abs=1e-4)


def test_task_reports_itm_metrics_equal_to_itc_at_k1(world):
    task, model = make_task(world, rerank_k=1)
    metrics = task.evaluate(model, "test")
    for key in RECALL_KEYS:
        assert metrics[f"itm_{key}"] == pytest.approx(metrics[key]), key
    assert metrics["itc_seconds"] > 0 and metrics["itm_seconds"] > 0
    assert metrics["itm_pairs"] > 0


def test_task_without_rerank_or_itm_head_reports_itc_only(world):
    for fusion, k in (("albef_pretrain", 0), ("dual_encoder", 4)):
        task, model = make_task(world, fusion, rerank_k=k)
        assert not any(key.startswith("itm_") for key in task.evaluate(model, "test")), fusion


def test_tradeoff_rows(world):
    task, model = make_task(world)
    itc_metrics = task.evaluate(model, "test")
    rows = rerank_tradeoff(task, model, "test", ks=(0, 1, 4))
    assert [row["k"] for row in rows] == [0, 1, 4]
    for row in rows[:2]:  # k=0 is ITC; k=1 cannot move anything
        assert {key: row[key] for key in RECALL_KEYS} == pytest.approx(
            {key: itc_metrics[key] for key in RECALL_KEYS})
    assert rows[0]["pairs"] == 0 < rows[1]["pairs"] < rows[2]["pairs"]
    assert all(row["seconds"] > 0 for row in rows)
