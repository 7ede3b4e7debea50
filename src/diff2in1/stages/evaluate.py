"""Evaluation on a labelled split (docs/method.md section 9): float predictions, exact pi, pooled pixels;
depth per image and segmentation from a pooled confusion matrix for a head set (docs/multitask.md)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..atomic import save_text
from ..data import NormalsDataset
from ..errors import InputError
from ..inference.image_processor import resize_image, resize_map, resize_normals
from ..inference.predictor import NormalPredictor
from ..inference.uncertainty import expected_error
from ..metrics import CalibrationAccumulator, MetricAccumulator, angular_error_deg
from ..viz import (
    error_to_rgb,
    grid,
    image_to_rgb,
    normal_to_rgb,
    reliability_plot,
    save_png,
    uncertainty_to_rgb,
    with_normal_key,
)

METRIC_NAMES = ("mean", "median", "rmse", "a11", "a22", "a30")
METRIC_LABELS = {
    "mean": "mean",
    "median": "median",
    "rmse": "rmse",
    "a11": "<11.25",
    "a22": "<22.5",
    "a30": "<30",
}

# The files `evaluate` writes into its output folder.
# Every file `evaluate` may write into its --out (per task); the CLI takes an existing folder only
# when it holds nothing else.
EVAL_FILES = (
    "metrics.json",
    "tables.md",
    "per_image.csv",
    "grid.png",
    "calibration.json",
    "calibration.png",
    "per_image_depth.csv",
    "grid_depth.png",
    "segmentation_classes.csv",
    "grid_segmentation.png",
)


@dataclass
class EvalResult:
    """Pooled metrics (degrees / %), per-image rows and the files written."""

    metrics: dict[str, float]
    per_image: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason) of left-out samples
    calibration: dict = field(default_factory=dict)  # CalibrationAccumulator.compute()
    files: dict[str, str] = field(default_factory=dict)
    task_metrics: dict[str, dict] = field(default_factory=dict)  # "depth" / "segmentation" -> metrics


def _collate(items: list[dict]) -> list[dict]:
    return items  # images may differ in size: the predictor resizes each


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """Metric rows (name -> metrics) as a Markdown table."""
    names = list(METRIC_NAMES) + (
        ["calibration_gap"] if all("calibration_gap" in m for m in rows.values()) else []
    )
    labels = {**METRIC_LABELS, "calibration_gap": "calib. gap"}
    head = "| head | " + " | ".join(labels[m] for m in names) + " |"
    sep = "|---" * (len(names) + 1) + "|"
    body = [f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in names) + " |" for name, m in rows.items()]
    return "\n".join([head, sep, *body])


def format_task_table(task: str, rows: dict[str, dict]) -> str:
    """Depth or segmentation metric rows (name -> metrics) as a Markdown table (depth errors in
    metres where they have units; deltas and segmentation scores as fractions)."""
    names = DEPTH_TABLE if task == "depth" else SEGMENTATION_TABLE
    head = "| head | " + " | ".join(names) + " |"
    sep = "|---" * (len(names) + 1) + "|"
    body = [f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in names) + " |" for name, m in rows.items()]
    return "\n".join([head, sep, *body])


DEPTH_TABLE = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3")
SEGMENTATION_TABLE = ("miou", "pixel_acc", "mean_acc")


def evaluate(
    predictor: NormalPredictor,
    data: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    batch_size: int = 4,
    grid_rows: int = 6,
    progress: bool = True,
    limit: int = 0,
    skip_bad_samples: bool = False,
    max_depth: float = 10.0,
    eigen_crop: bool = False,
) -> EvalResult:
    """Metrics of `predictor` on `data/split`; with `out`, writes metrics.json, per_image.csv, grid.png.

    A `TaskPredictor` (a head set) is evaluated on every task it has a head for, from one backbone
    pass per batch: normals as above; depth per image over valid pixels (gt > 0, <= `max_depth`, the
    Eigen crop with `eigen_crop`), averaged over images; segmentation from one confusion matrix
    pooled over the set. Their metrics go to `EvalResult.task_metrics` and, under their task's
    name, into metrics.json (the normal metrics stay at its top level), with per_image_depth.csv,
    segmentation_classes.csv, grid_depth.png and grid_segmentation.png.
    """
    from ..data.multitask import MultiTaskDataset
    from ..distributed import gather_objects, rank_world
    from ..metrics import DepthAccumulator, SegmentationAccumulator

    rank, world = rank_world()
    tasks = tuple(getattr(predictor, "tasks", ("normals",)))
    on_error = "skip" if skip_bad_samples else "raise"
    if tasks == ("normals",):
        dataset = NormalsDataset(data, split, size=None, on_error=on_error, captions=False)
    else:
        dataset = MultiTaskDataset(data, split, tasks, size=None, on_error=on_error, captions=False)
    seg_head = getattr(predictor, "segmentation_head", None)
    if seg_head is not None:
        have = dataset.classes
        if have is not None and list(have.names) != list(seg_head.config.class_names):
            raise InputError(
                f"{Path(data) / 'classes.json'}: {len(have)} classes, but the segmentation head was "
                f"trained on {len(seg_head.config.class_names)} others"
            )
    n = min(len(dataset), limit) if limit else len(dataset)
    subset = torch.utils.data.Subset(dataset, range(rank, n, world))  # process r: every world-th image
    loader = DataLoader(subset, batch_size=batch_size, collate_fn=_collate)
    acc, calib = MetricAccumulator(), CalibrationAccumulator()
    depth_acc = DepthAccumulator(max_depth=max_depth, eigen_crop=eigen_crop)
    seg_acc = SegmentationAccumulator(len(seg_head.config.class_names)) if seg_head is not None else None
    per_image, picture_rows = [], []
    depth_rows: list[dict] = []
    task_pictures: dict[str, list] = {"depth": [], "segmentation": []}
    for items in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        x = torch.stack([resize_image(it["image"], predictor.resolution) for it in items])
        pred = predictor(x, out_size=predictor.resolution)
        for j, it in enumerate(items):
            if "normals" in tasks:
                nrm, kap = pred.normal[j], pred.kappa[j]
                _normals_item(it, nrm, kap, acc, calib, per_image, picture_rows, grid_rows)
            if "depth" in tasks and it["has_depth"]:
                size = tuple(it["depth"].shape[-2:])
                log_d = resize_map(pred.log_depth[j : j + 1], size)[0, 0].cpu()
                _refuse_non_finite(log_d, "depth")  # the depth metrics would let NaN pass unnoticed
                depth = log_d.double().exp()
                m = depth_acc.update(depth, it["depth"][0], key=it["index"])
                if m is not None:
                    depth_rows.append({"id": it["id"], **m})
                if len(task_pictures["depth"]) < grid_rows:
                    unc = depth * resize_map(pred.log_scale[j : j + 1], size)[0, 0].cpu().double().exp()
                    task_pictures["depth"].append((it["image"], it["depth"][0], depth, unc))
            if "segmentation" in tasks and it["has_segmentation"]:
                size = tuple(it["classes"].shape[-2:])
                logits = resize_map(pred.logits[j : j + 1], size)[0]
                _refuse_non_finite(logits, "segmentation")  # argmax of NaN logits is still a class
                classes = logits.argmax(0).cpu()
                seg_acc.update(classes, it["classes"])
                if len(task_pictures["segmentation"]) < grid_rows:
                    task_pictures["segmentation"].append((it["image"], it["classes"], classes))
    if world > 1:  # pool every process's state exactly: concatenated errors, per-image rows, matrices
        state = (
            acc.state(), per_image, picture_rows, calib.state(), depth_acc.state(), depth_acc.n_empty,
            depth_rows, seg_acc.state() if seg_acc is not None else None, task_pictures,
        )  # fmt: skip
        parts = gather_objects(state)
        acc = MetricAccumulator.from_states([p[0] for p in parts])
        calib = CalibrationAccumulator()
        for p in parts:
            calib.merge(p[3])
        per_image = sorted((r for p in parts for r in p[1]), key=lambda r: r["id"])
        picture_rows = [row for p in parts for row in p[2]][:grid_rows]
        depth_acc = DepthAccumulator(max_depth=max_depth, eigen_crop=eigen_crop)
        for p in parts:
            depth_acc.merge(p[4])
            depth_acc.n_empty += p[5]
        depth_rows = [r for p in parts for r in p[6]]
        if seg_acc is not None:
            seg_acc = SegmentationAccumulator(seg_acc.num_classes)
            for p in parts:
                seg_acc.merge(p[7])
        task_pictures = {t: [r for p in parts for r in p[8][t]][:grid_rows] for t in task_pictures}
    depth_rows.sort(key=lambda r: r["id"])
    result = EvalResult(metrics={}, skipped=list(dataset.skipped))
    if "normals" in tasks:
        if len(acc) == 0:
            raise InputError(
                f"{Path(data) / split}: no valid ground-truth pixel to evaluate (all normals (0, 0, 0)?)"
            )
        metrics = acc.compute()
        if not all(math.isfinite(float(metrics[k])) for k in METRIC_NAMES):
            raise InputError("the predictions are not finite (NaN): check the head's weights")
        calibration = calib.compute()
        result.metrics = {k: float(metrics[k]) for k in METRIC_NAMES} | {
            "pixels": len(acc),
            "calibration_gap": calibration["gap"],
        }
        result.calibration, result.per_image = calibration, per_image
    if "depth" in tasks:
        if not len(depth_acc):
            raise InputError(f"{Path(data) / split}: no image with a valid depth pixel to evaluate")
        dm = depth_acc.compute()
        if not all(math.isfinite(dm[k]) for k in DEPTH_TABLE):
            raise InputError("the depth predictions are not finite (NaN): check the depth head's weights")
        result.task_metrics["depth"] = dm | {"max_depth": max_depth, "eigen_crop": eigen_crop}
    if "segmentation" in tasks:
        if seg_acc.matrix.sum() == 0:
            raise InputError(f"{Path(data) / split}: no labelled class pixel to evaluate")
        sm = seg_acc.compute()
        sm["classes"] = list(seg_head.config.class_names)
        result.task_metrics["segmentation"] = sm
    if out is not None and rank == 0:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_text(out / "metrics.json", json.dumps(result.metrics | result.task_metrics, indent=1))
        result.files["metrics.json"] = str(out / "metrics.json")
        if "normals" in tasks:
            _write_normal_reports(out, result, picture_rows)
        if "depth" in tasks:
            _write_depth_reports(out, result, depth_rows, task_pictures["depth"], max_depth)
        if "segmentation" in tasks:
            _write_segmentation_reports(out, result, task_pictures["segmentation"], seg_head.class_list())
        if tasks != ("normals",):
            save_text(out / "tables.md", tables_markdown(result, "head") + "\n")
            result.files["tables.md"] = str(out / "tables.md")
    return result


def _refuse_non_finite(prediction: torch.Tensor, task: str) -> None:
    if not bool(torch.isfinite(prediction).all()):
        raise InputError(f"the {task} predictions are not finite (NaN): check the {task} head's weights")


def tables_markdown(result: EvalResult, name: str) -> str:
    """One Markdown table per task of `result` (what the console and tables.md show)."""
    parts = []
    if result.metrics:
        title = "normals (angular error, degrees; shares in %)"
        parts.append(title + "\n\n" + format_table({name: result.metrics}))
    if "depth" in result.task_metrics:
        m = result.task_metrics["depth"]
        crop = ", Eigen crop" if m["eigen_crop"] else ""
        title = f"depth (metres; per image, {m['n_images']} images, gt <= {m['max_depth']:g} m{crop})"
        parts.append(title + "\n\n" + format_task_table("depth", {name: m}))
    if "segmentation" in result.task_metrics:
        m = result.task_metrics["segmentation"]
        title = (
            f"segmentation (one confusion matrix, {m['n_pixels']} pixels, "
            f"{m['n_classes_present']} classes present)"
        )
        parts.append(title + "\n\n" + format_task_table("segmentation", {name: m}))
    return "\n\n".join(parts)


def _normals_item(it, nrm, kap, acc, calib, per_image, picture_rows, grid_rows) -> None:
    size = tuple(it["normal"].shape[-2:])
    nrm = resize_normals(nrm[None], size)[0]  # method section 9: to the ground truth's size, renormalised
    kap = resize_map(kap[None], size)[0]
    mask = it["mask"][0]
    err = angular_error_deg(nrm.cpu(), it["normal"]).float()  # (H, W) degrees
    valid = err[mask]
    acc.add_errors(valid)
    calib.add(torch.rad2deg(expected_error(kap[0].cpu().double()))[mask], valid)
    per_image.append(
        {
            "id": it["id"],
            "pixels": int(valid.numel()),
            "mean": float(valid.mean()) if valid.numel() else float("nan"),
            "median": float(valid.median()) if valid.numel() else float("nan"),
        }
    )
    if len(picture_rows) < grid_rows:
        m = mask.numpy()
        picture_rows.append(
            [
                image_to_rgb(it["image"].permute(1, 2, 0).numpy()),
                normal_to_rgb(it["normal"].permute(1, 2, 0).numpy(), m),
                normal_to_rgb(nrm.permute(1, 2, 0).cpu().numpy()),
                error_to_rgb(err.numpy(), m),
                uncertainty_to_rgb(kap[0].cpu().numpy()),
            ]
        )


def _write_normal_reports(out: Path, result: EvalResult, picture_rows: list) -> None:
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")  # quotes ids with commas or quotes
    writer.writerow(["id", "pixels", "mean", "median"])
    writer.writerows(
        [r["id"], r["pixels"], f"{r['mean']:.4f}", f"{r['median']:.4f}"] for r in result.per_image
    )
    save_text(out / "per_image.csv", table.getvalue())
    save_png(
        with_normal_key(
            grid(
                picture_rows,
                ["image", "ground truth", "prediction", "error (0-45 deg)", "uncertainty (0-45 deg)"],
                cell=160,
            )
        ),
        out / "grid.png",
    )
    save_text(out / "calibration.json", json.dumps(result.calibration, indent=1))
    save_png(reliability_plot({"head": result.calibration}), out / "calibration.png")
    names = ("per_image.csv", "grid.png", "calibration.json", "calibration.png")
    result.files.update({k: str(out / k) for k in names})


def _write_depth_reports(
    out: Path, result: EvalResult, rows: list[dict], pictures: list, vmax: float
) -> None:
    import numpy as np

    from ..viz_tasks import depth_to_rgb

    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["id", *DEPTH_TABLE])
    writer.writerows([r["id"], *(f"{r[k]:.5f}" for k in DEPTH_TABLE)] for r in rows)
    save_text(out / "per_image_depth.csv", table.getvalue())
    cells = [
        [
            image_to_rgb(img.permute(1, 2, 0).numpy()),
            depth_to_rgb(gt.numpy(), vmax),
            depth_to_rgb(pred.numpy().astype(np.float32), vmax),
            depth_to_rgb(unc.numpy().astype(np.float32), vmax / 10),
        ]
        for img, gt, pred, unc in pictures
    ]
    labels = ["image", "ground truth", f"depth (0-{vmax:g} m)", f"uncertainty (0-{vmax / 10:g} m)"]
    save_png(grid(cells, labels, cell=160), out / "grid_depth.png")
    result.files.update({k: str(out / k) for k in ("per_image_depth.csv", "grid_depth.png")})


def _write_segmentation_reports(out: Path, result: EvalResult, pictures: list, class_list) -> None:
    from ..viz_tasks import classes_to_rgb

    m = result.task_metrics["segmentation"]
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["id", "class", "iou", "acc"])
    for i, name in enumerate(m["classes"]):
        iou, acc = m["iou"][i], m["acc"][i]
        writer.writerow([i, name, "" if iou is None else f"{iou:.5f}", "" if acc is None else f"{acc:.5f}"])
    save_text(out / "segmentation_classes.csv", table.getvalue())
    cells = [
        [
            image_to_rgb(img.permute(1, 2, 0).numpy()),
            classes_to_rgb(gt.numpy(), class_list),
            classes_to_rgb(pred.numpy(), class_list),
        ]
        for img, gt, pred in pictures
    ]
    save_png(grid(cells, ["image", "ground truth", "prediction"], cell=160), out / "grid_segmentation.png")
    result.files.update({k: str(out / k) for k in ("segmentation_classes.csv", "grid_segmentation.png")})
