"""Retrieval metrics against a brute-force, sort-based reference written here."""

import statistics

import pytest
import torch

from vislm.errors import DataError
from vislm.metrics.retrieval import retrieval_metrics, retrieval_metrics_from_embeddings


def brute_force_ranks(similarity, text_image_index):
    """Rank by sorting every candidate list; among equal scores wrong candidates come
    first (the pessimistic convention)."""
    sim = similarity.tolist()
    owner = text_image_index.tolist()
    n_images, n_texts = len(sim), len(owner)
    i2t = []
    for i in range(n_images):
        ordered = sorted(range(n_texts), key=lambda j: (-sim[i][j], owner[j] == i))
        i2t.append(1 + min(pos for pos, j in enumerate(ordered) if owner[j] == i))
    t2i = []
    for j in range(n_texts):
        ordered = sorted(range(n_images), key=lambda i: (-sim[i][j], i == owner[j]))
        t2i.append(1 + ordered.index(owner[j]))
    return i2t, t2i


def brute_force_metrics(similarity, text_image_index):
    i2t, t2i = brute_force_ranks(similarity, text_image_index)
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            out[f"{name}_R@{k}"] = sum(r <= k for r in ranks) / len(ranks)
        out[f"{name}_median_rank"] = statistics.median(ranks)
        out[f"{name}_mean_rank"] = sum(ranks) / len(ranks)
    recalls = [out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
    out["rsum"] = sum(recalls)
    out["mean_R"] = sum(recalls) / 6
    return out


def assert_same(got, expected):
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


def unequal_captions(n_images, generator):
    """Each image gets 1 to 4 texts, in shuffled order."""
    counts = torch.randint(1, 5, (n_images,), generator=generator)
    index = torch.repeat_interleave(torch.arange(n_images), counts)
    return index[torch.randperm(index.numel(), generator=generator)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_unequal_captions_and_ties(seed):
    generator = torch.Generator().manual_seed(seed)
    index = unequal_captions(23, generator)
    # Scores on a coarse grid, so ties between right and wrong candidates are common.
    similarity = torch.randint(0, 4, (23, index.numel()), generator=generator).float()
    expected = brute_force_metrics(similarity, index)
    assert_same(retrieval_metrics(similarity, index), expected)
    # Blocks of 5 rows (the last one partial) must give the same answer as one block.
    assert_same(retrieval_metrics(similarity, index, chunk_rows=5), expected)


def test_all_equal_scores_get_the_worst_rank():
    index = torch.tensor([0, 0, 1, 2])
    metrics = retrieval_metrics(torch.zeros(3, 4), index)
    # Image 0 sees its two texts behind the two others: rank 3; images 1, 2: rank 4.
    assert metrics["i2t_mean_rank"] == pytest.approx((3 + 4 + 4) / 3)
    assert metrics["t2i_R@1"] == 0.0
    assert metrics["t2i_mean_rank"] == 3.0


def test_tiny_hand_checked_example():
    # Image 0 owns texts 0, 1; image 1 owns text 2.
    similarity = torch.tensor([[0.9, 0.1, 0.5],
                               [0.2, 0.8, 0.7]])
    metrics = retrieval_metrics(similarity, torch.tensor([0, 0, 1]))
    # i2t: image 0 ranks text 0 first -> 1; image 1 ranks texts 1 (0.8), 2 (0.7) -> 2.
    assert metrics["i2t_R@1"] == 0.5
    assert metrics["i2t_median_rank"] == 1.5
    # t2i: text 0 -> image 0 first; text 1 -> image 1 beats image 0 -> 2; text 2 -> 1.
    assert metrics["t2i_R@1"] == pytest.approx(2 / 3)
    assert metrics["t2i_mean_rank"] == pytest.approx(4 / 3)
    assert metrics["rsum"] == pytest.approx(0.5 + 1 + 1 + 2 / 3 + 1 + 1)


def test_embeddings_match_the_materialised_matrix():
    generator = torch.Generator().manual_seed(7)
    index = unequal_captions(40, generator)
    image_emb = torch.randn(40, 16, generator=generator, dtype=torch.float64)
    text_emb = torch.randn(index.numel(), 16, generator=generator, dtype=torch.float64)
    similarity = (torch.nn.functional.normalize(image_emb, dim=1)
                  @ torch.nn.functional.normalize(text_emb, dim=1).T)
    expected = brute_force_metrics(similarity, index)
    assert_same(retrieval_metrics_from_embeddings(image_emb, text_emb, index, chunk_rows=7),
                expected)
    raw = brute_force_metrics(image_emb @ text_emb.T, index)
    assert_same(retrieval_metrics_from_embeddings(image_emb, text_emb, index,
                                                  normalize=False), raw)


def test_perfect_embeddings_recall_everything():
    image_emb = torch.eye(6)
    index = torch.tensor([0, 1, 2, 3, 4, 5, 0, 3])
    metrics = retrieval_metrics_from_embeddings(image_emb, image_emb[index], index)
    assert metrics["mean_R"] == 1.0
    assert metrics["i2t_mean_rank"] == metrics["t2i_mean_rank"] == 1.0


def test_input_errors_are_data_errors():
    with pytest.raises(DataError, match=r"image \[2\] has no text"):
        retrieval_metrics(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(DataError, match="values must lie in"):
        retrieval_metrics(torch.zeros(2, 2), torch.tensor([0, 2]))
    with pytest.raises(DataError, match="expected shape"):
        retrieval_metrics(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(DataError, match="NaN"):
        retrieval_metrics(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0, 0]))
    with pytest.raises(DataError, match="text_emb"):
        retrieval_metrics_from_embeddings(torch.ones(1, 2), torch.tensor([[float("inf"), 0.0]]),
                                          torch.tensor([0]))
