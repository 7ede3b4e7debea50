"""Heads for depth and semantic segmentation on the same tap groups as the normal head
(docs/multitask.md).

A `DenseHead` is the research feature fusion (`fusion.FeatureFusion`, the normal head's) followed
by a small decoder of the normal decoder's up-blocks (`decoder.UpBlock`) and a 3x3 task output at
half the image size, resized (bilinear) to the image:

- depth: two channels (mu, s): mu = ln(depth / m), s = ln(b), b the per-pixel scale of a Laplace
  (or Gaussian) likelihood of ln(depth) (`losses.depth_nll`); depth = exp(mu) metres.
- segmentation: one logit per class.

The config records the task, its output units, the classes (names and colours), and like the
normal head the processing resolution, resize mode and backbone fingerprint.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from safetensors.torch import load_file
from torch import Tensor, nn

from ..errors import InputError
from ..memory_alignment import realign_
from .decoder import UpBlock
from .fusion import FeatureFusion, FeatureGroups
from .normal_head import (
    CONFIG_NAME,
    RESIZE_MODES,
    WEIGHTS_NAME,
    WEIGHTS_NAMES,
    HeadConfig,
    check_state_dict,
    record_usage,
)

DENSE_TASKS = ("depth", "segmentation")
UNITS = {"normals": "unit vectors", "depth": "metres", "segmentation": "class ids"}
DEPTH_LIKELIHOODS = ("laplace", "gaussian")
LOG_SCALE_RANGE = (-7.0, 3.0)  # s = ln b is clamped here: b from 0.1 % to 20x relative error
INIT_DEPTH_M = 3.0  # the depth output starts near a room's depth (its bias is ln 3)

_REF = HeadConfig.reference()
# The dense decoders are narrower than the research normal decoder (their outputs are simpler,
# and three heads on one backbone pass should cost little more than one).
REFERENCE_DECODER = (512, 256, 128, 64, 64)


@dataclass
class DenseOutput:
    """A dense head's prediction at the requested size.

    depth: log_depth and log_scale (B, 1, H, W); `depth` (metres) and `uncertainty` (the expected
    absolute error in metres, to first order) derived from them. segmentation: logits (B, C, H, W).
    """

    task: str
    log_depth: Tensor | None = None
    log_scale: Tensor | None = None
    logits: Tensor | None = None
    likelihood: str = "laplace"

    @property
    def depth(self) -> Tensor:
        return torch.exp(self.log_depth.float())

    @property
    def uncertainty(self) -> Tensor:
        """Expected |ln d - ln gt| (b for Laplace, b sqrt(2 / pi) for Gaussian) times depth: metres."""
        factor = 1.0 if self.likelihood == "laplace" else math.sqrt(2.0 / math.pi)
        return torch.exp(self.log_scale.float()) * factor * self.depth

    @property
    def probabilities(self) -> Tensor:
        return torch.softmax(self.logits.float(), dim=1)

    @property
    def classes(self) -> Tensor:
        return self.logits.argmax(dim=1)


class DenseHead(ModelMixin, ConfigMixin):
    """Fusion + small decoder: tap groups -> depth (log-depth, log-scale) or class logits.

    A diffusers model saved as `config.json` + `diffusion_pytorch_model.safetensors`, loaded by
    `from_pretrained` with one-line errors. `task` is "depth" or "segmentation"; segmentation needs
    `class_names` (and takes `class_colors`, RGB triples). `likelihood` (depth): the distribution
    of ln(depth) the head was trained under ("laplace" or "gaussian").
    """

    config_name = CONFIG_NAME

    @register_to_config
    def __init__(
        self,
        task: str = "depth",
        in_channels: tuple[int, int, int, int] = _REF.in_channels,
        f4: int = _REF.f4,
        f3: int = _REF.f3,
        f2: int = _REF.f2,
        g: int = _REF.g,
        f1: int = _REF.f1,
        f0: int = _REF.f0,
        decoder_widths: tuple[int, int, int, int, int] = REFERENCE_DECODER,
        gn_groups: int = 8,
        units: str | None = None,
        class_names: list[str] | None = None,
        class_colors: list[list[int]] | None = None,
        likelihood: str = "laplace",
        processing_resolution: int | list[int] | None = None,
        resize_mode: str | None = None,
        backbone: dict | None = None,
    ) -> None:
        super().__init__()
        if task not in DENSE_TASKS:
            raise ValueError(f"task must be one of {DENSE_TASKS}, got {task!r}")
        if resize_mode not in (None, *RESIZE_MODES):
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        if likelihood not in DEPTH_LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {DEPTH_LIKELIHOODS}, got {likelihood!r}")
        if task == "segmentation":
            if not class_names:
                raise ValueError("a segmentation head needs class_names")
            if class_colors is not None and len(class_colors) != len(class_names):
                raise ValueError(f"{len(class_names)} class names but {len(class_colors)} colours")
        # HeadConfig checks the widths (its decoder fields are the same kind of tuple).
        HeadConfig(in_channels, f4, f3, f2, g, f1, f0, tuple(decoder_widths), gn_groups=gn_groups)
        w0, w1, w2, w3, w4 = (int(c) for c in decoder_widths)
        self.fusion = FeatureFusion(tuple(int(c) for c in in_channels), f4, f3, f2, g, f1, f0)
        self.d0 = nn.Conv2d(f4, w0, 1)
        self.up1 = UpBlock(w0 + f3, w1, gn_groups)
        self.up2 = UpBlock(w1 + f2, w2, gn_groups)
        self.up3 = UpBlock(w2 + f1, w3, gn_groups)
        self.up4 = UpBlock(w3 + f0, w4, gn_groups)
        out_channels = 2 if task == "depth" else len(class_names)
        self.out = nn.Conv2d(w4, out_channels, 3, padding=1)
        if task == "depth":
            with torch.no_grad():
                self.out.bias.copy_(torch.tensor([math.log(INIT_DEPTH_M), math.log(0.3)]))

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def num_classes(self) -> int:
        return len(self.config.class_names or [])

    def class_list(self):
        """The segmentation classes as a `diff2in1.data.labels.ClassList` (None for depth)."""
        from ..data.labels import ClassList

        names = self.config.class_names
        if not names:
            return None
        colors = self.config.class_colors
        if colors is None:
            return ClassList.with_default_colors(names)
        return ClassList(tuple(names), tuple(tuple(int(v) for v in c) for c in colors))

    def set_usage(self, **usage) -> None:
        """Record processing_resolution / resize_mode / backbone in the config (as `NormalHead`)."""
        record_usage(self, **usage)

    def forward(
        self, feats: FeatureGroups, image_size: tuple[int, int] | None = None, **_
    ) -> DenseOutput:
        """feats: tap groups at L/8, L/4, L/2, L. The output is made at 4L (half the image) and
        resized (bilinear) to `image_size` (default 8L, the image). Extra keyword arguments of the
        normal head (gt_mask, point_seeds) are accepted and unused: the heads share one call."""
        f4, f3, f2, f1, f0 = self.fusion(feats)
        d = self.up4(self.up3(self.up2(self.up1(self.d0(f4), f3), f2), f1), f0)
        y = self.out(d).float()
        native = tuple(s * 8 for s in feats.highest.shape[-2:])
        size = tuple(image_size) if image_size is not None else native
        if tuple(y.shape[-2:]) != size:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        if self.config.task == "depth":
            lo, hi = LOG_SCALE_RANGE
            return DenseOutput(
                "depth",
                log_depth=y[:, :1],
                log_scale=y[:, 1:].clamp(lo, hi),
                likelihood=self.config.likelihood,
            )
        return DenseOutput("segmentation", logits=y)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", **kwargs
    ) -> DenseHead:
        """Load a folder written by `save_pretrained`; InputError naming the file on any problem."""
        folder = Path(directory)
        if kwargs.get("subfolder"):
            folder = folder / kwargs["subfolder"]
        raw = read_head_config(folder)
        task = raw.get("task", "normals")
        if task not in DENSE_TASKS:
            raise InputError(f"{folder}: a {task} head, not a depth or segmentation head")
        cfg_path = folder / CONFIG_NAME
        try:
            init = {k: v for k, v in raw.items() if not k.startswith("_")}
            unknown = sorted(set(init) - set(inspect.signature(cls.__init__).parameters))
            if unknown:
                raise ValueError(f"unknown keys {unknown}")
            with torch.device("meta"):
                model = cls(**init)
        except (ValueError, TypeError, AttributeError) as e:
            raise InputError(f"{cfg_path}: not a valid head config ({' '.join(str(e).split())})") from None
        w_path = next(folder / n for n in WEIGHTS_NAMES if (folder / n).is_file())
        try:
            state = load_file(str(w_path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            detail = " ".join(str(e).split())
            raise InputError(f"{w_path}: not a readable safetensors file ({detail})") from None
        expected = model.state_dict()
        check_state_dict(expected, state, w_path)
        state = {k: v.to(expected[k].dtype) for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        model.eval()
        return realign_(model.to(device))


def read_head_config(folder: str | Path) -> dict:
    """A head folder's config.json as a dict; InputError naming the folder when it is not one."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file() or not any((folder / n).is_file() for n in WEIGHTS_NAMES):
        raise InputError(f"{folder}: not a head folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{cfg_path}: not a valid head config ({' '.join(str(e).split())})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{cfg_path}: not a valid head config (not a JSON object)")
    return raw


