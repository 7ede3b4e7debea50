"""Stage 1 (docs/method.md section 6): warm-up of the normal head on the frozen backbone's features;
with `tasks`, also of depth and segmentation heads on the same backbone pass (docs/multitask.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backbone import Backbone, load_backbone, weights_dtype
from ..config import WarmupConfig
from ..data import NormalsDataset
from ..data.multitask import MultiTaskDataset, parse_tasks
from ..errors import InputError
from ..heads import build_head, folder_task
from ..heads.build import PRESETS
from ..losses import depth_nll, head_loss, segmentation_ce
from ..model_files import refuse_pickled_components
from ..path_overlap import refuse_overlap
from ..taps import TapFeatures
from ..training.feature_cache import FeatureCache, PosteriorCache
from ..training.loop import LoopResult, check_batches, make_accelerator, mix_seed, run_training
from ..training.run_folder import RunDir


@dataclass
class StepCaches:
    """Optional per-image caches of a training run (see `feature_cache.py`)."""

    features: FeatureCache | None = None
    posterior: PosteriorCache | None = None


def step_features(
    backbone: Backbone, images: torch.Tensor, indices: list[int], cfg, step: int, autocast, caches: StepCaches
) -> TapFeatures:
    """The taps of a training batch, float32 (B, C, h, w) per group, no gradient."""

    def compute(which: list[int], seeds: list[int]) -> TapFeatures:
        posterior = None
        if caches.posterior is not None:
            posterior = caches.posterior(backbone, images[which], [indices[k] for k in which])
        with torch.no_grad(), autocast():
            return backbone.perceive(
                images[which], seeds=seeds, sample_posterior=cfg.sample_posterior, posterior=posterior
            )

    if caches.features is None:
        # An image's noise depends on (seed, step, sample index), not on its batch or process.
        feats = compute(list(range(len(indices))), [mix_seed(cfg.seed, step, i) for i in indices])
    else:  # fixed noise per image: drawn from (seed, index) once
        feats = caches.features.features(
            indices, lambda m: compute(m, [mix_seed(cfg.seed, indices[k]) for k in m])
        )
    return feats.to(backbone.device, torch.float32)


def make_caches(cfg, run: RunDir) -> StepCaches:
    features = None
    if getattr(cfg, "feature_cache", "none") != "none":
        # One folder for all processes: each file is written atomically, by index.
        features = FeatureCache(cfg.feature_cache, run.root / "feature_cache")
    return StepCaches(features=features, posterior=PosteriorCache() if cfg.posterior_cache else None)


def perception_step(
    backbone: Backbone, head, batch: dict, cfg, step: int, autocast, caches: StepCaches
) -> torch.Tensor:
    """Loss of one labelled batch: features (no grad) -> head -> loss of docs/method.md section 4."""
    device = backbone.device
    images = batch["image"].to(device, non_blocking=True)
    normal = batch["normal"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True)
    indices = [int(i) for i in batch["index"]]
    feats = step_features(backbone, images, indices, cfg, step, autocast, caches)
    points = [mix_seed(cfg.seed, step, i, 1) for i in indices]  # the head's random points
    out = head(feats, image_size=tuple(images.shape[-2:]), gt_mask=mask, point_seeds=points)
    return head_loss(out, normal, mask, kind=cfg.loss)


# The run folder's head folder per task: normals keep `head/` (as a normals-only run writes).
HEAD_FOLDERS = {"normals": "head", "depth": "head_depth", "segmentation": "head_segmentation"}


def multitask_step(
    backbone: Backbone,
    heads: dict,
    batch: dict,
    cfg,
    step: int,
    autocast,
    caches: StepCaches,
    tasks,
    task_losses: dict | None = None,
) -> torch.Tensor:
    """Weighted sum of every task's loss on one backbone pass: the taps are computed once and read
    by each task's head. A sample without a task's label adds nothing to that task's loss.
    `task_losses` (if given) receives each task's unweighted loss as `loss_<task>`."""
    device = backbone.device
    images = batch["image"].to(device, non_blocking=True)
    size = tuple(images.shape[-2:])
    indices = [int(i) for i in batch["index"]]
    feats = step_features(backbone, images, indices, cfg, step, autocast, caches)
    total = images.new_zeros(())
    for task in tasks:
        head = heads[HEAD_FOLDERS[task]]
        present = batch[f"has_{task}"].to(device)
        if task == "normals":
            normal = batch["normal"].to(device, non_blocking=True)
            mask = batch["mask"].to(device, non_blocking=True)
            points = [mix_seed(cfg.seed, step, i, 1) for i in indices]
            out = head(feats, image_size=size, gt_mask=mask, point_seeds=points)
            loss = head_loss(out, normal, mask, kind=cfg.loss)
        elif task == "depth":
            out = head(feats, image_size=size)
            depth = batch["depth"].to(device, non_blocking=True)
            kind = cfg.depth_loss
            loss = depth_nll(out.log_depth, out.log_scale, depth, present=present, kind=kind)
        else:
            out = head(feats, image_size=size)
            loss = segmentation_ce(out.logits, batch["classes"].to(device), present=present)
        if task_losses is not None:
            task_losses[f"loss_{task}"] = loss.detach()
        total = total + getattr(cfg, f"{task}_weight") * loss
    return total


