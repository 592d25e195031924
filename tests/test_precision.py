"""bf16 training switches attention to the plain path: same results, model setting restored."""

import torch

from vislm.models.fusion.dual_encoder import DualEncoder
from vislm.models.layers import SelfAttention
from vislm.train.optim import build_optimizer
from vislm.train.precision import attention_for_precision


def _model():
    torch.manual_seed(0)
    return DualEncoder(vision="vit", vision_kwargs={"image_size": 16, "patch_size": 8, "dim": 16,
                                                    "depth": 1, "heads": 2},
                       text="encoder", text_kwargs={"vocab_size": 30, "dim": 16, "depth": 1,
                                                    "heads": 2, "max_len": 8}, embed_dim=8)


def _batch():
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[1, 4:] = 0
    return {"pixel_values": torch.randn(4, 3, 16, 16, generator=g),
            "input_ids": torch.randint(0, 30, (4, 6), generator=g), "attention_mask": mask}


def _impls(model):
    return {m.attn_impl for m in model.modules() if isinstance(m, SelfAttention)}


def test_bf16_uses_math_attention_inside_and_restores_after():
    model = _model()
    with attention_for_precision(model, "bf16"):
        assert _impls(model) == {"math"}
    assert _impls(model) == {"sdpa"}
    with attention_for_precision(model, "fp32"):
        assert _impls(model) == {"sdpa"}
    with attention_for_precision(model, "bf16", device_type="cuda"):
        assert _impls(model) == {"sdpa"}


def test_bf16_math_attention_trains_like_sdpa_within_bf16_rounding():
    losses, grads = [], []
    for switch in (False, True):
        model = _model()
        context = attention_for_precision(model, "bf16") if switch else torch.autocast("cpu", enabled=False)
        with context, torch.autocast("cpu", torch.bfloat16):
            loss = model(_batch())["loss"]
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert abs(losses[0] - losses[1]) < 1e-2 * abs(losses[0])
    assert ((grads[0] - grads[1]).norm() / grads[0].norm()).item() < 5e-2


def test_the_trainer_optimizer_is_fused_adamw():
    optimizer = build_optimizer(_model(), lr=1e-3, weight_decay=0.1)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
