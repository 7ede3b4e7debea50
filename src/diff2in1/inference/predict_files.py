"""`diff2in1 predict`: the pipeline over image files and folders, writing pictures and arrays.

Per input `<stem>`, for a normal head: `<stem>_normal.png` (8-bit colour picture),
`<stem>_normal16.png` (16-bit, (n + 1) / 2 * 65535), `<stem>_normal.npy` (float32 H x W x 3),
`<stem>_kappa.npy` (float32 H x W) and `<stem>_uncertainty.png` (expected angular error with a
colour bar in degrees, one scale for the whole run), and once per folder `normal_key.png`,
the colour key of the normal maps. For a depth head: `<stem>_depth.npy` (float32 H x W metres),
`<stem>_depth16.png` (16-bit millimetres, clipped at 65.535 m), `<stem>_depth.png` (colours with a
colour bar in metres), `<stem>_depth_uncertainty.npy` (float32 H x W, expected absolute error in
metres). For a segmentation head: `<stem>_classes.png` (8-bit class ids) and
`<stem>_segmentation.png` (colours with a legend of class names). With a point cloud asked for
(depth head needed): `<stem>.ply` (position, normal when there is a normal head, colour; see
`point_cloud.py`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..path_overlap import refuse_overlap
from ..regular_file import check_regular_file
from .image_processor import Diff2in1ImageProcessor
from .pipeline import Diff2in1Pipeline
from .point_cloud import Intrinsics, point_cloud, write_ply

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
OUTPUT_SUFFIXES = ("_normal.png", "_normal16.png", "_uncertainty.png")


def is_prediction_file(name: str) -> bool:
    """Whether `name` is one of the files `predict` writes per input (see the module docstring)."""
    return name.endswith((*OUTPUT_SUFFIXES, "_normal.npy", "_kappa.npy"))


@dataclass
class PredictResult:
    """What `predict_files` wrote and what it left out (path, one-line reason)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def collect_images(inputs: Iterable[str | Path], out: str | Path | None = None) -> list[Path]:
    """Files and folders (searched recursively, suffixes in any case) -> sorted image paths.

    InputError for a missing input, a non-image file, no images at all, or an `out` folder inside an
    input folder or equal to it (outputs never mix with inputs; a second run would read them back).
    """
    inputs = [Path(i) for i in inputs]
    if out is not None:
        refuse_overlap(out, inputs=[str(p) for p in inputs])
    found: list[Path] = []
    for p in inputs:
        if p.is_dir():
            # Not only regular files: a FIFO or socket named like an image is named when read.
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and not f.is_dir())
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"{p}: not an image ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found.append(p)
        elif p.is_symlink() or p.exists():
            check_regular_file(p)  # a broken link or a special file: one line naming it
        else:
            raise InputError(f"{p}: no such file or folder")
    if not found:
        raise InputError("no images found in " + ", ".join(map(str, inputs)))
    return found


def check_images(files: list[Path]) -> None:
    """Read each file's header (no pixels): a special file, an image over the pixel limit
    (limits.py) or an unreadable one is refused before any model loads."""
    from ..imaging.files import png_header

    for f in files:
        png_header(f)


def output_stems(files: list[Path]) -> list[str]:
    """A unique output stem per file: `name`, then `name_1`, `name_2` for repeated names."""
    seen: dict[str, int] = {}
    stems = []
    for f in files:
        stems.append(f.stem if f.stem not in seen else f"{f.stem}_{seen[f.stem]}")
        seen[f.stem] = seen.get(f.stem, 0) + 1
    return stems


