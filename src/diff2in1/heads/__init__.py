"""Perception heads: feature fusion + Bae decoder (docs/method.md section 3), the depth and
segmentation heads on the same taps (docs/multitask.md), and building them."""

from .build import build_head
from .dense_head import DenseHead, DenseOutput, folder_task, head_task, load_head
from .fusion import FeatureGroups
from .normal_head import HeadConfig, HeadOutput, NormalHead
from .research_import import load_research_checkpoint

__all__ = [
    "DenseHead",
    "DenseOutput",
    "FeatureGroups",
    "HeadConfig",
    "HeadOutput",
    "NormalHead",
    "build_head",
    "folder_task",
    "head_task",
    "load_head",
    "load_research_checkpoint",
]
