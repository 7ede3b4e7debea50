"""Build a head for a backbone: a named preset or a saved head folder, with its usage recorded."""

from __future__ import annotations

import dataclasses

from ..backbone import Backbone
from ..fingerprint import backbone_fingerprint, check_head
from .normal_head import HeadConfig, NormalHead


def build_head(spec: str, backbone: Backbone, resolution: int | tuple[int, int] | None = None) -> NormalHead:
    """`reference` (research widths), `small` (toy widths), or a saved head folder.

    The head's config records how it is being trained, so inference uses it right: the training
    `resolution` (squashed, as the research data loader does) and the backbone's fingerprint.
    """
    channels = backbone.tap_channels
    in_channels = tuple(channels[g] for g in ("low", "mid", "high", "highest"))
    if spec == "reference":
        head = NormalHead.from_head_config(
            dataclasses.replace(HeadConfig.reference(), in_channels=in_channels)
        )
    elif spec == "small":
        head = NormalHead.from_head_config(HeadConfig.small(in_channels))
    else:
        head = NormalHead.from_pretrained(spec)
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
