"""The perception head: feature fusion + Bae decoder -> per-pixel unit normal and kappa
(docs/method.md section 3).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import FrozenDict, register_to_config
from safetensors.torch import load_file
from torch import Tensor

from ..errors import InputError
from ..memory_alignment import realign_
from .decoder import NormalDecoder
from .fusion import FeatureFusion, FeatureGroups

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' name for a model's weights
WEIGHTS_NAMES = (WEIGHTS_NAME, "model.safetensors")  # the second: heads saved by diff2in1 < 0.2
RESIZE_MODES = ("squash", "keep_aspect")


@dataclass
class HeadConfig:
    """Widths of the head. JSON-serialisable through `to_dict` / `from_dict`.

    in_channels: total channels of the (low, mid, high, highest) tap groups.
    f4, f3, f2, g, f1, f0: fusion widths (each projection's width equals its block's output width).
    decoder_widths: d0 .. d4 widths of the decoder (d0 = the 1x1 conv on f4).
    """

    in_channels: tuple[int, int, int, int]
    f4: int = 2048
    f3: int = 176
    f2: int = 64
    g: int = 64
    f1: int = 40
    f0: int = 24
    decoder_widths: tuple[int, int, int, int, int] = (2048, 1024, 512, 256, 128)
    refine_hidden: int = 128
    gn_groups: int = 8
    sampling_ratio: float = 0.4
    importance_ratio: float = 0.7

    def __post_init__(self) -> None:
        self.in_channels = tuple(int(c) for c in self.in_channels)  # type: ignore[assignment]
        self.decoder_widths = tuple(int(c) for c in self.decoder_widths)  # type: ignore[assignment]
        if len(self.in_channels) != 4 or min(self.in_channels) < 1:
            raise ValueError(
                f"in_channels must be 4 positive ints (low, mid, high, highest): {self.in_channels}"
            )
        if len(self.decoder_widths) != 5 or min(self.decoder_widths) < 1:
            raise ValueError(f"decoder_widths must be 5 positive ints (d0..d4): {self.decoder_widths}")
        widths = (self.f4, self.f3, self.f2, self.g, self.f1, self.f0, self.refine_hidden)
        if min(widths) < 1:
            raise ValueError(f"head widths must be positive: {widths}")
        if not isinstance(self.gn_groups, int) or self.gn_groups < 1:
            raise ValueError(f"gn_groups must be a positive integer, got {self.gn_groups!r}")
        bad = [w for w in self.decoder_widths[1:] if w % self.gn_groups]
        if bad:
            raise ValueError(f"decoder widths {bad} are not divisible by gn_groups={self.gn_groups}")
        if not (0.0 < self.sampling_ratio <= 1.0 and 0.0 <= self.importance_ratio <= 1.0):
            raise ValueError("sampling_ratio must be in (0, 1] and importance_ratio in [0, 1]")

    @classmethod
    def reference(cls) -> HeadConfig:
        """The research widths for SD v1.5 taps."""
        return cls(in_channels=(7680, 7040, 4160, 2560))

    @classmethod
    def small(cls, in_channels: tuple[int, int, int, int], width: int = 16) -> HeadConfig:
        """A scaled-down head for tiny backbones and tests; width must be a multiple of 8."""
        w = width
        return cls(
            in_channels=in_channels,
            f4=4 * w,
            f3=2 * w,
            f2=w,
            g=w,
            f1=w,
            f0=w,
            decoder_widths=(4 * w, 4 * w, 2 * w, 2 * w, w),
            refine_hidden=w,
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["in_channels"] = list(self.in_channels)
        d["decoder_widths"] = list(self.decoder_widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> HeadConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k != "model_type"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown head config keys: {unknown}")
        return cls(**d)


_REFERENCE = HeadConfig.reference()
USAGE_KEYS = ("processing_resolution", "resize_mode", "backbone")


def record_usage(model: ConfigMixin, **usage) -> None:
    """Record how a head is to be used (`USAGE_KEYS`) in its diffusers config, saved with it."""
    unknown = set(usage) - set(USAGE_KEYS)
    if unknown:
        raise ValueError(f"not usage settings: {sorted(unknown)}")
    model.register_to_config(**usage)
    # diffusers lists the init arguments left at their defaults and drops them in from_config:
    # these are no longer defaults.
    d = dict(model._internal_dict)
    d["_use_default_values"] = [k for k in d.get("_use_default_values", []) if k not in usage]
    model._internal_dict = FrozenDict(d)


@dataclass
class HeadOutput:
    """Head prediction.

    normal (B, 3, H, W) unit vectors and kappa (B, 1, H, W) > 0.01 at the requested size.
    coarse (B, 4, H/8, W/8): the 1/8 output [xyz, kappa].
    Training only, one entry per refinement scale (1/4, 1/2, 1): point_preds (B, 4, N_s) the refined
    [xyz, kappa] at the sampled points, point_coords (B, N_s, 2) their (x, y) grid_sample
    coordinates in [-1, 1] (align_corners True).
    """

    normal: Tensor
    kappa: Tensor
    coarse: Tensor | None = None
    point_preds: list[Tensor] = field(default_factory=list)
    point_coords: list[Tensor] = field(default_factory=list)


class NormalHead(ModelMixin, ConfigMixin):
    """Fusion (`fusion`) + decoder (`decoder`): tap groups -> unit normals and kappa. See `forward`.

    A diffusers model: `save_pretrained` writes `config.json` + `diffusion_pytorch_model.safetensors`;
    `from_pretrained` loads that folder (or the older `model.safetensors` name). Besides the widths
    (`HeadConfig`), the config records how to use the head right: `processing_resolution` and
    `resize_mode` it was trained with, and `backbone`, a fingerprint of the backbone whose taps it
    was trained on (`diff2in1.fingerprint`); all three are None until a training run sets them.
    """

    config_name = CONFIG_NAME

    # The width arguments repeat HeadConfig's field names because diffusers' ConfigMixin records a
    # model's config from its __init__ signature; their defaults are HeadConfig's (the one place).
    @register_to_config
    def __init__(
        self,
        in_channels: tuple[int, int, int, int] = _REFERENCE.in_channels,
        f4: int = _REFERENCE.f4,
        f3: int = _REFERENCE.f3,
        f2: int = _REFERENCE.f2,
        g: int = _REFERENCE.g,
        f1: int = _REFERENCE.f1,
        f0: int = _REFERENCE.f0,
        decoder_widths: tuple[int, int, int, int, int] = _REFERENCE.decoder_widths,
        refine_hidden: int = _REFERENCE.refine_hidden,
        gn_groups: int = _REFERENCE.gn_groups,
        sampling_ratio: float = _REFERENCE.sampling_ratio,
        importance_ratio: float = _REFERENCE.importance_ratio,
        processing_resolution: int | list[int] | None = None,
        resize_mode: str | None = None,
        backbone: dict | None = None,
    ) -> None:
        super().__init__()
        args = locals()
        c = HeadConfig(**{f.name: args[f.name] for f in dataclasses.fields(HeadConfig)})
        if resize_mode not in (None, *RESIZE_MODES):
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        self.fusion = FeatureFusion(c.in_channels, c.f4, c.f3, c.f2, c.g, c.f1, c.f0)
        self.decoder = NormalDecoder(
            skip_channels=(c.f4, c.f3, c.f2, c.f1, c.f0),
            widths=c.decoder_widths,
            refine_hidden=c.refine_hidden,
            gn_groups=c.gn_groups,
            sampling_ratio=c.sampling_ratio,
            importance_ratio=c.importance_ratio,
        )

    @classmethod
    def from_head_config(cls, config: HeadConfig, **usage) -> NormalHead:
        """A randomly initialised head of these widths; `usage`: processing_resolution, resize_mode,
        backbone."""
        return cls(**config.to_dict(), **usage)

    def set_usage(self, **usage) -> None:
        """Record processing_resolution / resize_mode / backbone in the config (saved with the head)."""
        record_usage(self, **usage)

    @property
    def widths(self) -> HeadConfig:
        """The widths part of the config as a `HeadConfig`."""
        known = {f.name for f in dataclasses.fields(HeadConfig)}
        return HeadConfig(**{k: v for k, v in self.config.items() if k in known})

    def forward(
        self,
        feats: FeatureGroups,
        image_size: tuple[int, int] | None = None,
        gt_mask: Tensor | None = None,
        point_seeds: list[int] | None = None,
    ) -> HeadOutput:
        """feats: tap groups at L/8, L/4, L/2, L. The native output size is 8x the `highest` size
        (the image size); `image_size` other than that resizes the output (bilinear) and renormalises.
        gt_mask (B, 1, H, W) or (B, H, W), True = valid; used in training to keep invalid pixels out of
        the uncertain points. point_seeds: one seed per image for the random points (training), so an
        image's points do not depend on its batch or process; default: the global RNG."""
        if gt_mask is not None and gt_mask.dim() == 3:
            gt_mask = gt_mask.unsqueeze(1)
        gens = None
        if point_seeds is not None and self.training:  # one generator per image, used at every scale
            gens = [torch.Generator().manual_seed(int(seed)) for seed in point_seeds]
        dec = self.decoder(self.fusion(feats), gt_mask if self.training else None, gens)
        final = dec.final
        renorm = self.training  # unrefined training pixels are interpolated, not unit
        if image_size is not None and tuple(image_size) != tuple(final.shape[-2:]):
            final = F.interpolate(final, size=tuple(image_size), mode="bilinear", align_corners=False)
            renorm = True
        normal, kappa = final[:, :3], final[:, 3:]
        if renorm:
            normal = normal / (torch.linalg.vector_norm(normal, dim=1, keepdim=True) + 1e-10)
        return HeadOutput(normal, kappa, dec.coarse, dec.point_preds, dec.point_coords)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", **kwargs
    ) -> NormalHead:
        """Load a folder written by `save_pretrained`; InputError naming the file on any problem.

        Our own loader rather than diffusers': it checks keys and shapes into one-line errors, accepts
        the older `model.safetensors` name, and never reaches for a hub. `kwargs` from
        `DiffusionPipeline.from_pretrained` are accepted; only `subfolder` is used.
        """
        folder = Path(directory)
        if kwargs.get("subfolder"):
            folder = folder / kwargs["subfolder"]
        cfg_path = folder / CONFIG_NAME
        w_path = next((folder / n for n in WEIGHTS_NAMES if (folder / n).is_file()), None)
        if not cfg_path.is_file() or w_path is None:
            raise InputError(f"{folder}: not a head folder (needs {CONFIG_NAME} and {WEIGHTS_NAMES[0]})")
        try:
            raw = json.loads(cfg_path.read_text())
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            if raw.get("task") not in (None, "normals"):  # a depth or segmentation head's folder
                raise InputError(f"{folder}: a {raw['task']} head, but a normals head is expected here")
            init = {k: v for k, v in raw.items() if not k.startswith("_") and k != "model_type"}
            unknown = sorted(set(init) - set(inspect.signature(cls.__init__).parameters))
            if unknown:
                raise ValueError(f"unknown keys {unknown}")
            with torch.device("meta"):  # every tensor comes from the file: skip the random init
                model = cls(**init)
        except InputError:
            raise
        except (ValueError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
            raise InputError(f"{cfg_path}: not a valid head config ({' '.join(str(e).split())})") from None
        try:
            state = load_file(str(w_path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            detail = " ".join(str(e).split())  # one line for the CLI
            raise InputError(f"{w_path}: not a readable safetensors file ({detail})") from None
        expected = model.state_dict()
        check_state_dict(expected, state, w_path)
        # The head stays float32 whatever `torch_dtype` a pipeline load asks for: it is small, trains
        # with float32 master weights, and runs under autocast next to a bf16/fp16 backbone.
        state = {k: v.to(expected[k].dtype) for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        model.eval()
        return realign_(model.to(device))  # after the move: a move already copies


def check_state_dict(expected: dict[str, Tensor], state: dict[str, Tensor], source: str | Path) -> None:
    """InputError naming `source` if `state` misses/adds keys, differs in shape from `expected`, or
    stores integers where floats are expected (or the reverse)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys {short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {short_list(unexpected)}")
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if shapes:
        problems.append(f"shape mismatches {short_list(shapes)}")
    # A header that declares integers over float data (or the reverse) would load as garbage values.
    kinds = [
        f"{k}: {str(state[k].dtype).removeprefix('torch.')} vs expected {str(v.dtype).removeprefix('torch.')}"
        for k, v in expected.items()
        if k in state and state[k].is_floating_point() != v.is_floating_point()
    ]
    if kinds:
        problems.append(f"stored dtype mismatches {short_list(kinds)}")
    if problems:
        raise InputError(f"{source}: does not match the head ({'; '.join(problems)})")


def short_list(items: list[str], limit: int = 5) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + "]" + more
