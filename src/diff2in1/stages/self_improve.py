"""Stage 2 (docs/method.md section 8): self-improving learning with a creation and an
exploitation head.

Exploitation (E) trains on original (ground truth) + synthetic samples, whose targets are the
creation head's (C) predictions on the synthetic image, made without gradient. C follows E by
an exponential moving average over all parameters and buffers.

With `tasks` (docs/multitask.md), every task has its own pair: `creation` / `exploitation` for
normals (the names of a normals-only run), `creation_<task>` / `exploitation_<task>` for depth and
segmentation. One backbone pass per step feeds every head; the step's loss is the weighted sum of
the tasks' losses; every creation head follows its exploitation head by the same EMA rule.
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
from ..data.multitask import MultiTaskDataset, parse_tasks
from ..errors import InputError
from ..heads import NormalHead, build_head, folder_task
from ..losses import depth_nll, head_loss, segmentation_ce
from ..model_files import refuse_pickled_components
from ..path_overlap import refuse_overlap
from ..pseudo_labels import depth_confidence, label_weights, normal_confidence, segmentation_confidence
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
    paths: list[str], resolution: tuple[int, int], resize: str = "research", tasks=("normals",)
) -> list[Dataset]:
    if tuple(tasks) == ("normals",):
        return [NormalsDataset(p, "train", size=resolution, resize=resize, captions=False) for p in paths]
    return [
        MultiTaskDataset(p, "train", tasks, size=resolution, resize=resize, captions=False) for p in paths
    ]


def pair_names(task: str) -> tuple[str, str]:
    """(creation, exploitation) model names of a task: a normals-only run's names for normals."""
    return ("creation", "exploitation") if task == "normals" else (f"creation_{task}", f"exploitation_{task}")


def init_folder(cfg: SelfImproveConfig, task: str) -> str:
    """The warm-up head a task starts from: `init` for normals; `<task>_init`, else the folder
    `train-warmup --tasks` saves beside `init` (head_depth, head_segmentation)."""
    if task == "normals":
        return cfg.init
    return getattr(cfg, f"{task}_init") or str(Path(cfg.init).parent / f"head_{task}")


@torch.no_grad()
def _creation_output(creation: nn.Module, feats, size):
    was_training = creation.training
    out = creation.eval()(feats, image_size=size)
    creation.train(was_training)
    return out


def dense_self_improve_loss(
    task: str, creation: nn.Module, exploitation: nn.Module, feats, size, batch: dict, cfg
) -> torch.Tensor:
    """One depth or segmentation loss on a mixed batch: ground truth on labelled samples, the
    creation head's labels (no gradient) on synthetic ones, weighted or filtered by its confidence
    as `cfg.pseudo_labels` says (docs/method.md section 8)."""
    device = feats.low.device
    labelled = torch.as_tensor(batch["labelled"], device=device).view(-1).bool()
    present = batch[f"has_{task}"].to(device).bool() | ~labelled
    synthetic = not bool(labelled.all())
    pred = _creation_output(creation, feats, size) if synthetic else None
    out = exploitation(feats, image_size=size)
    real = labelled.view(-1, 1, 1, 1)
    if task == "depth":
        target = batch["depth"].to(device).float()
        if synthetic:
            target = torch.where(real, target, pred.depth)
        mask, weight = torch.isfinite(target) & (target > 0), None
        if synthetic and cfg.pseudo_labels != "research":
            mask, weight = label_weights(
                cfg.pseudo_labels, depth_confidence(pred.log_scale), labelled, mask, cfg.pseudo_label_quantile
            )
        kind = cfg.depth_loss
        return depth_nll(out.log_depth, out.log_scale, target, mask, present, kind, weight=weight)
    target = batch["classes"].to(device).long()[:, None]  # (B, 1, H, W), 255 = ignore
    if synthetic:
        target = torch.where(real, target, pred.classes[:, None])
    weight = None
    if synthetic and cfg.pseudo_labels != "research":
        mask, weight = label_weights(
            cfg.pseudo_labels,
            segmentation_confidence(pred.logits),
            labelled,
            target != 255,
            cfg.pseudo_label_quantile,
        )
        target = torch.where(mask, target, torch.full_like(target, 255))
    return segmentation_ce(out.logits, target[:, 0], weight=weight, present=present)