def head_task(head: nn.Module) -> str:
    """"normals", "depth" or "segmentation": the task a head (model) predicts."""
    return getattr(getattr(head, "config", None), "task", None) or "normals"


def folder_task(folder: str | Path) -> str:
    """The task of a saved head folder (a folder without one is a normal head)."""
    return read_head_config(folder).get("task") or "normals"


def load_head(folder: str | Path, task: str | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """A saved head of any task; with `task`, a head of another task is a one-line InputError."""
    from .normal_head import NormalHead

    have = folder_task(folder)
    if task is not None and have != task:
        raise InputError(f"{folder}: a {have} head, but a {task} head is expected here")
    if have == "normals":
        return NormalHead.from_pretrained(folder, device=device)
    return DenseHead.from_pretrained(folder, device=device)


def dense_head_config(
    task: str, preset: str, in_channels: tuple[int, int, int, int], width: int = 16
) -> dict:
    """Width arguments of a `reference` or `small` dense head (the fusion as the normal head's preset)."""
    if preset == "reference":
        base = dataclasses.replace(_REF, in_channels=in_channels)
        decoder = REFERENCE_DECODER
    else:
        base = HeadConfig.small(in_channels, width)
        decoder = (4 * width, 4 * width, 2 * width, 2 * width, width)
    fusion = {k: getattr(base, k) for k in ("f4", "f3", "f2", "g", "f1", "f0")}
    return {
        "task": task,
        "in_channels": in_channels,
        **fusion,
        "decoder_widths": decoder,
        "units": UNITS[task],
    }


__all__ = [
    "DENSE_TASKS",
    "DenseHead",
    "DenseOutput",
    "dense_head_config",
    "folder_task",
    "head_task",
    "load_head",
    "read_head_config",
]
