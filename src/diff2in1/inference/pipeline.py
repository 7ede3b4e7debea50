"""`Diff2in1Pipeline`: one Stable Diffusion model for surface normals and for new RGB + normal pairs.

Perception (`__call__`, docs/method.md sections 2, 3, 9): image -> VAE latent -> UNet at t = 0 with
the empty caption -> 25 taps -> head -> unit normals + kappa. Generation (`create`, section 7): image
-> latent noised to t_start -> caption-conditioned DDIM (diffusers' `DDIMScheduler`) -> new image,
and the head on the last step's taps -> its normals + kappa.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from ..backbone import Backbone, ddim_inference_steps, load_backbone, method_scheduler
from ..creation import create_samples
from ..errors import InputError
from ..fingerprint import backbone_fingerprint, check_head
from ..heads import NormalHead
from ..heads.normal_head import RESIZE_MODES
from .image_processor import Diff2in1ImageProcessor, resize_image, resize_map, resize_normals
from .sources import hub_failure, resolve_pretrained
from .uncertainty import combine_members, expected_error

OUTPUT_TYPES = ("np", "pt", "pil")
DEFAULT_RESOLUTION = 512  # the research code's, for heads that do not record their own


@dataclass
class Diff2in1NormalsOutput(BaseOutput):
    """Perception output, one entry per input image.

    output_type "np": normals (N, H, W, 3) float32 unit vectors (camera frame: x right, y down,
    z forward), kappa (N, H, W, 1), uncertainty (N, H, W, 1) expected angular error in degrees;
    "pt": the same as tensors (N, 3, H, W), (N, 1, H, W), (N, 1, H, W); "pil": lists of pictures
    (normal map, kappa as its uncertainty picture with a colour bar, uncertainty likewise).
    When the images differ in size (match_input_resolution=True), "np"/"pt" give lists instead.
    """

    normals: Any
    kappa: Any
    uncertainty: Any


@dataclass
class Diff2in1CreateOutput(BaseOutput):
    """Generation output: the new image (N, H, W, 3) in [0, 1] ("np"; (N, 3, H, W) "pt"; PIL list
    "pil"), and its normals, kappa and uncertainty as in `Diff2in1NormalsOutput`, at the model size."""

    images: Any
    normals: Any
    kappa: Any
    uncertainty: Any


def _hw(resolution: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    if isinstance(resolution, int):
        return resolution, resolution
    h, w = resolution
    return int(h), int(w)


class Diff2in1Pipeline(DiffusionPipeline):
    """Stable Diffusion v1.x components + a normal head, for perception and generation.

    Load a saved pipeline with `Diff2in1Pipeline.from_pretrained(folder)`, or build one from any
    backbone source (preset, diffusers folder, original single file) and a head folder with
    `from_backbone`. `save_pretrained` writes a folder `from_pretrained` loads (model_index.json,
    one subfolder per component, safetensors) with a model card.

    Examples:
        ```py
        >>> import torch
        >>> from diff2in1 import Diff2in1Pipeline

        >>> pipe = Diff2in1Pipeline.from_pretrained("diff2in1-nyu").to("cuda")
        >>> out = pipe("photo.jpg")  # or a list of images, with batch_size=...
        >>> out.normals.shape, out.uncertainty.shape  # (1, H, W, 3) unit normals, (1, H, W, 1) degrees
        >>> normals, kappa, uncertainty = pipe("photo.jpg", return_dict=False)

        >>> new = pipe.create(["a.jpg", "b.jpg"], caption="a living room",
        ...                   generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
        >>> new.images, new.normals  # (2, 512, 512, 3) new images in [0, 1] and their normals
        ```

    Bad arguments raise `diff2in1.errors.InputError` (a `ValueError`) with a one-line message.
    `set_progress_bar_config(...)` settings hold for every call; `show_progress_bar=False` turns the
    bar off for one call.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler: DDIMScheduler,
        head: NormalHead,
    ) -> None:
        super().__init__()
        scheduler = method_scheduler(scheduler, "scheduler")
        self.register_modules(
            vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, head=head
        )
        self.image_processor = Diff2in1ImageProcessor()
        self.backbone = Backbone(vae, unet, text_encoder, tokenizer, scheduler, source="pipeline")
        head.eval()
        # A head on the wrong backbone fails here, before any forward pass.
        check_head(head, self.backbone, "head", "this pipeline's backbone")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(
        cls,
        backbone: str | Path | Backbone,
        head: str | Path | NormalHead,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Diff2in1Pipeline:
        """A pipeline from a backbone source (preset name, diffusers folder, `.ckpt`/`.safetensors`
        original single file, or a loaded `Backbone`) and a head (folder or model). Offline."""
        bb = (
            backbone
            if isinstance(backbone, Backbone)
            else load_backbone(backbone, device=device, dtype=dtype)
        )
        hd = head if isinstance(head, NormalHead) else NormalHead.from_pretrained(head)
        check_head(hd, bb, "head" if isinstance(head, NormalHead) else str(head), str(bb.source))
        pipe = cls(bb.vae, bb.unet, bb.text_encoder, bb.tokenizer, bb.scheduler, hd.to(bb.device))
        if pipe.backbone is not bb:  # share the given backbone: one set of tap hooks per UNet
            pipe.backbone.taps.remove()
            pipe.backbone = bb
        return pipe

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> Diff2in1Pipeline:
        """A saved pipeline folder, a shipped name ("tiny-scenes": the built-in backbone with its demo
        head, for procedural scenes only) or a Hub id `owner/name`. A missing local folder fails at
        once in one line; the Hub is tried only when it answers (`diff2in1.inference.sources`)."""
        source = resolve_pretrained(pretrained_model_name_or_path, kwargs.get("local_files_only", False))
        if source.kind == "shipped":
            dtype = kwargs.get("torch_dtype") or kwargs.get("dtype") or torch.float32
            return cls.from_backbone(source.backbone, source.head, dtype=dtype)
        if source.kind == "local":
            return super().from_pretrained(source.path, **kwargs)
        try:
            return super().from_pretrained(
                source.path, **{**kwargs, "local_files_only": source.local_files_only}
            )
        except (OSError, ValueError) as e:
            raise hub_failure(source, e) from None

    def fingerprint(self) -> dict:
        """This backbone's fingerprint (what a head trained on it records)."""
        return backbone_fingerprint(self.unet, self.vae, self.backbone.tap_channels)

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """diffusers' save (safetensors) plus a model card `README.md` with the Hub's YAML header."""
        kwargs.setdefault("safe_serialization", True)
        super().save_pretrained(save_directory, **kwargs)
        (Path(save_directory) / "README.md").write_text(self.model_card())

    def model_card(self) -> str:
        """The README.md of a saved pipeline: YAML header (what the Hub reads) and usage."""
        hc = self.head.config
        res = hc.processing_resolution or DEFAULT_RESOLUTION
        return (
            "---\n"
            "library_name: diffusers\n"
            "pipeline_tag: image-to-image\n"
            "license: openrail\n"
            "tags:\n- surface-normals\n- diff-2-in-1\n- stable-diffusion\n- uncertainty\n"
            "---\n\n"
            "# Diff-2-in-1 pipeline (surface normals + data creation)\n\n"
            "One Stable Diffusion v1.x model for two jobs: surface normals with a per-pixel uncertainty\n"
            "from the frozen UNet's features, and new image + normal pairs by partial noising and DDIM.\n\n"
            "```python\n"
            "from diff2in1 import Diff2in1Pipeline\n\n"
            "pipe = Diff2in1Pipeline.from_pretrained(FOLDER)\n"
            'out = pipe("photo.jpg")              # out.normals, out.kappa, out.uncertainty (degrees)\n'
            'new = pipe.create("photo.jpg", caption="a living room")\n'
            "```\n\n"
            f"Head: processing resolution {res}, resize mode {hc.resize_mode or 'squash'}, "
            f"tap widths {list(hc.in_channels)}.\n"
        )

    # ------------------------------------------------------------------ checks
    def _resolution(self, processing_resolution: int | None) -> tuple[int, int]:
        res = processing_resolution or self.head.config.processing_resolution
        if res is None:
            warnings.warn(
                f"the head does not record its training resolution; using {DEFAULT_RESOLUTION} "
                "(pass processing_resolution to choose)",
                stacklevel=3,
            )
            res = DEFAULT_RESOLUTION
        h, w = _hw(res)
        if h <= 0 or w <= 0 or h % 64 or w % 64:
            raise InputError(f"processing_resolution {res} must be a positive multiple of 64")
        return h, w

    def check_inputs(
        self,
        processing_resolution: int | None,
        resize_mode: str | None,
        ensemble_size: int,
        batch_size: int,
        output_type: str,
    ) -> tuple[tuple[int, int], str]:
        """Validate the call's settings; returns the (h, w) model size and the resize mode."""
        if not isinstance(ensemble_size, int) or ensemble_size < 1:
            raise InputError(f"ensemble_size must be an integer >= 1, got {ensemble_size!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if output_type not in OUTPUT_TYPES:
            raise InputError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        mode = resize_mode or self.head.config.resize_mode or "squash"
        if mode not in RESIZE_MODES:
            raise InputError(f"resize_mode must be one of {RESIZE_MODES}, got {mode!r}")
        size = self._resolution(processing_resolution)
        if mode == "keep_aspect" and size[0] != size[1]:
            raise InputError(f"resize_mode keep_aspect needs a square processing_resolution, got {size}")
        return size, mode

    # ------------------------------------------------------------------ perception
    def _autocast(self):
        dt = self.unet.dtype
        return torch.autocast(self.unet.device.type, dtype=dt, enabled=dt in (torch.bfloat16, torch.float16))

    @torch.no_grad()
    def predict_model_space(
        self, x: Tensor, seed: int | list[int] = 0, ensemble_size: int = 1
    ) -> tuple[Tensor, Tensor]:
        """Images at the model size -> normals and kappa at the same size.

        x (B, 3, h, w) in [-1, 1], h and w multiples of 64. Member k of the ensemble draws an
        image's posterior sample and t = 0 noise from seed (seed, k): `seed` one for every image or
        one per image, so an image's result does not depend on its batch; odd members see the image
        flipped left-right (their normals are flipped back, x negated). Returns normal
        (B, 3, h, w), kappa (B, 1, h, w).
        """
        bb, b, size = self.backbone, x.shape[0], tuple(x.shape[-2:])
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * b
        x = x.to(bb.device, torch.float32)
        flips = [k % 2 == 1 for k in range(ensemble_size)]
        normals, kappas = [], []
        with self._autocast():
            posts = {False: bb.posterior(x)}
            if any(flips):
                posts[True] = bb.posterior(x.flip(-1))
            for k, flip in enumerate(flips):
                feats = bb.perceive(None, seeds=[member_seed(s, k) for s in seeds], posterior=posts[flip])
                out = self.head(feats.to(torch.float32), image_size=size)
                n, kap = out.normal.float(), out.kappa.float()
                if flip:
                    n, kap = n.flip(-1) * n.new_tensor([-1.0, 1.0, 1.0]).view(1, 3, 1, 1), kap.flip(-1)
                normals.append(n)
                kappas.append(kap)
        return combine_members(torch.stack(normals), torch.stack(kappas))

    @torch.no_grad()
    def __call__(
        self,
        image: Any,
        processing_resolution: int | None = None,
        resize_mode: str | None = None,
        match_input_resolution: bool = True,
        ensemble_size: int = 1,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np",
        show_progress_bar: bool = True,
        return_dict: bool = True,
    ) -> Diff2in1NormalsOutput | tuple:
        """Surface normals and their uncertainty for one image or a list.

        image: PIL image, numpy array (HxW, HxWx3, HxWx4; uint8, uint16 or float in [0, 1]), tensor
        ((3, H, W) or (B, 3, H, W) in [-1, 1]), a file path, or a list of them.
        processing_resolution: model input size (default: the head's own); resize_mode "squash"
        (the research recipe) or "keep_aspect" (longest edge to the resolution, padded); default the
        head's. ensemble_size: members combined by kappa-weighted mean (see `predict_model_space`).
        generator: seeds the noise: one generator (one draw serves every image) or a list with one
        per image; default a generator seeded with 0, so repeated calls agree. batch_size: images
        per model pass (results do not depend on it). Returns a `Diff2in1NormalsOutput`, or with
        `return_dict=False` the tuple (normals, kappa, uncertainty).
        """
        size, mode = self.check_inputs(
            processing_resolution, resize_mode, ensemble_size, batch_size, output_type
        )
        images = self.image_processor.load(image)
        seeds = image_seeds(len(images), generator)
        normals, kappas = [], []
        with self._progress(len(images), "normals", "img", show_progress_bar) as bar:
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                prepped = [self._preprocess(x, size, mode) for x in chunk]
                x = torch.stack([p[0] for p in prepped])
                n, k = self.predict_model_space(x, seeds[start : start + batch_size], ensemble_size)
                for i, (_, undo) in enumerate(prepped):
                    normals.append(undo(n[i : i + 1], True, match_input_resolution))
                    kappas.append(undo(k[i : i + 1], False, match_input_resolution))
                bar.update(len(chunk))
        out = self._format(normals, kappas, output_type)
        return out if return_dict else out.to_tuple()

    def _progress(self, total: int, desc: str, unit: str, show: bool) -> tqdm:
        """A progress bar: our desc and unit as defaults under the user's `set_progress_bar_config`
        (which this never changes); `show=False` turns it off for this call."""
        config = {"desc": desc, "unit": unit, **getattr(self, "_progress_bar_config", {})}
        if not show:
            config["disable"] = True
        dist = torch.distributed
        config.setdefault("disable", dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)
        return tqdm(total=total, **config)

    def _preprocess(self, x: Tensor, size: tuple[int, int], mode: str) -> tuple[Tensor, Callable]:
        """(3, H, W) -> model input (3, h, w) and `undo(maps, is_normal, match_input_resolution)`."""
        if mode == "keep_aspect" or size[0] == size[1]:
            y, info = self.image_processor.preprocess(x, size[0], mode)

            def undo(maps: Tensor, is_normal: bool, match: bool) -> Tensor:
                return self.image_processor.postprocess(maps, info, match, renormalize=is_normal)

            return y, undo
        original = tuple(x.shape[-2:])  # squash to a non-square size (a head trained at e.g. 480x640)

        def undo_squash(maps: Tensor, is_normal: bool, match: bool) -> Tensor:
            if not match:
                return maps
            return resize_normals(maps, original) if is_normal else resize_map(maps, original)

        return resize_image(x.float(), size), undo_squash

    def _format(self, normals: list[Tensor], kappas: list[Tensor], output_type: str) -> Diff2in1NormalsOutput:
        normals = [n.float().cpu() for n in normals]  # each (1, 3, H, W)
        kappas = [k.float().cpu() for k in kappas]  # each (1, 1, H, W)
        unc = [torch.rad2deg(expected_error(k)) for k in kappas]
        if output_type == "pil":
            return Diff2in1NormalsOutput(
                normals=[self.image_processor.visualize_normals(n)[0] for n in normals],
                kappa=[self.image_processor.visualize_uncertainty(k)[0] for k in kappas],
                uncertainty=[self.image_processor.visualize_uncertainty(k)[0] for k in kappas],
            )
        same = len({tuple(n.shape[-2:]) for n in normals}) == 1
        if output_type == "pt":
            pack = (lambda xs: torch.cat(xs)) if same else (lambda xs: [x[0] for x in xs])
        else:
            pack = (
                (lambda xs: torch.cat(xs).permute(0, 2, 3, 1).numpy())
                if same
                else (lambda xs: [x[0].permute(1, 2, 0).numpy() for x in xs])
            )
        return Diff2in1NormalsOutput(normals=pack(normals), kappa=pack(kappas), uncertainty=pack(unc))

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def create(
        self,
        image: Any,
        caption: str | list[str] = "",
        t_start: int = 600,
        steps: int = 50,
        guidance: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        seed: int | list[int] | None = None,
        processing_resolution: int | None = None,
        batch_size: int = 1,
        output_type: str = "np",
        show_progress_bar: bool = True,
        callback: Callable[[int, int], None] | None = None,
        return_dict: bool = True,
    ) -> Diff2in1CreateOutput | tuple:
        """A new image and its normals from each input image (docs/method.md section 7).

        The image (squashed to the processing resolution) is encoded, noised to `t_start`, and
        denoised by `steps` eta-0 DDIM steps (600, 50: timesteps 589, 577, ..., 13, 1) conditioned
        on `caption` (one string, or one per image), with classifier-free guidance when
        guidance > 1; the head reads the last step's taps (`creation.create_samples`, the core
        `create-data` runs too).

        Each image's sample comes from its own seed: `seed` (an int for every image, or one per
        image; a `create-data` sample's seed is in its `meta/<id>.json`), else one drawn from
        `generator` (one generator for every image, or a list with one per image; default a
        generator seeded with 0). So a sample does not depend on the other images, on
        `batch_size` (images per model pass) or on the device. `callback(done, total)` after each
        DDIM step (total = steps x batches). Returns a `Diff2in1CreateOutput`, or with
        `return_dict=False` the tuple (images, normals, kappa, uncertainty).
        """
        size, _ = self.check_inputs(processing_resolution, "squash", 1, batch_size, output_type)
        if not 0 < t_start <= self.scheduler.config.num_train_timesteps:
            raise InputError(
                f"t_start must be in 1..{self.scheduler.config.num_train_timesteps}, got {t_start}"
            )
        if not isinstance(steps, int) or not 0 < steps <= t_start:
            raise InputError(f"steps must be an integer in 1..t_start ({t_start}), got {steps!r}")
        if not guidance >= 1.0:
            raise InputError(f"guidance must be >= 1 (1 = no classifier-free guidance), got {guidance}")
        ddim_inference_steps(self.scheduler.config.num_train_timesteps, t_start, steps)
        images = self.image_processor.load(image)
        captions = [caption] * len(images) if isinstance(caption, str) else list(caption)
        if len(captions) != len(images):
            raise InputError(f"{len(captions)} captions for {len(images)} images")
        seeds = image_seeds(len(images), generator, seed)
        amp = self.unet.dtype if self.unet.dtype in (torch.bfloat16, torch.float16) else None
        batches = range(0, len(images), batch_size)
        total, done = steps * len(batches), 0
        rgb, normals, kappas = [], [], []
        with self._progress(total, "DDIM", "step", show_progress_bar) as bar:

            def step(k: int, _steps: int) -> None:
                bar.update(1)
                if callback is not None:
                    callback(done + k, total)

            for start in batches:
                sl = slice(start, start + batch_size)
                x = torch.stack([self._preprocess(im, size, "squash")[0] for im in images[sl]])
                made = create_samples(
                    self.backbone, self.head, x, captions[sl], seeds[sl], t_start, steps, guidance, amp, step
                )
                done += steps
                rgb.append((made.rgb.cpu() + 1) / 2)
                normals += [n[None].float().cpu() for n in made.prediction.normal]
                kappas += [k[None].float().cpu() for k in made.prediction.kappa]
        fmt = self._format(normals, kappas, output_type)
        new = torch.cat(rgb)
        if output_type == "pil":
            imgs = [Image.fromarray((r.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for r in new]
        elif output_type == "pt":
            imgs = new
        else:
            imgs = new.permute(0, 2, 3, 1).numpy()
        out = Diff2in1CreateOutput(
            images=imgs, normals=fmt.normals, kappa=fmt.kappa, uncertainty=fmt.uncertainty
        )
        return out if return_dict else out.to_tuple()


def image_seeds(
    n: int,
    generator: torch.Generator | list[torch.Generator] | None = None,
    seed: int | list[int] | None = None,
) -> list[int]:
    """One seed per image: `seed` (one for all or one each), else drawn from `generator` (one
    generator: one draw for every image; a list: one draw from each), default a generator seeded
    with 0. InputError for both, or for a list of the wrong length."""
    if seed is not None and generator is not None:
        raise InputError("give either seed or generator, not both")
    if seed is not None:
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * n
        ok = all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in seeds)
        if len(seeds) != n or not ok:
            raise InputError(f"seed must be an integer >= 0 or a list of {n} of them, got {seed!r}")
        return [int(s) for s in seeds]
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise InputError(f"{len(generator)} generators for {n} images")
        return [draw_seed(g) for g in generator]
    return [draw_seed(generator if generator is not None else torch.Generator().manual_seed(0))] * n


def draw_seed(generator: torch.Generator) -> int:
    """One seed from a generator (advances it by one draw)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


def member_seed(seed: int, member: int) -> int:
    """Seed of ensemble member `member` (member 0 uses `seed` itself)."""
    return (int(seed) + 0x9E3779B1 * int(member)) & 0x7FFFFFFFFFFFFFFF


def load_pipeline(
    pipeline: str | Path | None = None,
    backbone: str | Path | None = None,
    head: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Diff2in1Pipeline:
    """A pipeline folder, or a backbone source + a head folder, on `device`; the frozen backbone in
    `dtype` (the head stays float32 and runs under autocast). InputError naming the file otherwise."""
    if pipeline is not None:
        if backbone is not None or head is not None:
            raise InputError("give either a pipeline folder or --backbone and --head, not both")
        if resolve_pretrained(pipeline, local_files_only=True).kind == "shipped":
            return Diff2in1Pipeline.from_pretrained(pipeline, dtype=dtype).to(device)
        index = read_model_index(pipeline)
        missing = [
            c for c in ("vae", "unet", "text_encoder", "tokenizer", "scheduler", "head") if c not in index
        ]
        if missing:
            raise InputError(
                f"{pipeline}/model_index.json: not a diff2in1 pipeline (no {', '.join(missing)})"
            )
        try:
            pipe = Diff2in1Pipeline.from_pretrained(pipeline, local_files_only=True, dtype=dtype)
        except InputError:
            raise
        except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"{pipeline}: cannot load the pipeline ({msg})") from None
        pipe.to(device)
    elif backbone is None or head is None:
        raise InputError("give a pipeline folder, or both --backbone and --head")
    else:
        return Diff2in1Pipeline.from_backbone(backbone, head, device=device, dtype=dtype)
    return pipe


def read_model_index(folder: str | Path) -> dict:
    """model_index.json of a pipeline folder, or InputError naming it."""
    path = Path(folder) / "model_index.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{folder}: not a pipeline folder (no model_index.json)") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable ({e})") from None
