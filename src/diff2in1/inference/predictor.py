"""`NormalPredictor`: batched perception on tensors for evaluation and training reports.

A thin adapter over `Diff2in1Pipeline.predict_model_space` (the one perception path): images in
[-1, 1] of any size are squashed to the head's resolution (docs/method.md section 9) and the
prediction is resized back and renormalised.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..backbone import Backbone, load_backbone
from ..heads import NormalHead
from .image_processor import resize_image, resize_map, resize_normals
from .pipeline import DEFAULT_RESOLUTION, Diff2in1Pipeline

__all__ = ["NormalPredictor", "Prediction", "TaskPredictor", "resize_map", "resize_normals"]


@dataclass
class Prediction:
    """normal (B, 3, H, W) unit vectors, kappa (B, 1, H, W), at the requested output size."""

    normal: torch.Tensor | None
    kappa: torch.Tensor | None
    log_depth: torch.Tensor | None = None  # (B, 1, H, W) ln metres (a depth head)
    log_scale: torch.Tensor | None = None  # (B, 1, H, W) ln of its per-pixel scale
    logits: torch.Tensor | None = None  # (B, C, H, W) class logits (a segmentation head)


class NormalPredictor:
    """Backbone + head in eval mode: images in [-1, 1] -> normals and kappa.

    `resolution` (h, w) defaults to the size the head was trained at (its config), else 512.
    Every image draws the same noise (from `seed`), so its result does not depend on its batch.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: NormalHead,
        resolution: tuple[int, int] | int | None = None,
        seed: int = 0,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.pipe = Diff2in1Pipeline.from_backbone(backbone, head)
        self.backbone, self.head = backbone, self.pipe.head
        res = resolution or head.config.processing_resolution or DEFAULT_RESOLUTION
        self.resolution = self.pipe._resolution(res)
        self.seed, self.autocast_dtype = seed, autocast_dtype

    @classmethod
    def from_paths(cls, backbone: str, head: str, device: str = "auto", **kw) -> NormalPredictor:
        from ..distributed import init_from_launcher

        dev = init_from_launcher(device)
        dtype = kw.get("autocast_dtype") or torch.float32  # the frozen backbone is simply cast
        return cls(load_backbone(backbone, device=dev, dtype=dtype), NormalHead.from_pretrained(head), **kw)

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, out_size: tuple[int, int] | None = None, ids: Iterable[int] | None = None
    ) -> Prediction:
        """images (B, 3, H, W) in [-1, 1] -> Prediction at `out_size` (default: H, W). `ids` is
        accepted for compatibility and unused: results never depend on an image's position."""
        out_size = out_size or tuple(images.shape[-2:])
        x = images.to(self.backbone.device, torch.float32)
        if tuple(x.shape[-2:]) != self.resolution:
            x = resize_image(x, self.resolution)
        normal, kappa = self.pipe.predict_model_space(x, seed=self.seed)
        return Prediction(normal=resize_normals(normal, out_size), kappa=resize_map(kappa, out_size))


class TaskPredictor:
    """Backbone + one head per task (a head set) in eval mode: images in [-1, 1] -> every task's
    prediction from one backbone pass, resized as `NormalPredictor` resizes (maps bilinearly).

    `heads`: head folders or models of different tasks. `resolution` defaults to the first head's
    recorded size (the normal head's when there is one), else 512.
    """

    def __init__(
        self,
        backbone: Backbone,
        heads: list,
        resolution: tuple[int, int] | int | None = None,
        seed: int = 0,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.pipe = Diff2in1Pipeline.from_backbone(backbone, list(heads))
        self.backbone, self.tasks = backbone, self.pipe.tasks
        head = self.pipe.primary_head
        self.resolution = self.pipe._resolution(
            resolution or head.config.processing_resolution or DEFAULT_RESOLUTION
        )
        self.seed, self.autocast_dtype = seed, autocast_dtype

    @classmethod
    def from_paths(cls, backbone: str, heads: list[str], device: str = "auto", **kw) -> TaskPredictor:
        from ..distributed import init_from_launcher
        from .head_set import load_head_set

        load_head_set(list(heads))  # bad head folders fail before the backbone loads
        dev = init_from_launcher(device)
        dtype = kw.get("autocast_dtype") or torch.float32
        return cls(load_backbone(backbone, device=dev, dtype=dtype), list(heads), **kw)

    @property
    def segmentation_head(self):
        return self.pipe.segmentation_head

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, out_size: tuple[int, int] | None = None) -> Prediction:
        out_size = out_size or tuple(images.shape[-2:])
        x = images.to(self.backbone.device, torch.float32)
        if tuple(x.shape[-2:]) != self.resolution:
            x = resize_image(x, self.resolution)
        pred = self.pipe.predict_tasks_model_space(x, seed=self.seed)
        out = Prediction(normal=None, kappa=None)
        if "normals" in pred:
            normal, kappa = pred["normals"]
            out.normal, out.kappa = resize_normals(normal, out_size), resize_map(kappa, out_size)
        if "depth" in pred:
            out.log_depth, out.log_scale = (resize_map(m, out_size) for m in pred["depth"])
        if "segmentation" in pred:
            out.logits = resize_map(pred["segmentation"][0], out_size)
        return out
