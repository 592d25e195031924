"""Question-guided attention VQA: per-glimpse question summaries ignore padding, each
glimpse attends on its own, and glimpse positions are the attention-weighted token
coordinates, checked against direct computations."""

import pytest
import torch

import vislm.models  # noqa: F401  (registration)
from test_models_registry import assert_every_param_learns, make_batch
from vislm.models.fusion.butd import GuidedAttention, QuestionGlimpses, token_coordinates
from vislm.registry import FUSIONS


def test_token_coordinates_cover_the_grid_row_by_row():
    coords = token_coordinates(4)  # a 2x2 grid
    torch.testing.assert_close(coords, torch.tensor([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]]))
    with_cls = token_coordinates(10)  # CLS + 3x3
    torch.testing.assert_close(with_cls[0], torch.zeros(2))
    assert with_cls[1:, 0].tolist()[:3] == pytest.approx([-2 / 3, 0.0, 2 / 3])
    with pytest.raises(ValueError, match="square grid .* 7 tokens"):
        token_coordinates(7)


def test_question_glimpses_give_padding_no_weight():
    torch.manual_seed(0)
    glimpses = QuestionGlimpses(dim=8, hidden=16, glimpses=3)
    hidden = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = glimpses(hidden, mask)
    assert out.shape == (2, 3, 8)
    changed = hidden.clone()
    changed[0, 3:] = 100.0  # padding: must not matter
    torch.testing.assert_close(glimpses(changed, mask)[0], out[0])


def test_per_glimpse_attention_equals_one_glimpse_at_a_time():
    torch.manual_seed(0)
    attention = GuidedAttention(image_dim=6, question_dim=5, hidden=7, glimpses=1)
    tokens, questions = torch.randn(3, 9, 6), torch.randn(3, 2, 5)
    weights = attention(tokens, questions)  # (B, N, G)
    assert weights.shape == (3, 9, 2)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3, 2))
    for g in range(2):
        torch.testing.assert_close(weights[:, :, g], attention(tokens, questions[:, g])[:, :, 0])


def test_glimpse_positions_are_attention_weighted_coordinates():
    torch.manual_seed(0)
    model = FUSIONS.create("attention_vqa", **FUSIONS.tiny_kwargs("attention_vqa"))
    N = model.coordinates.shape[0]
    weights = torch.softmax(torch.randn(4, N, 2), dim=1)
    where = model._where(weights)
    expected = [weights[:, :, g] @ model.coordinates for g in range(2)]
    torch.testing.assert_close(where[:, :4], torch.cat(expected, dim=1))
    torch.testing.assert_close(where[:, 4:], expected[0] - expected[1])


@pytest.mark.parametrize("question_glimpses,glimpse_positions,relation_layers",
                         [(False, False, 0), (True, False, 0), (True, True, 0), (False, False, 2), (True, True, 1)])
def test_every_variant_trains(question_glimpses, glimpse_positions, relation_layers):
    torch.manual_seed(0)
    kwargs = {**FUSIONS.tiny_kwargs("attention_vqa"), "question_glimpses": question_glimpses,
              "glimpse_positions": glimpse_positions, "relation_layers": relation_layers}
    model = FUSIONS.create("attention_vqa", **kwargs)
    batch = make_batch(model)
    out = model(batch)
    assert out["logits"].shape == (4, model.num_answers)
    out["loss"].backward()
    assert_every_param_learns(model)
