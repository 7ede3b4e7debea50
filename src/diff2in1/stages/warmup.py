"""Stage 1 (docs/method.md section 6): warm-up of the normal head on the frozen backbone's features."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backbone import Backbone, load_backbone, weights_dtype
from ..config import WarmupConfig
from ..data import NormalsDataset
from ..heads import build_head
from ..losses import head_loss
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


def train_warmup(cfg: WarmupConfig, resume: bool = False, backbone: Backbone | None = None) -> LoopResult:
    """Run stage 1 into `cfg.out`; returns the steps, losses and the final head folder."""
    on_error = "skip" if cfg.skip_bad_samples else "raise"
    # Data problems fail before any model loads.
    dataset = NormalsDataset(
        cfg.data, cfg.split, size=cfg.resolution, on_error=on_error, resize=cfg.resize, captions=False
    )
    check_batches(len(dataset), cfg)
    head_path = cfg.head if cfg.head not in ("reference", "small") else None
    refuse_overlap(cfg.out, data=cfg.data, head=head_path, backbone=cfg.backbone)
    refuse_pickled_components(cfg.backbone)  # before any model loads
    run = RunDir(cfg.out)
    with run.lock():  # one command per run folder, released on any exit
        run.check(cfg, resume)  # a wrong --out or --resume fails before the models load
        return _train_warmup(cfg, run, dataset, resume, backbone)


def _train_warmup(
    cfg: WarmupConfig, run: RunDir, dataset: NormalsDataset, resume: bool, backbone: Backbone | None
) -> LoopResult:
    """`train_warmup` once the data and the locked run folder are checked."""
    accelerator = make_accelerator(cfg)
    backbone = backbone or load_backbone(
        cfg.backbone, device=accelerator.device, dtype=weights_dtype(cfg.mixed_precision)
    )
    backbone.to(accelerator.device)
    torch.manual_seed(cfg.seed)  # the same initial head on every process and every resume
    head = build_head(cfg.head, backbone, cfg.resolution).to(accelerator.device)
    if accelerator.is_main_process:  # one writer; the others wait until the folder is ready
        run.start(cfg, resume=resume)
    accelerator.wait_for_everyone()

    caches = make_caches(cfg, run)

    def step_fn(models: dict, batch: dict, step: int) -> torch.Tensor:
        return perception_step(backbone, models["head"], batch, cfg, step, accelerator.autocast, caches)

    result = run_training(cfg, run, dataset, {"head": head}, "head", step_fn, accelerator, resume=resume)
    result.skipped = list(dataset.skipped)
    return result
