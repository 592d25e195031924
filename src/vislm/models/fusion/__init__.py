"""Task models: each combines a vision encoder and a text model from the registries."""

from vislm.models.fusion.captioner import Captioner
from vislm.models.fusion.dual_encoder import DualEncoder
from vislm.models.fusion.vqa import VQAClassifier

__all__ = ["Captioner", "DualEncoder", "VQAClassifier"]
