"""`Diff2in1Pipeline`: one Stable Diffusion model for surface normals and for new RGB + normal pairs;
with depth and segmentation heads (optional components), for those tasks too from the same pass.

Perception (`__call__`, docs/method.md sections 2, 3, 9): image -> VAE latent -> UNet at t = 0 with
the empty caption -> 25 taps -> head -> unit normals + kappa. Generation (`create`, section 7): image
-> latent noised to t_start -> caption-conditioned DDIM (diffusers' `DDIMScheduler`) -> new image,
and the head on the last step's taps -> its normals + kappa.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from ..backbone import Backbone, ddim_inference_steps, load_backbone, method_scheduler
from ..creation import create_samples
from ..errors import InputError
from ..fingerprint import backbone_fingerprint, check_head
from ..heads import DenseHead, NormalHead, head_task
from ..heads.normal_head import RESIZE_MODES
from .head_set import ALL_TASKS, TASK_COMPONENTS, load_head_set
from .image_processor import Diff2in1ImageProcessor, resize_image, resize_map, resize_normals
from .pipeline_output import Diff2in1CreateOutput, Diff2in1NormalsOutput
from .seeds import image_seeds, member_seed
from .sources import hub_failure, resolve_pretrained
from .uncertainty import combine_members, expected_error

OUTPUT_TYPES = ("np", "pt", "pil")
DEFAULT_RESOLUTION = 512  # the research code's, for heads that do not record their own
# The pipeline component holding each task's head.
TASK_TAGS = {"depth": "depth-estimation", "segmentation": "semantic-segmentation"}  # model card tags


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
        >>> out = pipe("photo.jpg", tasks="normals,depth")  # with a depth head: out.depth in metres

        >>> new = pipe.create(["a.jpg", "b.jpg"], caption="a living room",
        ...                   generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
        >>> new.images, new.normals  # (2, 512, 512, 3) new images in [0, 1] and their normals
        ```

    Bad arguments raise `diff2in1.errors.InputError` (a `ValueError`) with a one-line message.
    `set_progress_bar_config(...)` settings hold for every call; `show_progress_bar=False` turns the
    bar off for one call.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["head", "depth_head", "segmentation_head"]

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler: DDIMScheduler,
        head: NormalHead | None = None,
        depth_head: DenseHead | None = None,
        segmentation_head: DenseHead | None = None,
    ) -> None:
        super().__init__()
        scheduler = method_scheduler(scheduler, "scheduler")
        self.register_modules(
            vae=vae,
            unet=unet,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
            head=head,
            depth_head=depth_head,
            segmentation_head=segmentation_head,
        )
        self.image_processor = Diff2in1ImageProcessor()
        self.backbone = Backbone(vae, unet, text_encoder, tokenizer, scheduler, source="pipeline")
        if not self.task_heads():
            raise InputError("a pipeline needs at least one head (normals, depth or segmentation)")
        for task, h in self.task_heads().items():
            if head_task(h) != task:
                raise InputError(f"{TASK_COMPONENTS[task]}: a {head_task(h)} head, not a {task} head")
            h.eval()
            # A head on the wrong backbone fails here, before any forward pass.
            check_head(h, self.backbone, TASK_COMPONENTS[task], "this pipeline's backbone")

    def task_heads(self) -> dict[str, Any]:
        """task -> head, for the tasks this pipeline has a head for (in ALL_TASKS order)."""
        heads = {t: getattr(self, c, None) for t, c in TASK_COMPONENTS.items()}
        return {t: h for t, h in heads.items() if h is not None}

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.task_heads())

    @property
    def primary_head(self):
        """The head whose recorded resolution and resize mode the pipeline uses: the normal head,
        else the first other one (heads trained together record the same)."""
        return next(iter(self.task_heads().values()))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(
        cls,
        backbone: str | Path | Backbone,
        head: str | Path | NormalHead | list | None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Diff2in1Pipeline:
        """A pipeline from a backbone source (preset name, diffusers folder, `.ckpt`/`.safetensors`
        original single file, or a loaded `Backbone`) and a head (folder or model), or a list of
        heads of different tasks (each folder's config names its task). Offline."""
        heads = load_head_set(head if isinstance(head, (list, tuple)) else [head])  # before the backbone
        bb = (
            backbone
            if isinstance(backbone, Backbone)
            else load_backbone(backbone, device=device, dtype=dtype)
        )
        for source, hd in heads.values():
            check_head(hd, bb, source, str(bb.source))
        components = {TASK_COMPONENTS[t]: hd.to(bb.device) for t, (_, hd) in heads.items()}
        pipe = cls(bb.vae, bb.unet, bb.text_encoder, bb.tokenizer, bb.scheduler, **components)
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
        hc = self.primary_head.config
        res = hc.processing_resolution or DEFAULT_RESOLUTION
        tags = "".join(f"- {TASK_TAGS[t]}\n" for t in self.tasks if t in TASK_TAGS)
        return (
            "---\n"
            "library_name: diffusers\n"
            "pipeline_tag: image-to-image\n"
            "license: openrail\n"
            "tags:\n- surface-normals\n- diff-2-in-1\n- stable-diffusion\n- uncertainty\n"
            f"{tags}"
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
            f"Tasks: {', '.join(self.tasks)}.\n"
        )

    # ------------------------------------------------------------------ checks
    def _resolution(self, processing_resolution: int | None) -> tuple[int, int]:
        res = processing_resolution or self.primary_head.config.processing_resolution
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
        mode = resize_mode or self.primary_head.config.resize_mode or "squash"
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
        if self.head is None:
            raise InputError("this pipeline has no normals head")
        return self.predict_tasks_model_space(x, seed, ensemble_size, ("normals",))["normals"]

    @torch.no_grad()
    def predict_tasks_model_space(
        self,
        x: Tensor,
        seed: int | list[int] = 0,
        ensemble_size: int = 1,
        tasks: tuple[str, ...] | None = None,
    ) -> dict[str, tuple[Tensor, ...]]:
        """Every head of `tasks` (default: all this pipeline has) on one backbone pass per ensemble
        member, at the model size; seeds and members as `predict_model_space`.

        Returns task -> tensors: normals (normal (B, 3, h, w), kappa (B, 1, h, w)); depth (log_depth,
        log_scale) (B, 1, h, w) each; segmentation (logits (B, C, h, w),). Members are combined: the
        normals by `combine_members`, depth by the mean log-depth and the mean scale b = exp(s)
        (plus the members' spread), classes by the log of the mean probability.
        """
        bb, b, size = self.backbone, x.shape[0], tuple(x.shape[-2:])
        heads = {t: h for t, h in self.task_heads().items() if tasks is None or t in tasks}
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * b
        x = x.to(bb.device, torch.float32)
        flips = [k % 2 == 1 for k in range(ensemble_size)]
        members: dict[str, list[tuple[Tensor, ...]]] = {t: [] for t in heads}
        with self._autocast():
            posts = {False: bb.posterior(x)}
            if any(flips):
                posts[True] = bb.posterior(x.flip(-1))
            for k, flip in enumerate(flips):
                feats = bb.perceive(None, seeds=[member_seed(s, k) for s in seeds], posterior=posts[flip])
                feats = feats.to(torch.float32)
                for task, head in heads.items():
                    out = head(feats, image_size=size)
                    if task == "normals":
                        n, kap = out.normal.float(), out.kappa.float()
                        if flip:
                            mirror = n.new_tensor([-1.0, 1.0, 1.0]).view(1, 3, 1, 1)
                            n, kap = n.flip(-1) * mirror, kap.flip(-1)
                        members[task].append((n, kap))
                    elif task == "depth":
                        maps = (out.log_depth.float(), out.log_scale.float())
                        members[task].append(tuple(m.flip(-1) for m in maps) if flip else maps)
                    else:
                        logits = out.logits.float()
                        members[task].append((logits.flip(-1) if flip else logits,))
        result = {}
        for task, ms in members.items():
            if task == "normals":
                stacked = [torch.stack([m[j] for m in ms]) for j in (0, 1)]
                result[task] = combine_members(*stacked)
            elif len(ms) == 1:
                result[task] = ms[0]
            elif task == "depth":
                mu = torch.stack([m[0] for m in ms])
                scale = torch.stack([m[1] for m in ms]).exp().mean(0) + mu.std(0, unbiased=False)
                result[task] = (mu.mean(0), scale.log())
            else:
                probs = torch.stack([torch.softmax(m[0], 1) for m in ms]).mean(0)
                result[task] = (probs.clamp_min(1e-12).log(),)
        return result

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
        tasks: str | list[str] | tuple[str, ...] | None = None,
    ) -> Diff2in1NormalsOutput | tuple:
        """Surface normals and their uncertainty for one image or a list; with depth and
        segmentation heads, those tasks too, all from one backbone pass.

        image: PIL image, numpy array (HxW, HxWx3, HxWx4; uint8, uint16 or float in [0, 1]), tensor
        ((3, H, W) or (B, 3, H, W) in [-1, 1]), a file path, or a list of them.
        processing_resolution: model input size (default: the head's own); resize_mode "squash"
        (the research recipe) or "keep_aspect" (longest edge to the resolution, padded); default the
        head's. ensemble_size: members combined by kappa-weighted mean (see `predict_model_space`).
        generator: seeds the noise: one generator (one draw serves every image) or a list with one
        per image; default a generator seeded with 0, so repeated calls agree. batch_size: images
        per model pass (results do not depend on it). tasks: "normals", "depth", "segmentation"
        (a comma-separated string or a list; default: every task this pipeline has a head for); a
        task without a head gives None. Returns a `Diff2in1NormalsOutput` (alias `Diff2in1Output`),
        or with `return_dict=False` the tuple of its fields that are not None (for normals alone:
        (normals, kappa, uncertainty)).
        """
        size, mode = self.check_inputs(
            processing_resolution, resize_mode, ensemble_size, batch_size, output_type
        )
        wanted = self._tasks(tasks)
        run = tuple(t for t in wanted if t in self.task_heads())
        images = self.image_processor.load(image)
        seeds = image_seeds(len(images), generator)
        maps: dict[str, list[tuple[Tensor, ...]]] = {t: [] for t in run}
        desc = "normals" if run == ("normals",) else "perceive"
        with self._progress(len(images), desc, "img", show_progress_bar) as bar:
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                prepped = [self._preprocess(x, size, mode) for x in chunk]
                x = torch.stack([p[0] for p in prepped])
                chunk_seeds = seeds[start : start + batch_size]
                pred = self.predict_tasks_model_space(x, chunk_seeds, ensemble_size, run)
                for task, tensors in pred.items():
                    for i, (_, undo) in enumerate(prepped):
                        maps[task].append(
                            tuple(
                                undo(t[i : i + 1], task == "normals" and j == 0, match_input_resolution)
                                for j, t in enumerate(tensors)
                            )
                        )
                bar.update(len(chunk))
        out = Diff2in1NormalsOutput()
        if "normals" in maps:
            out = self._format([m[0] for m in maps["normals"]], [m[1] for m in maps["normals"]], output_type)
        extra = {}
        if "depth" in maps:
            extra["depth"], extra["depth_uncertainty"] = self._format_depth(maps["depth"], output_type)
        if "segmentation" in maps:
            classes, probs = self._format_classes(maps["segmentation"], output_type)
            extra["classes"], extra["class_probabilities"] = classes, probs
        for key, value in extra.items():
            if value is not None:  # a None field stays out of the tuple
                out[key] = value
        return out if return_dict else out.to_tuple()

    def _tasks(self, tasks: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
        if tasks is None:
            return self.tasks
        names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks)]
        unknown = [t for t in names if t not in ALL_TASKS]
        if unknown or not names:
            given = unknown[0] if unknown else ""
            raise InputError(f"tasks: unknown task {given!r}; choose from {', '.join(ALL_TASKS)}")
        return tuple(t for t in ALL_TASKS if t in names)

    @staticmethod
    def _pack(xs: list[Tensor], output_type: str, channels_last: bool = True) -> Any:
        """Per-image (1, C, H, W) (or (1, H, W)) tensors -> a batch, or a list when sizes differ."""
        same = len({tuple(x.shape[-2:]) for x in xs}) == 1
        if output_type == "pt":
            return torch.cat(xs) if same else [x[0] for x in xs]
        if channels_last and xs[0].dim() == 4:
            xs = [x.permute(0, 2, 3, 1) for x in xs]
        return torch.cat(xs).numpy() if same else [x[0].numpy() for x in xs]

    def _format_depth(self, maps: list[tuple[Tensor, Tensor]], output_type: str) -> tuple[Any, Any]:
        from ..viz_tasks import depth_picture

        likelihood = self.depth_head.config.likelihood
        factor = 1.0 if likelihood == "laplace" else math.sqrt(2.0 / math.pi)
        depth = [m[0].float().cpu().exp() for m in maps]
        unc = [d * m[1].float().cpu().exp() * factor for d, m in zip(depth, maps, strict=True)]
        if output_type == "pil":
            pictures = [depth_picture(d[0, 0].numpy()) for d in depth]
            return pictures, [depth_picture(u[0, 0].numpy()) for u in unc]
        return self._pack(depth, output_type), self._pack(unc, output_type)

    def _format_classes(self, maps: list[tuple[Tensor]], output_type: str) -> tuple[Any, Any]:
        from ..viz_tasks import segmentation_picture

        logits = [m[0].float().cpu() for m in maps]
        classes = [lg.argmax(1) for lg in logits]  # (1, H, W)
        if output_type == "pil":
            class_list = self.segmentation_head.class_list()
            return [segmentation_picture(c[0].numpy(), class_list) for c in classes], None
        probs = [torch.softmax(lg, 1) for lg in logits]
        return self._pack(classes, output_type), self._pack(probs, output_type)

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
        image; a `create-data` sample's seed is in its `meta/<id>.json`: with its source image file,
        or that image as a float tensor in [-1, 1], it remakes the sample), else one drawn from
        `generator` (one generator for every image, or a list with one per image; default a
        generator seeded with 0). So a sample does not depend on the other images, on
        `batch_size` (images per model pass) or on the device. `callback(done, total)` after each
        DDIM step (total = steps x batches). Returns a `Diff2in1CreateOutput`, or with
        `return_dict=False` the tuple (images, normals, kappa, uncertainty). A pipeline with depth /
        segmentation heads also returns their labels for each new image, every head reading the same
        last-step taps (the multi-modal sample `create-data` makes with a head set).
        """
        if self.head is None:
            raise InputError("create needs a normals head (the creation head); this pipeline has none")
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
        heads = self.task_heads()
        depth_maps, class_maps = [], []  # per image, as `_format_depth` / `_format_classes` take them
        with self._progress(total, "DDIM", "step", show_progress_bar) as bar:

            def step(k: int, _steps: int) -> None:
                bar.update(1)
                if callback is not None:
                    callback(done + k, total)

            for start in batches:
                sl = slice(start, start + batch_size)
                x = torch.stack([self._preprocess(im, size, "squash")[0] for im in images[sl]])
                # a normals-only pipeline runs the lone head, exactly as always; a head set: every
                # head on the same last-step taps of the one UNet run
                what = self.head if len(heads) == 1 else heads
                made = create_samples(
                    self.backbone, what, x, captions[sl], seeds[sl], t_start, steps, guidance, amp, step
                )
                done += steps
                rgb.append((made.rgb.cpu() + 1) / 2)
                preds = made.prediction if len(heads) > 1 else {"normals": made.prediction}
                normals += [n[None].float().cpu() for n in preds["normals"].normal]
                kappas += [k[None].float().cpu() for k in preds["normals"].kappa]
                if "depth" in preds:
                    d = preds["depth"]
                    depth_maps += [(m[None], s[None]) for m, s in zip(d.log_depth, d.log_scale, strict=True)]
                if "segmentation" in preds:
                    class_maps += [(lg[None],) for lg in preds["segmentation"].logits]
        fmt = self._format(normals, kappas, output_type)
        new = torch.cat(rgb)
        if output_type == "pil":
            imgs = [Image.fromarray((r.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for r in new]
        elif output_type == "pt":
            imgs = new
        else:
            imgs = new.permute(0, 2, 3, 1).numpy()
        extra = {}
        if depth_maps:
            extra["depth"], extra["depth_uncertainty"] = self._format_depth(depth_maps, output_type)
        if class_maps:
            extra["classes"], extra["class_probabilities"] = self._format_classes(class_maps, output_type)
        out = Diff2in1CreateOutput(
            images=imgs, normals=fmt.normals, kappa=fmt.kappa, uncertainty=fmt.uncertainty, **extra
        )
        return out if return_dict else out.to_tuple()
