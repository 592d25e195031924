"""Task models: each combines a vision encoder and a text model from the registries."""

from vislm.models.fusion.captioner import Captioner
from vislm.models.fusion.dual_encoder import DualEncoder
from vislm.models.fusion.vqa import VQAClassifier

__all__ = ["Captioner", "DualEncoder", "VQAClassifier"]

# Early, late, interactive (co-attention, gated cross-attention) and prefix fusions, and
# ALBEF pre-training.
from vislm.models.fusion.albef import ALBEFPretrain
from vislm.models.fusion.butd import AttentionVQA
from vislm.models.fusion.text_only import TextOnlyLM, TextOnlyVQA
from vislm.models.fusion.coattention import CoAttentionVQA
from vislm.models.fusion.early import EarlyFusionCaptioner, EarlyFusionVQA
from vislm.models.fusion.gated import GatedCaptioner
from vislm.models.fusion.late import LateFusionVQA
from vislm.models.fusion.prefix import PrefixCaptioner

__all__ += ["ALBEFPretrain", "AttentionVQA", "TextOnlyLM", "TextOnlyVQA", "CoAttentionVQA", "EarlyFusionCaptioner", "EarlyFusionVQA",
            "GatedCaptioner", "LateFusionVQA", "PrefixCaptioner"]
