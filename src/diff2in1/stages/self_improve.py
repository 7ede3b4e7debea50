"""Stage 2 (docs/method.md section 8): self-improving learning with a creation and an
exploitation head.

Exploitation (E) trains on original (ground truth) + synthetic samples, whose targets are the
creation head's (C) predictions on the synthetic image, made without gradient. C follows E by
an exponential moving average over all parameters and buffers.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from ..backbone import Backbone, load_backbone, weights_dtype
from ..config import CreateConfig, SelfImproveConfig
from ..data import NormalsDataset
from ..errors import InputError
from ..heads import NormalHead, build_head
from ..losses import head_loss
from ..path_overlap import refuse_overlap
from ..pseudo_labels import label_weights, normal_confidence
from ..training.feature_cache import PosteriorCache
from ..training.loop import LoopResult, check_batches, make_accelerator, mix_seed, run_training
from ..training.run_folder import RunDir
from .create import create_data
from .warmup import make_caches, step_features


class Tagged(Dataset):
    """Adds `labelled` (bool) to each item of a dataset."""

    def __init__(self, dataset: Dataset, labelled: bool) -> None:
        self.dataset, self.labelled = dataset, labelled

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[i], "labelled": self.labelled}


@torch.no_grad()
def ema_update(creation: nn.Module, exploitation: nn.Module, decay: float) -> None:
    """C <- decay * C + (1 - decay) * E over all parameters and float buffers (others copied)."""
    c_state, e_state = creation.state_dict(), exploitation.state_dict()
    for name, c in c_state.items():
        e = e_state[name]
        if c.is_floating_point():
            c.mul_(decay).add_(e.to(c.dtype), alpha=1 - decay)
        else:
            c.copy_(e)


def ema_due(step: int, every: int) -> bool:
    """After optimizer step `step` (1-based): the research rule `i > 0 and i % every == 0` on the
    0-based index i = step - 1."""
    i = step - 1
    return every > 0 and i > 0 and i % every == 0


def mixed_targets(
    creation: NormalHead, feats, size: tuple[int, int], batch: dict, pseudo_labels: str = "research",
    quantile: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Targets (B, 3, H, W), masks (B, 1, H, W) and per-pixel weights (B, 1, H, W) or None: ground
    truth for labelled samples, the creation head's prediction (eval mode, no gradient) for
    synthetic ones, weighted or filtered by its confidence as `pseudo_labels` says
    (`diff2in1.pseudo_labels`; "research": every synthetic pixel alike, weights None)."""
    device = feats.low.device
    labelled = torch.as_tensor(batch["labelled"], device=device).view(-1)
    target = batch["normal"].to(device)
    mask = batch["mask"].to(device)
    weight = None
    if not bool(labelled.all()):
        with torch.no_grad():
            was_training = creation.training
            pred = creation.eval()(feats, image_size=size)
            creation.train(was_training)
        target = torch.where(labelled.view(-1, 1, 1, 1), target, pred.normal)
        if pseudo_labels != "research":
            confidence = normal_confidence(pred.kappa)
            mask, weight = label_weights(pseudo_labels, confidence, labelled, mask.bool(), quantile)
    return target, mask, weight


def synthetic_dataset(
    paths: list[str], resolution: tuple[int, int], resize: str = "research"
) -> list[NormalsDataset]:
    return [NormalsDataset(p, "train", size=resolution, resize=resize, captions=False) for p in paths]