def train_self_improve(
    cfg: SelfImproveConfig, resume: bool = False, backbone: Backbone | None = None
) -> LoopResult:
    """Run stage 2 into `cfg.out`; final heads in `<out>/creation` and `<out>/exploitation`."""
    if cfg.feature_cache != "none" and cfg.recreate_every:
        raise InputError("train-self-improve: --feature-cache cannot be combined with --recreate-every")
    if not cfg.synthetic and not cfg.recreate_every:
        raise InputError("train-self-improve: give --synthetic SYN (or --recreate-every to make it here)")
    tasks = parse_tasks(cfg.tasks)
    on_error = "skip" if cfg.skip_bad_samples else "raise"
    if tasks == ("normals",):  # the research data path, unchanged
        labelled_set = NormalsDataset(
            cfg.data, cfg.split, size=cfg.resolution, on_error=on_error, resize=cfg.resize, captions=False
        )
    else:
        labelled_set = MultiTaskDataset(
            cfg.data, cfg.split, tasks, size=cfg.resolution, resize=cfg.resize, on_error=on_error,
            captions=False,
        )  # fmt: skip
        for task in (t for t in tasks if t != "normals"):
            folder = init_folder(cfg, task)
            if not Path(folder).is_dir():
                raise InputError(f"--{task}-init {folder}: no such head folder")
            if folder_task(folder) != task:  # before any model loads
                have = folder_task(folder)
                raise InputError(f"{folder}: a {have} head, but a {task} head is expected here")
    original = Tagged(labelled_set, True)
    synthetic = [
        Tagged(d, False) for d in synthetic_dataset(cfg.synthetic, cfg.resolution, cfg.resize, tasks)
    ]
    n_synthetic = sum(len(d) for d in synthetic) or len(original) * cfg.create.get("samples_per_image", 1)
    check_batches(len(original) + n_synthetic, cfg)
    models = {"init": cfg.init, "backbone": cfg.backbone}  # model folders are inputs too
    models.update({f"{t}_init": init_folder(cfg, t) for t in tasks if t != "normals"})
    refuse_overlap(cfg.out, data=cfg.data, synthetic=list(cfg.synthetic), **models)
    refuse_pickled_components(cfg.backbone)  # before any model loads
    run = RunDir(cfg.out)
    with run.lock():  # one command per run folder, released on any exit
        run.check(cfg, resume)  # a wrong --out or --resume fails before the models load
        return _train_self_improve(cfg, run, original, synthetic, resume, backbone, tasks)


def _train_self_improve(
    cfg: SelfImproveConfig,
    run: RunDir,
    original: Tagged,
    synthetic: list[Tagged],
    resume: bool,
    backbone: Backbone | None,
    tasks: tuple[str, ...],
) -> LoopResult:
    """`train_self_improve` once the data and the locked run folder are checked."""
    accelerator = make_accelerator(cfg)
    backbone = backbone or load_backbone(
        cfg.backbone, device=accelerator.device, dtype=weights_dtype(cfg.mixed_precision)
    )
    backbone.to(accelerator.device)
    models: dict[str, nn.Module] = {}
    for task in tasks:
        c_name, e_name = pair_names(task)
        exploitation = build_head(init_folder(cfg, task), backbone, cfg.resolution, task)
        models[e_name] = exploitation.to(accelerator.device)
        models[c_name] = copy.deepcopy(models[e_name]).requires_grad_(False)
    if tasks == ("normals",):
        models = {"creation": models["creation"], "exploitation": models["exploitation"]}
    if accelerator.is_main_process:  # one writer; the others wait until the folder is ready
        run.start(cfg, resume=resume)
    accelerator.wait_for_everyone()
    rank = accelerator.process_index
    task_losses: dict[str, torch.Tensor] = {}  # each task's loss of the last step, for log.csv

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

    def multitask_step_fn(models: dict, batch: dict, step: int) -> torch.Tensor:
        images = batch["image"].to(accelerator.device, non_blocking=True)
        size = tuple(images.shape[-2:])
        indices = [int(i) for i in batch["index"]]
        feats = step_features(backbone, images, indices, cfg, step, accelerator.autocast, caches)
        total = images.new_zeros(())
        for task in tasks:
            c_name, e_name = pair_names(task)
            if task == "normals":
                target, mask, weight = mixed_targets(
                    models[c_name], feats, size, batch, cfg.pseudo_labels, cfg.pseudo_label_quantile
                )
                points = [mix_seed(cfg.seed, step, i, 1) for i in indices]
                out = models[e_name](feats, image_size=size, gt_mask=mask, point_seeds=points)
                loss = head_loss(out, target, mask, kind=cfg.loss, weight=weight)
            else:
                loss = dense_self_improve_loss(task, models[c_name], models[e_name], feats, size, batch, cfg)
            task_losses[f"loss_{task}"] = loss.detach()
            total = total + getattr(cfg, f"{task}_weight") * loss
        return total

    def after_step(step: int) -> None:
        if ema_due(step, cfg.ema_every):
            for task in tasks:
                c_name, e_name = pair_names(task)
                ema_update(models[c_name], accelerator.unwrap_model(models[e_name]), cfg.ema_decay)

    def creation_heads():
        """What re-creation runs: the normal creation head, or every task's creation head."""
        if tasks == ("normals",):
            return models["creation"]
        return {task: models[pair_names(task)[0]] for task in tasks}

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
            creation_heads(),
            rank=rank,
            world=accelerator.num_processes,
            strict=False,
        )
        accelerator.wait_for_everyone()
        fresh = [
            Tagged(d, False) for d in synthetic_dataset([str(out)], cfg.resolution, cfg.resize, tasks)
        ]
        if caches.posterior is not None and made.get("latest") != latest:
            caches.posterior = PosteriorCache()  # indices now name other synthetic images
        made["latest"] = latest
        return Indexed(ConcatDataset([original, *fresh]))

    dataset = Indexed(ConcatDataset([original, *synthetic]))
    trained = [pair_names(t)[1] for t in tasks]
    result = run_training(
        cfg,
        run,
        dataset,
        models,
        trained[0] if len(trained) == 1 else trained,
        step_fn if tasks == ("normals",) else multitask_step_fn,
        accelerator,
        resume=resume,
        after_step=after_step,
        before_epoch=before_epoch if cfg.recreate_every else None,
        log_extra=(lambda: task_losses) if len(tasks) > 1 else None,
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
