"""Inference: the head on the frozen backbone's features, at any input size (SPEC 3, 9).

`NormalPredictor` is the Python API; `predict_files` the `diff2in1 predict` command.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..backbone import Backbone, load_backbone
from ..data.imageio import load_rgb
from ..errors import InputError
from ..heads import NormalHead
from ..viz import normal_to_rgb, save_png, uncertainty_to_rgb
from .loop import mix_seed

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class Prediction:
    """normal (B, 3, H, W) unit vectors, kappa (B, 1, H, W), at the requested output size."""

    normal: torch.Tensor
    kappa: torch.Tensor


def resize_map(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners False) of (B, C, h, w) maps such as kappa; no-op at `size`."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def resize_normals(normal: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, 3, h, w) normals to `size`, renormalised (SPEC 9)."""
    normal = resize_map(normal, size)
    return normal / (torch.linalg.vector_norm(normal, dim=1, keepdim=True) + 1e-10)


class NormalPredictor:
    """Backbone + head in eval mode: images in [-1, 1] -> normals and kappa.

    Images are squashed to `resolution` for the model (as the research code does) and the
    prediction is resized back to each image's own size.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: NormalHead,
        resolution: tuple[int, int] = (512, 512),
        seed: int = 0,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        if resolution[0] % 64 or resolution[1] % 64:
            raise InputError(f"resolution {resolution} must be a multiple of 64 on both sides")
        self.backbone, self.head = backbone, head.to(backbone.device).eval()
        self.resolution, self.seed, self.autocast_dtype = tuple(resolution), seed, autocast_dtype

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
        """images (B, 3, H, W) in [-1, 1] -> Prediction at `out_size` (default: H, W).

        `ids` (one int per image) fix each image's noise, so results do not depend on batching.
        """
        out_size = out_size or tuple(images.shape[-2:])
        x = images.to(self.backbone.device, torch.float32)
        if tuple(x.shape[-2:]) != self.resolution:
            x = F.interpolate(x, size=self.resolution, mode="bilinear", align_corners=False, antialias=True)
        seeds = [mix_seed(self.seed, i) for i in (ids if ids is not None else range(x.shape[0]))]
        dev = self.backbone.device.type
        with torch.autocast(dev, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            feats = self.backbone.perceive(x, seeds=seeds)
            out = self.head(feats.to(torch.float32), image_size=self.resolution)
        normal = resize_normals(out.normal.float(), out_size)
        kappa = resize_map(out.kappa.float(), out_size)
        return Prediction(normal=normal, kappa=kappa)


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files and folders (searched recursively) -> sorted image paths; errors name the input."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"{p}: not an image ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    if not found:
        raise InputError("no images found in " + ", ".join(map(str, inputs)))
    return found


def write_prediction(out_dir: Path, stem: str, normal: np.ndarray, kappa: np.ndarray) -> None:
    """normal (H, W, 3), kappa (H, W) -> <stem>_normal.png, <stem>_normal.npy, <stem>_uncertainty.png."""
    from ..data.imageio import save_npy

    save_png(normal_to_rgb(normal), out_dir / f"{stem}_normal.png")
    save_npy(out_dir / f"{stem}_normal.npy", normal.astype(np.float32))
    save_npy(out_dir / f"{stem}_kappa.npy", kappa.astype(np.float32))
    save_png(uncertainty_to_rgb(kappa), out_dir / f"{stem}_uncertainty.png")


def output_stems(files: list[Path]) -> list[str]:
    """A unique output stem per file: `name`, then `name_1`, `name_2` for repeated names."""
    seen: dict[str, int] = {}
    stems = []
    for f in files:
        stems.append(f.stem if f.stem not in seen else f"{f.stem}_{seen[f.stem]}")
        seen[f.stem] = seen.get(f.stem, 0) + 1
    return stems


def load_for_model(path: Path, resolution: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """An image file -> (3, h, w) in [-1, 1] at the model resolution, and its own (H, W)."""
    a = load_rgb(path)
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 127.5 - 1
    x = F.interpolate(x, size=resolution, mode="bilinear", align_corners=False, antialias=True)[0]
    return x, a.shape[:2]


def predict_files(
    predictor: NormalPredictor,
    inputs: Iterable[str | Path],
    out: str | Path,
    batch_size: int = 4,
    progress: bool = True,
) -> list[Path]:
    """Predict every image under `inputs`; writes colour normals, float .npy and uncertainty.

    Under a launcher with N processes, process r takes every N-th image (same outputs).
    """
    from ..distributed import rank_world

    rank, world = rank_world()
    files = collect_images(inputs)
    stems = output_stems(files)
    mine = list(range(rank, len(files), world))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(mine), desc="predict", unit="img", disable=not progress)
    for start in range(0, len(mine), batch_size):
        chunk = mine[start : start + batch_size]
        loaded = [load_for_model(files[i], predictor.resolution) for i in chunk]
        pred = predictor(torch.stack([x for x, _ in loaded]), out_size=predictor.resolution, ids=chunk)
        for i, (_, size), n, k in zip(chunk, loaded, pred.normal, pred.kappa, strict=True):
            n = resize_normals(n[None], size)[0].permute(1, 2, 0).cpu().numpy()
            k = resize_map(k[None], size)[0, 0].cpu().numpy()
            write_prediction(out_dir, stems[i], n, k)
        bar.update(len(chunk))
    bar.close()
    return files