def predict_files(
    pipe: Diff2in1Pipeline,
    inputs: Iterable[str | Path],
    out: str | Path,
    processing_resolution: int | None = None,
    resize_mode: str | None = None,
    ensemble_size: int = 1,
    batch_size: int = 1,
    seed: int = 0,
    skip_bad_files: bool = False,
    progress: bool = True,
    uncertainty_max: float | None = None,
    point_clouds: bool = False,
    intrinsics: Intrinsics | None = None,
    fov: float | None = None,
) -> PredictResult:
    """Predict every image under `inputs` into `out` (see the module docstring for the files).

    Every task the pipeline has a head for is predicted from one backbone pass. `point_clouds`:
    a PLY per image from its depth (the pipeline needs a depth head), with the camera's
    `intrinsics` (pixels of the image as given), else a horizontal field of view `fov` in degrees,
    else NYUv2's camera scaled to the image.

    Each image's result depends only on the image and the settings, not on its place in the list.
    With `skip_bad_files`, a file that cannot be read is listed in `skipped` instead of stopping the
    run. Under a launcher with N processes, process r takes every N-th image. Every uncertainty
    picture shares one colour scale, 0 to `uncertainty_max` degrees (default
    `viz.UNCERTAINTY_MAX_DEG`); `normal_key.png` is the colour key of the normal maps.
    """
    from ..distributed import rank_world

    rank, world = rank_world()
    if point_clouds and "depth" not in pipe.tasks:
        have = ", ".join(pipe.tasks)
        raise InputError(f"--point-cloud: needs a depth head (this pipeline has: {have})")
    files = collect_images(inputs, out)
    stems = output_stems(files)
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = pipe.image_processor
    result = PredictResult()
    if rank == 0 and "normals" in pipe.tasks:
        from ..viz import normal_key, save_png

        save_png(normal_key(), out_dir / "normal_key.png")
    mine = list(range(rank, len(files), world))
    bar = tqdm(total=len(mine), desc="predict", unit="img", disable=not progress)
    for start in range(0, len(mine), batch_size):
        chunk, images = [], []
        for i in mine[start : start + batch_size]:
            try:
                images += proc.load(files[i])
                chunk.append(i)
            except InputError as e:
                if not skip_bad_files:
                    raise
                result.skipped.append((files[i], str(e)))
        if images:
            pred = pipe(
                images,
                processing_resolution=processing_resolution,
                resize_mode=resize_mode,
                ensemble_size=ensemble_size,
                batch_size=batch_size,
                generator=torch.Generator().manual_seed(seed),
                output_type="np",
                show_progress_bar=False,
            )
            for j, i in enumerate(chunk):
                arrays = {
                    k: np.asarray(getattr(pred, k)[j])
                    for k in ("normals", "kappa", "depth", "depth_uncertainty", "classes")
                    if getattr(pred, k) is not None
                }
                if not all(np.isfinite(a).all() for a in arrays.values()):
                    raise InputError(
                        f"{files[i]}: the prediction is not finite (NaN): check the head's weights"
                    )
                if "normals" in arrays:
                    normal, kappa = arrays["normals"], arrays["kappa"][..., 0]
                    write_prediction(pipe, out_dir, stems[i], normal, kappa, uncertainty_max)
                if "depth" in arrays:
                    unc = arrays["depth_uncertainty"][..., 0]
                    write_depth(out_dir, stems[i], arrays["depth"][..., 0], unc)
                if "classes" in arrays:
                    write_classes(pipe, out_dir, stems[i], arrays["classes"])
                if point_clouds:
                    image = proc.load(files[i])[0]  # (3, H, W) in [-1, 1]
                    rgb = ((image.permute(1, 2, 0).numpy() + 1.0) / 2.0).clip(0.0, 1.0)
                    depth = arrays["depth"][..., 0]
                    h, w = depth.shape
                    cam = intrinsics or (Intrinsics.from_fov(h, w, fov) if fov else Intrinsics.nyu(h, w))
                    cloud = point_cloud(depth, arrays.get("normals"), rgb, cam)
                    write_ply(out_dir / f"{stems[i]}.ply", cloud)
                result.written.append(files[i])
        bar.update(len(mine[start : start + batch_size]))
    bar.close()
    return result


def write_prediction(
    pipe: Diff2in1Pipeline,
    out_dir: Path,
    stem: str,
    normal: np.ndarray,
    kappa: np.ndarray,
    uncertainty_max: float | None = None,
) -> None:
    """normal (H, W, 3), kappa (H, W) -> the five files of the module docstring, each atomically."""
    from ..viz import save_png

    proc = pipe.image_processor
    save_png(proc.visualize_normals(normal)[0], out_dir / f"{stem}_normal.png")
    proc.export_normals_16bit_png(normal, out_dir / f"{stem}_normal16.png")
    proc.export_npy(normal.astype(np.float32), out_dir / f"{stem}_normal.npy")
    proc.export_npy(kappa.astype(np.float32), out_dir / f"{stem}_kappa.npy")
    unc = proc.visualize_uncertainty(kappa, vmax_deg=uncertainty_max)[0]
    save_png(unc, out_dir / f"{stem}_uncertainty.png")


def write_depth(out_dir: Path, stem: str, depth: np.ndarray, uncertainty: np.ndarray) -> None:
    """depth and its uncertainty (H, W) metres -> `<stem>_depth.npy`, `_depth16.png`, `_depth.png`,
    `_depth_uncertainty.npy`, each atomically."""
    from PIL import Image

    from ..atomic import atomic_path
    from ..viz import save_png
    from ..viz_tasks import depth_picture

    Diff2in1ImageProcessor.export_npy(depth.astype(np.float32), out_dir / f"{stem}_depth.npy")
    mm = np.clip(np.rint(np.nan_to_num(depth, nan=0.0) * 1000.0), 0, 65535).astype(np.uint16)
    with atomic_path(out_dir / f"{stem}_depth16.png") as tmp:
        Image.fromarray(mm).save(tmp, format="PNG")
    save_png(depth_picture(depth), out_dir / f"{stem}_depth.png")
    Diff2in1ImageProcessor.export_npy(
        uncertainty.astype(np.float32), out_dir / f"{stem}_depth_uncertainty.npy"
    )


def write_classes(pipe: Diff2in1Pipeline, out_dir: Path, stem: str, classes: np.ndarray) -> None:
    """class ids (H, W) -> `<stem>_classes.png` (8-bit ids) and `<stem>_segmentation.png` (legend)."""
    from ..viz import save_png
    from ..viz_tasks import segmentation_picture

    save_png(classes.astype(np.uint8), out_dir / f"{stem}_classes.png")
    picture = segmentation_picture(classes, pipe.segmentation_head.class_list())
    save_png(picture, out_dir / f"{stem}_segmentation.png")