def train_self_improve(
    cfg: SelfImproveConfig, resume: bool = False, backbone: Backbone | None = None
) -> LoopResult:
    """Run stage 2 into `cfg.out`; final heads in `<out>/creation` and `<out>/exploitation`."""
    if cfg.feature_cache != "none" and cfg.recreate_every:
        raise InputError("train-self-improve: --feature-cache cannot be combined with --recreate-every")
    if not cfg.synthetic and not cfg.recreate_every:
        raise InputError("train-self-improve: give --synthetic SYN (or --recreate-every to make it here)")
    on_error = "skip" if cfg.skip_bad_samples else "raise"
    original = Tagged(
        NormalsDataset(
            cfg.data, cfg.split, size=cfg.resolution, on_error=on_error, resize=cfg.resize, captions=False
        ),
        True,
    )
    synthetic = [Tagged(d, False) for d in synthetic_dataset(cfg.synthetic, cfg.resolution, cfg.resize)]
    n_synthetic = sum(len(d) for d in synthetic) or len(original) * cfg.create.get("samples_per_image", 1)
    check_batches(len(original) + n_synthetic, cfg)
    refuse_overlap(cfg.out, data=cfg.data, synthetic=list(cfg.synthetic), init=cfg.init)
    run = RunDir(cfg.out)
    run.check(cfg, resume)  # a wrong --out or --resume fails before the models load
    accelerator = make_accelerator(cfg)
    backbone = backbone or load_backbone(
        cfg.backbone, device=accelerator.device, dtype=weights_dtype(cfg.mixed_precision)
    )
    backbone.to(accelerator.device)
    exploitation = build_head(cfg.init, backbone, cfg.resolution).to(accelerator.device)
    if accelerator.is_main_process:  # one writer; the others wait until the folder is ready
        run.start(cfg, resume=resume)
    accelerator.wait_for_everyone()
    creation = copy.deepcopy(exploitation).requires_grad_(False)
    models = {"creation": creation, "exploitation": exploitation}
    rank = accelerator.process_index

    caches = make_caches(cfg, run)

    def step_fn(models: dict, batch: dict, step: int) -> torch.Tensor:
        images = batch["image"].to(accelerator.device, non_blocking=True)
        size = tuple(images.shape[-2:])
        indices = [int(i) for i in batch["index"]]
        feats = step_features(backbone, images, indices, cfg, step, accelerator.autocast, caches)
        target, mask, weight = mixed_targets(
            models["creation"], feats, size, batch, cfg.pseudo_labels, cfg.pseudo_label_quantile
        )
        points = [mix_seed(cfg.seed, step, i, 1) for i in indices]
        out = models["exploitation"](feats, image_size=size, gt_mask=mask, point_seeds=points)
        return head_loss(out, target, mask, kind=cfg.loss, weight=weight)

    def after_step(step: int) -> None:
        if ema_due(step, cfg.ema_every):
            ema_update(models["creation"], accelerator.unwrap_model(models["exploitation"]), cfg.ema_decay)

    made: dict[str, int] = {}  # which re-created set the caches describe

    def before_epoch(epoch: int) -> Dataset:
        """The epoch's data: the given synthetic sets, or the latest set re-created by C."""
        every = cfg.recreate_every
        latest = (epoch // every) * every
        if latest == 0 and synthetic:
            return Indexed(ConcatDataset([original, *synthetic]))
        out = Path(cfg.out) / f"synthetic_epoch_{latest:04d}"
        settings = {
            "data": cfg.data,
            "backbone": cfg.backbone,
            "out": str(out),
            "resolution": cfg.resolution,
            "resize": cfg.resize,
            "seed": cfg.seed + latest,
            "progress": cfg.progress,
            **cfg.create,
        }
        # Resumable: a set made before an interruption is completed, not re-made.
        create_data(
            dataclasses.replace(CreateConfig(), **settings),
            backbone,
            models["creation"],
            rank=rank,
            world=accelerator.num_processes,
            strict=False,
        )
        accelerator.wait_for_everyone()
        fresh = [Tagged(d, False) for d in synthetic_dataset([str(out)], cfg.resolution, cfg.resize)]
        if caches.posterior is not None and made.get("latest") != latest:
            caches.posterior = PosteriorCache()  # indices now name other synthetic images
        made["latest"] = latest
        return Indexed(ConcatDataset([original, *fresh]))

    dataset = Indexed(ConcatDataset([original, *synthetic]))
    result = run_training(
        cfg,
        run,
        dataset,
        models,
        "exploitation",
        step_fn,
        accelerator,
        resume=resume,
        after_step=after_step,
        before_epoch=before_epoch if cfg.recreate_every else None,
    )
    result.skipped = list(original.dataset.skipped)
    return result


class Indexed(Dataset):
    """A dataset whose items' `index` is their position in it (so seeds are unique across parts)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[i], "index": i}