def head_spec(cfg: WarmupConfig, task: str) -> str:
    """What a task's head starts from: `head` for normals; `depth_head` / `segmentation_head`, by
    default the preset of `head` (`reference` when `head` is a folder)."""
    spec = cfg.head if task == "normals" else getattr(cfg, f"{task}_head")
    return spec or (cfg.head if cfg.head in PRESETS else "reference")


def train_warmup(cfg: WarmupConfig, resume: bool = False, backbone: Backbone | None = None) -> LoopResult:
    """Run stage 1 into `cfg.out`; returns the steps, losses and the final head folder(s), one per
    task (`HEAD_FOLDERS`)."""
    tasks = parse_tasks(cfg.tasks)
    on_error = "skip" if cfg.skip_bad_samples else "raise"
    # Data problems fail before any model loads.
    if tasks == ("normals",):  # the research recipe's data path, unchanged
        dataset = NormalsDataset(
            cfg.data, cfg.split, size=cfg.resolution, on_error=on_error, resize=cfg.resize, captions=False
        )
        counts = {"normals": len(dataset)}
    else:
        dataset = MultiTaskDataset(
            cfg.data,
            cfg.split,
            tasks,
            size=cfg.resolution,
            resize=cfg.resize,
            on_error=on_error,
            captions=False,
        )
        counts = dict(dataset.label_counts.per_task)
        missing = [t for t in tasks if not counts[t]]
        if missing:
            raise InputError(
                f"{cfg.data}: no {cfg.split} sample carries a {missing[0]} label "
                f"(with labels: {dataset.label_counts})"
            )
    check_batches(len(dataset), cfg)
    specs = {t: head_spec(cfg, t) for t in tasks}
    folders = [s for s in specs.values() if s not in PRESETS]
    refuse_overlap(cfg.out, data=cfg.data, head=folders or None, backbone=cfg.backbone)
    refuse_pickled_components(cfg.backbone)  # before any model loads
    for task, spec in specs.items():
        if spec not in PRESETS and folder_task(spec) != task:  # before any model loads
            raise InputError(f"{spec}: a {folder_task(spec)} head, but a {task} head is expected here")
    run = RunDir(cfg.out)
    with run.lock():  # one command per run folder, released on any exit
        run.check(cfg, resume)  # a wrong --out or --resume fails before the models load
        return _train_warmup(cfg, run, dataset, resume, backbone, tasks, specs, counts)


def _train_warmup(
    cfg: WarmupConfig,
    run: RunDir,
    dataset: NormalsDataset,
    resume: bool,
    backbone: Backbone | None,
    tasks: tuple[str, ...],
    specs: dict[str, str],
    counts: dict[str, int],
) -> LoopResult:
    """`train_warmup` once the data and the locked run folder are checked."""
    accelerator = make_accelerator(cfg)
    backbone = backbone or load_backbone(
        cfg.backbone, device=accelerator.device, dtype=weights_dtype(cfg.mixed_precision)
    )
    backbone.to(accelerator.device)
    torch.manual_seed(cfg.seed)  # the same initial heads on every process and every resume
    heads = {}
    likelihood = cfg.depth_loss.removesuffix("_nll")
    for task, spec in specs.items():  # normals first: its initial head is a normals-only run's
        classes = getattr(dataset, "classes", None)
        head = build_head(spec, backbone, cfg.resolution, task, classes, likelihood)
        heads[HEAD_FOLDERS[task]] = head.to(accelerator.device)
    if accelerator.is_main_process:  # one writer; the others wait until the folder is ready
        run.start(cfg, resume=resume)
    accelerator.wait_for_everyone()

    caches = make_caches(cfg, run)

    task_losses: dict[str, torch.Tensor] = {}  # each task's loss of the last step, for log.csv
    if tasks == ("normals",):

        def step_fn(models: dict, batch: dict, step: int) -> torch.Tensor:
            return perception_step(backbone, models["head"], batch, cfg, step, accelerator.autocast, caches)

    else:

        def step_fn(models: dict, batch: dict, step: int) -> torch.Tensor:
            autocast = accelerator.autocast
            return multitask_step(backbone, models, batch, cfg, step, autocast, caches, tasks, task_losses)

    names = list(heads)
    result = run_training(
        cfg,
        run,
        dataset,
        heads,
        names[0] if len(names) == 1 else names,
        step_fn,
        accelerator,
        resume=resume,
        log_extra=(lambda: task_losses) if len(tasks) > 1 else None,
    )
    result.skipped = list(dataset.skipped)
    result.label_counts = counts
    return result
