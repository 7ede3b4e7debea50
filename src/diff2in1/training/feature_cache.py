"""Optional cache of each training image's UNet taps (warm-up stage).

The backbone is frozen, so an image's taps change between epochs only through the random
VAE posterior sample and the t=0 noise. Caching fixes both per image (drawn once from
(seed, image index)) and skips the VAE encoder and the UNet after the first epoch. That is the
whole difference to the default; it is a choice (`--feature-cache memory|disk`), not the default.
Taps are stored in bf16: about 34 MB per 512x512 image for SD v1.5, so "disk" suits NYUv2.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..taps import GROUPS, TapFeatures


class FeatureCache:
    """Taps by dataset index, in memory or as one safetensors file per image under `folder`."""

    def __init__(self, kind: str, folder: str | Path | None = None) -> None:
        if kind not in ("memory", "disk"):
            raise ValueError(f"feature cache kind must be memory or disk, got {kind!r}")
        if kind == "disk" and folder is None:
            raise ValueError("a disk feature cache needs a folder")
        self.kind, self.folder = kind, Path(folder) if folder else None
        self._memory: dict[int, dict[str, torch.Tensor]] = {}

    def _path(self, index: int) -> Path:
        return self.folder / f"{index:07d}.safetensors"

    def get(self, index: int) -> dict[str, torch.Tensor] | None:
        if self.kind == "memory":
            return self._memory.get(index)
        path = self._path(index)
        return load_file(path) if path.exists() else None

    def put(self, index: int, groups: dict[str, torch.Tensor]) -> None:
        groups = {g: t.detach().to("cpu", torch.bfloat16).contiguous() for g, t in groups.items()}
        if self.kind == "memory":
            self._memory[index] = groups
            return
        from ..atomic import atomic_path

        with atomic_path(self._path(index)) as tmp:
            save_file(groups, tmp)

    def features(self, indices: list[int], compute) -> TapFeatures:
        """Taps for a batch: cached ones loaded, the others computed by `compute(missing)` (a list
        of positions in `indices`, returning TapFeatures for them) and stored. float32 out."""
        found = {i: self.get(idx) for i, idx in enumerate(indices)}
        missing = [i for i, v in found.items() if v is None]
        if missing:
            fresh = compute(missing)
            for k, i in enumerate(missing):
                found[i] = {g: getattr(fresh, g)[k] for g in GROUPS}
                self.put(indices[i], found[i])
        return TapFeatures(*(torch.stack([found[i][g] for i in range(len(indices))]).float() for g in GROUPS))


class PosteriorCache:
    """Each training image's VAE posterior (mean, std), kept in memory after its first use.

    The VAE encoder costs more FLOPs than the UNet pass; the posterior of an image never changes
    (the backbone is frozen and images are not augmented), so caching it changes no result: the
    posterior sample and the t=0 noise are still drawn fresh every step. About 128 KiB per
    512x512 image.
    """

    def __init__(self) -> None:
        self._store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(
        self, backbone, images: torch.Tensor, indices: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for k, i in enumerate(indices):
            if i not in self._store:
                # One image at a time: a kernel's rounding may depend on the batch size, and an
                # image's cached posterior must not depend on which batch first met it (a resumed
                # run meets it in another batch).
                mean, std = backbone.posterior(images[k : k + 1])
                self._store[i] = (mean[0].to("cpu"), std[0].to("cpu"))
        mean = torch.stack([self._store[i][0] for i in indices]).to(backbone.device)
        std = torch.stack([self._store[i][1] for i in indices]).to(backbone.device)
        return mean, std
