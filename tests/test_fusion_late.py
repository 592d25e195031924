"""Late fusion VQA: every combiner trains, each computes its formula (against direct
computations), and the Gated Multimodal Unit follows Arevalo et al.'s equations."""

import pytest
import torch

import vislm.models  # noqa: F401  (registration)
from test_models_registry import assert_every_param_learns, make_batch
from vislm.errors import ConfigError
from vislm.models.fusion.gmu import GatedMultimodalUnit
from vislm.models.fusion.late import COMBINES, make_combiner
from vislm.registry import FUSIONS

COMBINER_KWARGS = [{"combine": "concat"}, {"combine": "product"},
                   {"combine": "bilinear", "rank": 0}, {"combine": "bilinear", "rank": 3},
                   {"combine": "gmu"}]


@pytest.mark.parametrize("extra", COMBINER_KWARGS, ids=lambda e: "-".join(map(str, e.values())))
def test_every_combiner_trains(extra):
    torch.manual_seed(0)
    model = FUSIONS.create("late_vqa", **{**FUSIONS.tiny_kwargs("late_vqa"), **extra})
    batch = make_batch(model)
    out = model(batch)
    assert out["logits"].shape == (4, model.num_answers)
    torch.testing.assert_close(out["logits"], model.predict(batch["pixel_values"],
                                                            batch["input_ids"],
                                                            batch["attention_mask"]))
    out["loss"].backward()
    assert_every_param_learns(model)


def test_image_and_question_meet_only_in_the_combiner():
    torch.manual_seed(0)
    model = FUSIONS.create("late_vqa", **FUSIONS.tiny_kwargs("late_vqa")).eval()
    batch = make_batch(model)
    image, question = model.features(batch["pixel_values"], batch["input_ids"],
                                     batch["attention_mask"])
    other_image, other_question = model.features(batch["pixel_values"].flip(0),
                                                  batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(other_question, question)  # the question never sees the image
    torch.testing.assert_close(other_image, image.flip(0))


def test_combiners_compute_their_formulas():
    torch.manual_seed(0)
    v, t = torch.randn(5, 6), torch.randn(5, 4)
    assert torch.equal(make_combiner("concat", 6, 4, 3)(v, t), torch.cat([v, t], dim=1))
    product = make_combiner("product", 6, 4, 3)
    torch.testing.assert_close(product(v, t), product.image_proj(v) * product.text_proj(t))
    full = make_combiner("bilinear", 6, 4, 3, rank=0)
    expected = torch.einsum("bi,kij,bj->bk", v, full.weight, t) + full.bias
    torch.testing.assert_close(full(v, t), expected)
    low = make_combiner("bilinear", 6, 4, 3, rank=2)
    # Output k is the bilinear form of W_k = U^T diag(P_k) V: rank 2 at most.
    U, V, P = low.image_factor.weight, low.text_factor.weight, low.out.weight
    W = torch.einsum("ri,kr,rj->kij", U, P, V)
    torch.testing.assert_close(low(v, t), torch.einsum("bi,kij,bj->bk", v, W, t) + low.out.bias)
    assert all(torch.linalg.matrix_rank(W[k]) <= 2 for k in range(3))


def test_gmu_equations():
    torch.manual_seed(0)
    gmu = GatedMultimodalUnit(6, 4, 3)
    v, t = torch.randn(5, 6), torch.randn(5, 4)
    h_v = torch.tanh(v @ gmu.image_proj.weight.t())
    h_t = torch.tanh(t @ gmu.text_proj.weight.t())
    z = torch.sigmoid(torch.cat([v, t], 1) @ gmu.gate.weight.t())
    torch.testing.assert_close(gmu(v, t), z * h_v + (1 - z) * h_t)
    # The gate selects: all-open picks the image feature, all-closed the text feature.
    with torch.no_grad():
        gmu.gate.weight.zero_()
        gmu.gate.weight[:, 0] = 1e4  # z follows the sign of the first image feature
    v[:, 0] = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    out = gmu(v, t)
    h_v = torch.tanh(gmu.image_proj(v))
    torch.testing.assert_close(out[0::2], h_v[0::2])
    torch.testing.assert_close(out[1::2], h_t[1::2])


def test_gmu_vqa_is_late_fusion_with_the_gmu():
    model = FUSIONS.create("gmu_vqa", **FUSIONS.tiny_kwargs("gmu_vqa"))
    assert isinstance(model.combine, GatedMultimodalUnit)
    with pytest.raises(ConfigError, match="gmu"):
        FUSIONS.create("gmu_vqa", **{**FUSIONS.tiny_kwargs("gmu_vqa"), "combine": "concat"})


def test_unknown_combine_is_a_config_error():
    assert set(COMBINES) == {"concat", "product", "bilinear", "gmu"}
    with pytest.raises(ConfigError, match="combine"):
        FUSIONS.create("late_vqa", **{**FUSIONS.tiny_kwargs("late_vqa"), "combine": "sum"})
