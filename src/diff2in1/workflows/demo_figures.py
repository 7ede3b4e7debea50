"""The demo's figures: predictions of the warm-up and the self-improved heads beside the ground
truth, per task (normal maps with errors and uncertainty, depth maps, class maps: each task's own
pictures from `tasks.py`); created samples with every label; losses; calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data import NormalsDataset
from ..data.multitask import MultiTaskDataset
from ..metrics import angular_error_deg
from ..tasks import TASKS
from ..viz import (
    add_colorbar,
    error_to_rgb,
    grid,
    image_to_rgb,
    line_plot,
    normal_to_rgb,
    reliability_plot,
    save_png,
    uncertainty_to_rgb,
    with_normal_key,
)
from ..viz_tasks import depth_range
from .demo import ARMS, CONTROL, EXPLOIT, WARMUP, predictor_of
from .demo_settings import DemoConfig

COLOR_MAX_DEG = 45.0  # colour scale of the error and uncertainty maps
SHOWN = {WARMUP: "warm-up", EXPLOIT: "self-improved"}  # the arms the pictures compare
ROWS = 4  # test scenes shown


def pool_calibration(results: list[dict]) -> dict:
    """Calibration results of several seeds (same bins) -> one: each bin's predicted and observed
    means pooled over the seeds' pixels; "gap" is the mean of the seeds' gaps, as the table shows."""
    pooled: dict[tuple[float, float], list[float]] = {}
    for r in results:
        for b in r["bins"]:
            acc = pooled.setdefault((b["from"], b["to"]), [0, 0.0, 0.0])
            acc[0] += b["pixels"]
            acc[1] += b["predicted"] * b["pixels"]
            acc[2] += b["observed"] * b["pixels"]
    bins = [
        {"from": lo, "to": hi, "pixels": n, "predicted": p / n, "observed": o / n}
        for (lo, hi), (n, p, o) in sorted(pooled.items())
        if n > 0
    ]
    return {"bins": bins, "gap": float(np.mean([r["gap"] for r in results]))}


def _rgb(picture) -> np.ndarray:
    return np.asarray(picture.convert("RGB"))


@torch.no_grad()
def figures(out: Path, data: Path, backbone, runs: dict, cfg: DemoConfig) -> dict[str, str]:
    """Write the figures into `out`; returns name -> file (relative to `out`). Predictions and
    losses of the first seed; calibration of every arm over all seeds."""
    first = next(iter(runs.values()))
    tasks, res = cfg.task_list, (cfg.size, cfg.size)
    if tasks == ("normals",):
        test = NormalsDataset(data, "test", size=res, captions=False)
    else:
        test = MultiTaskDataset(data, "test", tasks, size=res, captions=False)
    items = [test[i] for i in range(min(ROWS, len(test)))]
    predictors = {arm: predictor_of(backbone, first["heads"][arm], res) for arm in SHOWN}
    preds = {arm: [p(it["image"][None]) for it in items] for arm, p in predictors.items()}
    files = {"samples": _normals_figure(out, items, preds)}
    if "depth" in tasks:
        files["depth"] = _depth_figure(out, items, preds)
    if "segmentation" in tasks:
        files["segmentation"] = _segmentation_figure(out, items, preds, test.classes)
    files["losses"] = _losses_figure(out, first)
    short = {CONTROL: "control"}  # the legend has little room; the caption names the control
    calib = {
        short.get(arm, arm): pool_calibration([r["calibration"][arm] for r in runs.values()]) for arm in ARMS
    }
    save_png(reliability_plot(calib, size=(480, 420)), out / "fig_calibration.png")
    files["calibration"] = "fig_calibration.png"
    if len(tasks) > 1:
        files["synthetic_tasks"] = _synthetic_figure(out, data, first["synthetic"], tasks, test.classes, res)
    else:
        preview = sorted(first["synthetic"].glob("preview_*.png"))
        if preview:
            files["synthetic"] = preview[0].relative_to(out).as_posix()
    return files


def _normals_figure(out: Path, items: list[dict], preds: dict) -> str:
    rows = []
    for i, item in enumerate(items):
        mask = item["mask"][0].numpy()
        row = [
            image_to_rgb(item["image"].permute(1, 2, 0).numpy()),
            normal_to_rgb(item["normal"].permute(1, 2, 0).numpy(), mask),
        ]
        for arm in SHOWN:
            p = preds[arm][i]
            err = angular_error_deg(p.normal[0], item["normal"]).numpy()
            row += [
                normal_to_rgb(p.normal[0].permute(1, 2, 0).numpy()),
                np.asarray(add_colorbar(error_to_rgb(err, mask, COLOR_MAX_DEG), COLOR_MAX_DEG)),
                np.asarray(
                    add_colorbar(uncertainty_to_rgb(p.kappa[0, 0].numpy(), COLOR_MAX_DEG), COLOR_MAX_DEG)
                ),
            ]
        rows.append(row)
    labels = ["image", "ground truth"]
    for name in SHOWN.values():
        labels += [name, f"{name} error", f"{name} uncert."]
    save_png(with_normal_key(grid(rows, labels, cell=128)), out / "fig_samples.png")
    return "fig_samples.png"


def _depth_figure(out: Path, items: list[dict], preds: dict) -> str:
    picture = TASKS["depth"].picture
    vmax = depth_range(np.stack([it["depth"][0].numpy() for it in items]))  # one scale for the figure
    rows = []
    for i, item in enumerate(items):
        row = [image_to_rgb(item["image"].permute(1, 2, 0).numpy()), _rgb(picture(item["depth"][0], vmax))]
        row += [_rgb(picture(preds[arm][i].log_depth[0, 0].exp().numpy(), vmax)) for arm in SHOWN]
        rows.append(row)
    save_png(grid(rows, ["image", "ground truth", *SHOWN.values()], cell=128), out / "fig_depth.png")
    return "fig_depth.png"


def _segmentation_figure(out: Path, items: list[dict], preds: dict, classes) -> str:
    picture = TASKS["segmentation"].picture
    rows = []
    for i, item in enumerate(items):
        row = [
            image_to_rgb(item["image"].permute(1, 2, 0).numpy()),
            _rgb(picture(item["classes"].numpy(), class_list=classes)),
        ]
        row += [_rgb(picture(preds[arm][i].logits[0].argmax(0).numpy(), class_list=classes)) for arm in SHOWN]
        rows.append(row)
    labels = ["image", "ground truth", *SHOWN.values()]
    save_png(grid(rows, labels, cell=128), out / "fig_segmentation.png")
    return "fig_segmentation.png"


def _synthetic_figure(out: Path, data: Path, synthetic: Path, tasks, classes, res) -> str:
    """Source scene, created image and each task's created label, for the first created samples."""
    made = MultiTaskDataset(synthetic, "train", tasks, size=None, captions=False, classes=classes)
    source = NormalsDataset(data, "train", size=res, labels=False, captions=False)
    rows = []
    for i in range(min(ROWS, len(made))):
        it = made[i]
        meta = json.loads((synthetic / "meta" / f"{it['id']}.json").read_text())  # names its source
        src = source[source.ids.index(meta["source_id"])]
        row = [
            image_to_rgb(src["image"].permute(1, 2, 0).numpy()),
            image_to_rgb(it["image"].permute(1, 2, 0).numpy()),
            normal_to_rgb(it["normal"].permute(1, 2, 0).numpy(), it["mask"][0].numpy()),
        ]
        if "depth" in tasks:
            row.append(_rgb(TASKS["depth"].picture(it["depth"][0])))
        if "segmentation" in tasks:
            row.append(_rgb(TASKS["segmentation"].picture(it["classes"].numpy(), class_list=classes)))
        rows.append(row)
    labels = ["source", "created RGB", "its normals", *(f"its {t}" for t in tasks if t != "normals")]
    save_png(grid(rows, labels, cell=128), out / "fig_synthetic.png")
    return "fig_synthetic.png"


def _losses_figure(out: Path, first: dict) -> str:
    losses = {"warm-up": first["warm"]["losses"], "self-improve": first["si"]["losses"]}
    losses["control"] = first["control"]["losses"]
    start = len(losses["warm-up"])  # both later stages continue from the warm-up head
    plot = line_plot(
        losses,
        "training loss per step (smoothed over 5 steps)",
        smooth=5,
        offsets={"self-improve": start, "control": start},
        xlabel="optimizer step",
        ylabel="loss",
    )
    save_png(plot, out / "fig_losses.png")
    return "fig_losses.png"
