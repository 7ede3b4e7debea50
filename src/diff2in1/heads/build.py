"""Build a head for a backbone: a named preset or a saved head folder, with its usage recorded."""

from __future__ import annotations

import dataclasses

from torch import nn

from ..backbone import Backbone
from ..fingerprint import backbone_fingerprint, check_head
from .dense_head import DenseHead, dense_head_config, load_head
from .normal_head import HeadConfig, NormalHead

PRESETS = ("reference", "small")


def build_head(
    spec: str,
    backbone: Backbone,
    resolution: int | tuple[int, int] | None = None,
    task: str = "normals",
    class_list=None,
    likelihood: str = "laplace",
) -> nn.Module:
    """`reference` (research widths), `small` (toy widths), or a saved head folder, for `task`
    ("normals", "depth" or "segmentation"; a folder of another task is a one-line error).

    The head's config records how it is being trained, so inference uses it right: the training
    `resolution` (squashed, as the research data loader does) and the backbone's fingerprint.
    A new segmentation head takes its classes from `class_list` (a `ClassList`); a new depth head
    records `likelihood` ("laplace" or "gaussian", the depth loss it is trained with).
    """
    channels = backbone.tap_channels
    in_channels = tuple(channels[g] for g in ("low", "mid", "high", "highest"))
    if spec in PRESETS and task == "normals":
        base = HeadConfig.reference() if spec == "reference" else HeadConfig.small(in_channels)
        head = NormalHead.from_head_config(dataclasses.replace(base, in_channels=in_channels))
    elif spec in PRESETS:
        extra = {}
        if task == "segmentation":
            if class_list is None:
                raise ValueError("a new segmentation head needs the class list")
            extra = {
                "class_names": list(class_list.names),
                "class_colors": [list(c) for c in class_list.colors],
            }
        else:
            extra = {"likelihood": likelihood}
        head = DenseHead(**dense_head_config(task, spec, in_channels), **extra)
    else:
        head = load_head(spec, task)
        check_head(head, backbone, spec, str(backbone.source))
    if resolution is not None:
        h, w = (
            (resolution, resolution)
            if isinstance(resolution, int)
            else (int(resolution[0]), int(resolution[1]))
        )
        head.set_usage(processing_resolution=h if h == w else [h, w], resize_mode="squash")
    head.set_usage(backbone=backbone_fingerprint(backbone.unet, backbone.vae, channels))
    return head
