"""Perception heads: feature fusion + Bae decoder (docs/method.md section 3), and building them."""

from .build import build_head
from .fusion import FeatureGroups
from .normal_head import HeadConfig, HeadOutput, NormalHead
from .research_import import load_research_checkpoint

__all__ = [
    "FeatureGroups",
    "HeadConfig",
    "HeadOutput",
    "NormalHead",
    "build_head",
    "load_research_checkpoint",
]
