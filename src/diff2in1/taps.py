"""The 25 UNet feature taps of docs/method.md section 2, as forward hooks owned by a
`FeatureTaps` object.

No global state: each `FeatureTaps` holds its own hooks and its own buffer of captured maps,
and only captures inside `with taps.capture():`, so plain UNet calls (DDIM steps whose
features are not needed) pay nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

GROUPS = ("low", "mid", "high", "highest")
# Spatial downscale of each group relative to the latent: low = L/8 ... highest = L.
GROUP_SCALE = {"low": 8, "mid": 4, "high": 2, "highest": 1}


@dataclass(frozen=True)
class Tap:
    """One tapped module: where it is, what it gives, which group it feeds."""

    path: str  # module path inside UNet2DConditionModel
    channels: int
    scale: int  # output size = latent size / scale
    group: str


@dataclass
class TapFeatures:
    """The 25 maps grouped by resolution, each group concatenated on channels in tap order.

    low (B, C_low, L/8, L/8), mid (B, C_mid, L/4, L/4), high (B, C_high, L/2, L/2),
    highest (B, C_highest, L, L); L is the latent size (image size / 8).
    """

    low: torch.Tensor
    mid: torch.Tensor
    high: torch.Tensor
    highest: torch.Tensor

    def to(self, *args, **kwargs) -> TapFeatures:
        return TapFeatures(*(getattr(self, g).to(*args, **kwargs) for g in GROUPS))

    def detach(self) -> TapFeatures:
        return TapFeatures(*(getattr(self, g).detach() for g in GROUPS))

    def index(self, idx: torch.Tensor | slice | int) -> TapFeatures:
        """Select batch entries (keeps the batch dimension for an int)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return TapFeatures(*(getattr(self, g)[idx] for g in GROUPS))

    @staticmethod
    def cat(parts: list[TapFeatures]) -> TapFeatures:
        return TapFeatures(*(torch.cat([getattr(p, g) for p in parts]) for g in GROUPS))


def tap_layout(unet_config: dict) -> list[Tap]:
    """The tap list of docs/method.md section 2 for a UNet2DConditionModel config (any 4-level
    UNet).

    Input side: conv_in, every layer of every down block (its attention if it has one, else
    its resnet), every downsampler; the middle block; output side: every layer of every up
    block, the upsampler folded into the block's last layer.
    """
    channels = list(unet_config["block_out_channels"])
    if len(channels) != 4:
        raise ValueError(f"feature taps need a 4-level UNet, got block_out_channels={channels}")
    layers = unet_config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError("feature taps need an integer layers_per_block")
    down_types, up_types = unet_config["down_block_types"], unet_config["up_block_types"]
    taps: list[tuple[str, int, int]] = [("conv_in", channels[0], 1)]
    for i, kind in enumerate(down_types):
        sub = "attentions" if "CrossAttn" in kind else "resnets"
        taps += [(f"down_blocks.{i}.{sub}.{j}", channels[i], 2**i) for j in range(layers)]
        if i < len(down_types) - 1:
            taps.append((f"down_blocks.{i}.downsamplers.0", channels[i], 2 ** (i + 1)))
    taps.append(("mid_block", channels[-1], 2 ** (len(channels) - 1)))
    rev = channels[::-1]
    for i, kind in enumerate(up_types):
        sub = "attentions" if "CrossAttn" in kind else "resnets"
        scale = 2 ** (len(channels) - 1 - i)
        for j in range(layers + 1):
            last = j == layers
            if last and i < len(up_types) - 1:
                taps.append((f"up_blocks.{i}.upsamplers.0", rev[i], scale // 2))
            else:
                taps.append((f"up_blocks.{i}.{sub}.{j}", rev[i], scale))
    group_of = {s: g for g, s in GROUP_SCALE.items()}
    return [Tap(p, c, s, group_of[s]) for p, c, s in taps]


def group_channels(layout: list[Tap]) -> dict[str, int]:
    """Total channels per group, the numbers a head sizes itself from."""
    return {g: sum(t.channels for t in layout if t.group == g) for g in GROUPS}


class FeatureTaps:
    """Forward hooks on the tapped UNet modules; captures only inside `capture()`."""

    def __init__(self, unet: nn.Module) -> None:
        self.layout = tap_layout(dict(unet.config))
        self.channels = group_channels(self.layout)
        self._maps: dict[str, torch.Tensor] = {}
        self._active = False
        modules = dict(unet.named_modules())
        missing = [t.path for t in self.layout if t.path not in modules]
        if missing:
            raise ValueError(f"UNet has no module(s) {missing}: not an SD-style UNet")
        self._handles = [modules[t.path].register_forward_hook(self._hook(t.path)) for t in self.layout]

    def _hook(self, path: str):
        def hook(_module: nn.Module, _inputs: tuple, output) -> None:
            if self._active:
                # Transformer2DModel returns an output object / tuple; the map is its first field.
                if not isinstance(output, torch.Tensor):
                    output = output[0] if isinstance(output, tuple) else output.sample
                self._maps[path] = output

        return hook

    @contextlib.contextmanager
    def capture(self) -> Iterator[dict[str, torch.Tensor]]:
        """Inside the block, UNet forwards record the tapped maps (last forward wins)."""
        self._maps = {}
        self._active = True
        try:
            yield self._maps
        finally:
            self._active = False

    def collect(self, maps: dict[str, torch.Tensor] | None = None) -> TapFeatures:
        """Group the captured maps into `TapFeatures` and release them."""
        maps = self._maps if maps is None else maps
        missing = [t.path for t in self.layout if t.path not in maps]
        if missing:
            raise RuntimeError(f"no UNet forward was captured for taps {missing[:3]}")
        grouped = {g: torch.cat([maps[t.path] for t in self.layout if t.group == g], dim=1) for g in GROUPS}
        self._maps = {}
        return TapFeatures(**grouped)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
