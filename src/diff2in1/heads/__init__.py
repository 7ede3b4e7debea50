"""The perception head: feature fusion + Bae decoder (docs/method.md section 3)."""

from .fusion import FeatureGroups
from .normal_head import HeadConfig, HeadOutput, NormalHead
from .research_import import load_research_checkpoint

__all__ = ["FeatureGroups", "HeadConfig", "HeadOutput", "NormalHead", "load_research_checkpoint"]
