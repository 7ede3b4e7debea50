"""Evaluation on a labelled split (docs/method.md section 9): float predictions, exact pi, pooled pixels."""

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
EVAL_FILES = ("metrics.json", "per_image.csv", "grid.png", "calibration.json", "calibration.png")


@dataclass
class EvalResult:
    """Pooled metrics (degrees / %), per-image rows and the files written."""

    metrics: dict[str, float]
    per_image: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason) of left-out samples
    calibration: dict = field(default_factory=dict)  # CalibrationAccumulator.compute()
    files: dict[str, str] = field(default_factory=dict)


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
) -> EvalResult:
    """Metrics of `predictor` on `data/split`; with `out`, writes metrics.json, per_image.csv, grid.png."""
    from ..distributed import gather_objects, rank_world

    rank, world = rank_world()
    dataset = NormalsDataset(
        data, split, size=None, on_error="skip" if skip_bad_samples else "raise", captions=False
    )
    n = min(len(dataset), limit) if limit else len(dataset)
    subset = torch.utils.data.Subset(dataset, range(rank, n, world))  # process r: every world-th image
    loader = DataLoader(subset, batch_size=batch_size, collate_fn=_collate)
    acc, calib = MetricAccumulator(), CalibrationAccumulator()
    per_image, picture_rows = [], []
    for items in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        x = torch.stack([resize_image(it["image"], predictor.resolution) for it in items])
        pred = predictor(x, out_size=predictor.resolution)
        for it, nrm, kap in zip(items, pred.normal, pred.kappa, strict=True):
            size = tuple(it["normal"].shape[-2:])
            nrm = resize_normals(nrm[None], size)[
                0
            ]  # method section 9: to the ground truth's size, renormalised
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
    if world > 1:  # pool the pixels of every process exactly: concatenate their errors
        parts = gather_objects((acc.state(), per_image, picture_rows, calib.state()))
        acc = MetricAccumulator.from_states([p[0] for p in parts])
        calib = CalibrationAccumulator()
        for p in parts:
            calib.merge(p[3])
        per_image = sorted((r for p in parts for r in p[1]), key=lambda r: r["id"])
        picture_rows = [row for p in parts for row in p[2]][:grid_rows]
    if len(acc) == 0:
        raise InputError(
            f"{Path(data) / split}: no valid ground-truth pixel to evaluate (all normals (0, 0, 0)?)"
        )
    metrics = acc.compute()
    if not all(math.isfinite(float(metrics[k])) for k in METRIC_NAMES):
        raise InputError("the predictions are not finite (NaN): check the head's weights")
    calibration = calib.compute()
    result = EvalResult(
        metrics={k: float(metrics[k]) for k in METRIC_NAMES}
        | {"pixels": len(acc), "calibration_gap": calibration["gap"]},
        calibration=calibration,
        per_image=per_image,
        skipped=list(dataset.skipped),
    )
    if out is not None and rank == 0:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_text(out / "metrics.json", json.dumps(result.metrics, indent=1))
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")  # quotes ids with commas or quotes
        writer.writerow(["id", "pixels", "mean", "median"])
        writer.writerows([r["id"], r["pixels"], f"{r['mean']:.4f}", f"{r['median']:.4f}"] for r in per_image)
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
        save_text(out / "calibration.json", json.dumps(calibration, indent=1))
        save_png(reliability_plot({"head": calibration}), out / "calibration.png")
        result.files = {k: str(out / k) for k in EVAL_FILES}
    return result
