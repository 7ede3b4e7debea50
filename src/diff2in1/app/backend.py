"""What the web page runs, without gradio: loading the model, reading uploads, the two jobs.

`AppBackend` wraps a `Diff2in1Pipeline`. `normals(paths, ...)` predicts each upload (every task
the pipeline has a head for: normals, depth, segmentation) and writes the pictures and downloads
into a per-request folder of its work folder; `create(path, ...)` makes a new image and its labels
(every head's, from the same last DDIM step). A user's mistake (not an image, too large, an empty
file, a DDIM step count the scheduler cannot take) is an `InputError` with a one-line message,
which the page shows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..backbone import _stride_ok, ddim_inference_steps
from ..errors import InputError
from ..imaging.files import read_image_float
from ..inference.image_processor import RESIZE_MODES, resize_image
from ..inference.pipeline import Diff2in1Pipeline
from ..inference.pipeline_loading import load_pipeline
from .heap import trims_heap

DEMO_BACKBONE = "tiny-scenes"
DEMO_RESOLUTION = 128
DEMO_LR = 3e-3  # 60 steps: about 33 deg mean error on held-out scenes (1e-3: 51 deg)
DEMO_TRAIN_STEPS = None  # None: the shipped demo head; N > 0: train a fresh one N steps; 0: untrained
MAX_IMAGES = 16  # uploads per Normals request
MAX_STEP_CHOICES = 100  # DDIM step counts offered on the page
KEEP_REQUESTS = 16  # request folders kept in the work folder (older ones are deleted)

Progress = Callable[[int, int, str], None]  # (done, total, what)


@dataclass
class TaskPictures:
    """The pictures of the depth and segmentation heads (None for a task without a head)."""

    depth: Path | None = None  # colour depth map with a colour bar in metres
    depth_uncertainty: Path | None = None  # expected absolute error in metres, colour bar
    segmentation: Path | None = None  # colour class map with a legend of class names


@dataclass
class NormalsItem:
    """One upload's results: picture paths at the upload's size and the download files."""

    name: str
    image: Path  # the upload as an 8-bit RGB PNG (EXIF orientation applied)
    normals: Path | None  # colour normal map (PNG); None without a normal head
    uncertainty: Path | None  # expected angular error in degrees with a colour bar (PNG)
    downloads: list[Path]  # <stem>_normal16.png, <stem>_normal.npy, <stem>_uncertainty_deg.npy;
    # with a depth head also <stem>_depth.npy, <stem>_depth_uncertainty.npy, <stem>.ply; with a
    # segmentation head <stem>_classes.png
    size: tuple[int, int]  # (width, height)
    tasks: TaskPictures = field(default_factory=TaskPictures)


@dataclass
class NormalsResult:
    items: list[NormalsItem] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one line per upload that was left out
    seconds: float = 0.0


@dataclass
class CreateResult:
    source: Path  # the upload squashed to the model size (what the DDIM run started from)
    image: Path  # the new image
    normals: Path
    uncertainty: Path
    downloads: list[Path]
    seconds: float = 0.0
    tasks: TaskPictures = field(default_factory=TaskPictures)  # the other heads' labels
    upload_size: tuple[int, int] = (0, 0)  # (width, height) of the upload
    model_size: tuple[int, int] = (0, 0)  # (width, height) it was squashed to, that of the new image

    def squash_note(self) -> str:
        """A sentence saying the upload was squashed to the model size, or "" if nothing changed."""
        (w, h), (mw, mh) = self.upload_size, self.model_size
        if (w, h) == (mw, mh):
            return ""
        what = "squashed" if w * mh != h * mw else "resized"
        return f"The {w}x{h} upload was {what} to the model's {mw}x{mh}, the size of the new image."


def demo_pipeline(
    train_steps: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[Diff2in1Pipeline, str]:
    """The shipped tiny-scenes backbone with a small head, offline, and a note saying what it is.

    train_steps=None: the demo head shipped in the package (`scripts/train_demo_head.py`);
    0: an untrained (seeded) head; N > 0: a head trained N warm-up steps (float32) on 32
    procedural scenes at 128 px in a temporary folder, deleted afterwards.
    """
    from ..backbone import load_backbone
    from ..heads import build_head

    device = torch.device(device)
    if train_steps is None:
        if log:
            log("no weights given: the shipped demo weights (tiny-scenes + its head; procedural scenes only)")
        note = (
            "**Demo weights.** No model was given, so this page runs the shipped `tiny-scenes` backbone "
            "with its small demo head, trained on procedural rooms at 128 px: expect rough normals on "
            "such scenes and nothing useful on real photos. Start it with `--pipeline DIR` or "
            "`--backbone B --head H` for real results."
        )
        return Diff2in1Pipeline.from_pretrained(DEMO_BACKBONE, dtype=dtype).to(device), note
    if train_steps <= 0:
        backbone = load_backbone(DEMO_BACKBONE, device=device, dtype=dtype)
        torch.manual_seed(seed)
        head = build_head("small", backbone, DEMO_RESOLUTION)
        note = (
            "**Demo weights.** No model was given, so this page runs the shipped `tiny-scenes` backbone "
            "(trained on procedural rooms) with a small **untrained** normal head: the normals and "
            "uncertainties are not meaningful. Start it with `--pipeline DIR` or `--backbone B --head H` "
            "for real results."
        )
        return Diff2in1Pipeline.from_backbone(backbone, head.to(device)), note
    from ..config import WarmupConfig
    from ..data.scenes import make_scenes
    from ..heads import NormalHead
    from ..stages.warmup import train_warmup

    backbone = load_backbone(DEMO_BACKBONE, device=device)
    with tempfile.TemporaryDirectory(prefix="diff2in1-demo-head-") as tmp:
        if log:
            log(
                f"no weights given: training a demo head for {train_steps} steps on procedural scenes "
                "(about 0.5 s a step on a CPU core; --demo-steps 0 skips it)"
            )
        make_scenes(Path(tmp) / "data", 32, 0, size=DEMO_RESOLUTION, seed=seed, progress=False)
        cfg = WarmupConfig(
            data=str(Path(tmp) / "data"),
            backbone=DEMO_BACKBONE,
            out=str(Path(tmp) / "run"),
            head="small",
            resolution=(DEMO_RESOLUTION, DEMO_RESOLUTION),
            batch_size=8,
            lr=DEMO_LR,
            seed=seed,
            epochs=10**6,
            max_steps=train_steps,
            checkpoint_every=0,
            num_workers=0,
            progress=False,
            device="cpu" if device.type == "cpu" else "auto",
        )
        result = train_warmup(cfg, False, backbone)
        head = NormalHead.from_pretrained(result.outputs["head"])
    if dtype != torch.float32 or backbone.device != device:
        backbone = load_backbone(DEMO_BACKBONE, device=device, dtype=dtype)
    note = (
        "**Demo weights.** No model was given, so this page runs the shipped `tiny-scenes` backbone "
        f"with a small normal head trained for only {result.steps} steps on procedural rooms at "
        f"{DEMO_RESOLUTION} px: expect rough normals, and nothing useful on real photos. Start it "
        "with `--pipeline DIR` or `--backbone B --head H` for real results."
    )
    return Diff2in1Pipeline.from_backbone(backbone, head.to(device)), note


def open_pipeline(
    pipeline: str | None = None,
    backbone: str | None = None,
    head: str | list[str] | None = None,
    device: str = "auto",
    mixed_precision: str = "no",
    demo_train_steps: int | None = DEMO_TRAIN_STEPS,
    log: Callable[[str], None] | None = None,
) -> tuple[Diff2in1Pipeline, str | None, str]:
    """The page's model: a pipeline folder, a backbone + head (or a list of heads, one per task), or
    (none given) the demo weights. Returns the pipeline, the demo note (None for the user's own
    weights) and a line naming the source."""
    from ..backbone import weights_dtype
    from ..devices import resolve_device

    dev = resolve_device(device)
    dtype = weights_dtype(mixed_precision)
    if isinstance(head, (list, tuple)) and len(head) == 1:
        head = head[0]
    if pipeline is None and backbone is None and not head:
        pipe, note = demo_pipeline(demo_train_steps, dev, dtype, log=log)
        return pipe, note, f"the shipped `{DEMO_BACKBONE}` backbone with a demo head"
    if pipeline is None and (backbone is None or not head):
        raise InputError("give --pipeline DIR, or both --backbone and --head (or nothing, for the demo)")
    if isinstance(head, (list, tuple)):
        heads = ", ".join(f"`{h}`" for h in head)
        what = f"pipeline `{pipeline}`" if pipeline else f"backbone `{backbone}` with heads {heads}"
    else:
        what = f"pipeline `{pipeline}`" if pipeline else f"backbone `{backbone}` with head `{head}`"
    return load_pipeline(pipeline, backbone, head, dev, dtype), None, what


def valid_step_counts(num_train_timesteps: int, t_start: int, limit: int = MAX_STEP_CHOICES) -> list[int]:
    """DDIM step counts below `t_start` the scheduler can take (see `ddim_inference_steps`)."""
    t_start = int(t_start)
    return [s for s in range(1, min(t_start, limit) + 1) if _stride_ok(num_train_timesteps, t_start // s)]


def _stem(name: str) -> str:
    stem = Path(name).stem or "image"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80]


def _save_png(img: Image.Image, path: Path) -> Path:
    img.save(path, format="PNG", compress_level=1)
    return path


def _rgb_picture(x: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> 8-bit RGB picture."""
    arr = ((x.permute(1, 2, 0).float().numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _first(field_value) -> np.ndarray | None:
    """The first image's array of a pipeline output field ("np"), or None for a task without a head."""
    return None if field_value is None else np.asarray(field_value[0])


def _check_finite(name: str, arrays: list[np.ndarray | None]) -> None:
    if not all(np.isfinite(a).all() for a in arrays if a is not None):
        raise InputError(f"{name}: the prediction is not finite (NaN): check the head's weights")


def write_task_files(
    pipe: Diff2in1Pipeline,
    out_dir: Path,
    stem: str,
    depth: np.ndarray | None,
    depth_uncertainty: np.ndarray | None,
    classes: np.ndarray | None,
    normals: np.ndarray | None = None,
    rgb: Image.Image | None = None,
) -> tuple[TaskPictures, list[Path]]:
    """The depth and segmentation pictures and downloads of one image (depth (H, W) metres, its
    uncertainty (H, W) metres, class ids (H, W)). With depth: `<stem>_depth.png` (colour bar in
    metres), `<stem>_depth_uncertainty.png`, downloads `<stem>_depth.npy`,
    `<stem>_depth_uncertainty.npy` and `<stem>.ply` (the point cloud with the default intrinsics,
    NYUv2's camera scaled to the image: position, normal when given, colour of `rgb`). With classes:
    `<stem>_segmentation.png` (legend), download `<stem>_classes.png` (8-bit class ids)."""
    from ..inference.point_cloud import Intrinsics, point_cloud, write_ply
    from ..viz_tasks import depth_picture, segmentation_picture

    pictures, downloads = TaskPictures(), []
    proc = pipe.image_processor
    if depth is not None:
        pictures.depth = _save_png(depth_picture(depth), out_dir / f"{stem}_depth.png")
        pictures.depth_uncertainty = _save_png(
            depth_picture(depth_uncertainty), out_dir / f"{stem}_depth_uncertainty.png"
        )
        downloads.append(proc.export_npy(depth.astype(np.float32), out_dir / f"{stem}_depth.npy"))
        downloads.append(
            proc.export_npy(depth_uncertainty.astype(np.float32), out_dir / f"{stem}_depth_uncertainty.npy")
        )
        h, w = depth.shape
        colours = np.asarray(rgb.convert("RGB")) if rgb is not None else None
        cloud = point_cloud(depth, normals, colours, Intrinsics.nyu(h, w))
        write_ply(out_dir / f"{stem}.ply", cloud)
        downloads.append(out_dir / f"{stem}.ply")
    if classes is not None:
        class_list = pipe.segmentation_head.class_list()
        pictures.segmentation = _save_png(
            segmentation_picture(classes, class_list), out_dir / f"{stem}_segmentation.png"
        )
        ids = Image.fromarray(classes.astype(np.uint8))
        downloads.append(_save_png(ids, out_dir / f"{stem}_classes.png"))
    return pictures, downloads


class AppBackend:
    """The jobs of the web page on one pipeline; pictures go to `workdir` (a temp folder by default)."""

    def __init__(
        self,
        pipe: Diff2in1Pipeline,
        demo_note: str | None = None,
        workdir: str | os.PathLike | None = None,
        max_images: int = MAX_IMAGES,
        source: str = "",
    ) -> None:
        self.pipe = pipe
        self.demo_note = demo_note
        self.source = source or str(pipe.backbone.source)
        self.max_images = max_images
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="diff2in1-app-"))
        self.workdir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ settings
    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks the pipeline has a head for (normals, depth, segmentation)."""
        return self.pipe.tasks

    @property
    def head_resolution(self) -> int | list[int] | None:
        return self.pipe.primary_head.config.processing_resolution

    @property
    def head_resize_mode(self) -> str:
        return self.pipe.primary_head.config.resize_mode or "squash"

    @property
    def num_train_timesteps(self) -> int:
        return int(self.pipe.scheduler.config.num_train_timesteps)

    def step_choices(self, t_start: int) -> list[int]:
        return valid_step_counts(self.num_train_timesteps, t_start)

    def describe(self) -> str:
        """One line about the model the page runs."""
        res = self.head_resolution
        res_txt = "x".join(map(str, res)) if isinstance(res, (list, tuple)) else str(res or 512)
        dev = self.pipe.unet.device
        line = (
            f"Model: {self.source} on {dev} ({str(self.pipe.unet.dtype).removeprefix('torch.')}), "
            f"head trained at {res_txt} px ({self.head_resize_mode})."
        )
        if self.tasks != ("normals",):
            line += f" Tasks: {', '.join(self.tasks)}."
        return line

    def normal_key(self) -> Path:
        """The colour key of the normal maps as a PNG in the work folder (made once)."""
        from ..viz import normal_key, save_png

        path = self.workdir / "normal_key.png"
        if not path.exists():
            save_png(normal_key(140), path)
        return path

    # ------------------------------------------------------------------ uploads
    def read_upload(self, path: str | os.PathLike, name: str | None = None) -> torch.Tensor:
        """An uploaded file -> (3, H, W) in [-1, 1]; InputError with a one-line message naming it."""
        name = name or Path(path).name
        try:
            size = os.path.getsize(path)
        except OSError:
            raise InputError(f"{name}: the upload is missing on the server (upload it again)") from None
        if size == 0:
            raise InputError(f"{name}: empty file (0 bytes), not an image")
        try:
            arr = read_image_float(
                path, max_pixels=self.pipe.image_processor.max_pixels, exif_transpose=True, name=name
            )
        except InputError as e:
            msg = str(e).replace(str(path), name).splitlines()[0]
            if "cannot decode image" in msg:
                msg = f"{name}: not an image this page can read (PNG, JPEG, TIFF, WebP, BMP, ...)"
            raise InputError(msg) from None
        if 0 in arr.shape[:2]:
            raise InputError(f"{name}: empty image ({arr.shape[1]}x{arr.shape[0]} pixels)")
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous() * 2.0 - 1.0

    def _request_dir(self) -> Path:
        folders = sorted(
            (p for p in self.workdir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
        )
        for old in folders[KEEP_REQUESTS - 1 :]:
            shutil.rmtree(old, ignore_errors=True)
        d = self.workdir / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        d.mkdir()
        return d

    # ------------------------------------------------------------------ perception
    @trims_heap  # the server's size stays flat over requests (heap.py)
    def normals(
        self,
        paths: list[str | os.PathLike],
        processing_resolution: int | None = None,
        resize_mode: str | None = None,
        ensemble_size: int = 1,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> NormalsResult:
        """Normals + uncertainty of each upload, and depth / classes where the pipeline has those
        heads (one backbone pass). Unreadable uploads are left out with a message; InputError if
        none is left or a setting is wrong."""
        t0 = time.perf_counter()
        paths = [p for p in (paths or []) if p]
        if not paths:
            raise InputError("upload one or more images first")
        if len(paths) > self.max_images:
            raise InputError(
                f"{len(paths)} files uploaded; this page takes at most {self.max_images} at once"
            )
        if resize_mode is not None and resize_mode not in RESIZE_MODES:
            raise InputError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {resize_mode!r}")
        ensemble_size = int(ensemble_size)
        self.pipe.check_inputs(processing_resolution or None, resize_mode, ensemble_size, 1, "np")
        result = NormalsResult()
        loaded: list[tuple[str, torch.Tensor]] = []
        for p in paths:
            name = Path(p).name
            try:
                loaded.append((name, self.read_upload(p, name)))
            except InputError as e:
                result.errors.append(str(e))
        if not loaded:
            raise InputError("; ".join(result.errors))
        out_dir = self._request_dir()
        used: set[str] = set()
        for i, (name, x) in enumerate(loaded):
            if progress:
                what = "normals" if self.tasks == ("normals",) else "prediction"
                progress(i, len(loaded), f"{what} of {name}")
            out = self.pipe(
                x,
                processing_resolution=processing_resolution or None,
                resize_mode=resize_mode,
                ensemble_size=ensemble_size,
                generator=torch.Generator().manual_seed(int(seed)),
                show_progress_bar=False,
            )
            stem = _stem(name)
            while stem in used:
                stem += "_"
            used.add(stem)
            n, unc = _first(out.normals), _first(out.uncertainty)  # (H, W, 3), (H, W, 1) degrees
            depth, depth_unc = _first(out.depth), _first(out.depth_uncertainty)  # (H, W, 1) metres
            classes = _first(out.classes)  # (H, W)
            _check_finite(name, [n, unc, depth, depth_unc])
            proc = self.pipe.image_processor
            image = _save_png(_rgb_picture(x), out_dir / f"{stem}_input.png")
            normal_path = unc_path = None
            downloads: list[Path] = []
            if n is not None:
                normal_pic = proc.visualize_normals(n)[0]
                unc_pic = proc.visualize_uncertainty(unc[None], input_kind="degrees")[0]
                normal_path = _save_png(normal_pic, out_dir / f"{stem}_normal.png")
                unc_path = _save_png(unc_pic, out_dir / f"{stem}_uncertainty.png")
                downloads += [
                    proc.export_normals_16bit_png(n, out_dir / f"{stem}_normal16.png"),
                    proc.export_npy(n.astype(np.float32), out_dir / f"{stem}_normal.npy"),
                    proc.export_npy(unc[..., 0].astype(np.float32), out_dir / f"{stem}_uncertainty_deg.npy"),
                ]
            pictures, more = write_task_files(
                self.pipe,
                out_dir,
                stem,
                None if depth is None else depth[..., 0],
                None if depth_unc is None else depth_unc[..., 0],
                classes,
                n,
                Image.open(image),
            )
            result.items.append(
                NormalsItem(
                    name=name,
                    image=image,
                    normals=normal_path,
                    uncertainty=unc_path,
                    downloads=downloads + more,
                    size=(int(x.shape[2]), int(x.shape[1])),
                    tasks=pictures,
                )
            )
        if progress:
            progress(len(loaded), len(loaded), "done")
        result.seconds = time.perf_counter() - t0
        return result

    # ------------------------------------------------------------------ generation
    @trims_heap  # the server's size stays flat over requests (heap.py)
    def create(
        self,
        path: str | os.PathLike | None,
        caption: str = "",
        t_start: int = 600,
        steps: int = 50,
        guidance: float = 1.0,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> CreateResult:
        """A new image of the upload's scene and its normals (partial noising to t_start + DDIM);
        with depth / segmentation heads also the new image's depth and class map (the same last
        step's taps), with their pictures and downloads as `normals` gives them."""
        t0 = time.perf_counter()
        if not path:
            raise InputError("upload an image first")
        t_start, steps = int(t_start), int(steps)
        if not 0 < t_start <= self.num_train_timesteps:
            raise InputError(f"t_start must be in 1..{self.num_train_timesteps}, got {t_start}")
        if not 0 < steps <= t_start:
            raise InputError(f"steps must be in 1..t_start ({t_start}), got {steps}")
        ddim_inference_steps(self.num_train_timesteps, t_start, steps)  # one-line error naming valid counts
        x = self.read_upload(path)
        cb = (lambda done, total: progress(done, total, "DDIM steps")) if progress else None
        if progress:
            progress(0, steps, "DDIM steps")
        out = self.pipe.create(
            x,
            caption=caption or "",
            t_start=t_start,
            steps=steps,
            guidance=float(guidance),
            generator=torch.Generator().manual_seed(int(seed)),  # CPU draws: the same on every device
            show_progress_bar=False,
            callback=cb,
        )
        out_dir = self._request_dir()
        stem = _stem(Path(path).name)
        proc = self.pipe.image_processor
        size = tuple(out.images.shape[1:3])
        source = resize_image(x, size)
        new = Image.fromarray((out.images[0] * 255).round().clip(0, 255).astype(np.uint8))
        n, unc = out.normals[0], out.uncertainty[0]
        depth, depth_unc, classes = _first(out.depth), _first(out.depth_uncertainty), _first(out.classes)
        _check_finite(Path(path).name, [n, unc, depth, depth_unc])
        pictures, more = write_task_files(
            self.pipe,
            out_dir,
            f"{stem}_created",
            None if depth is None else depth[..., 0],
            None if depth_unc is None else depth_unc[..., 0],
            classes,
            n,
            new,
        )
        return CreateResult(
            source=_save_png(_rgb_picture(source), out_dir / f"{stem}_source.png"),
            image=_save_png(new, out_dir / f"{stem}_created.png"),
            normals=_save_png(proc.visualize_normals(n)[0], out_dir / f"{stem}_created_normal.png"),
            uncertainty=_save_png(
                proc.visualize_uncertainty(unc[None], input_kind="degrees")[0],
                out_dir / f"{stem}_created_uncertainty.png",
            ),
            downloads=[
                out_dir / f"{stem}_created.png",
                proc.export_normals_16bit_png(n, out_dir / f"{stem}_created_normal16.png"),
                proc.export_npy(n.astype(np.float32), out_dir / f"{stem}_created_normal.npy"),
                *more,
            ],
            seconds=time.perf_counter() - t0,
            tasks=pictures,
            upload_size=(int(x.shape[2]), int(x.shape[1])),
            model_size=(int(size[1]), int(size[0])),
        )

    def close(self) -> None:
        """Delete the work folder if this backend made it."""
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
