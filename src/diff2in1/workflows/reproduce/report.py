"""`report.md`: the reproduction's metrics beside the published numbers, with their sources."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from ...config import (
    ReproduceConfig,
)
from .recipe import HEAD_LABELS, HEADS, ReproduceResult, StageConfigs


def published_rows() -> list[dict[str, Any]]:
    """The published numbers shipped in `configs/published.yaml` (with sources and status)."""
    text = (resources.files("diff2in1.configs") / "published.yaml").read_text()
    return yaml.safe_load(text)["rows"]


def _num(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{float(v):.{digits}f}"


# The depth and segmentation columns of the report (keys of the evaluation's metrics.json).
TASK_COLUMNS = {
    "depth": (
        "Depth in metres over the valid pixels of each image (gt > 0, up to the evaluation's max "
        "depth), averaged over images (docs/multitask.md, Metrics).",
        ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3"),
    ),
    "segmentation": (
        "Classes from one confusion matrix pooled over the split; mIoU over the classes present in "
        "ground truth or prediction (docs/multitask.md, Metrics).",
        ("miou", "pixel_acc", "mean_acc"),
    ),
}


def _tasks_line(result: ReproduceResult, pseudo_labels: str) -> list[str]:
    """The multi-task sentence of the settings paragraph (none for a normals-only run)."""
    if result.tasks == ("normals",):
        return []
    return [
        "",
        f"Tasks: {', '.join(result.tasks)}. Every stage runs one backbone pass per image for all of "
        "their heads: the warm-up trains one head per task, creation writes every task's label for "
        "each synthetic image, self-improvement keeps an exploitation and a creation head per task, "
        f"with `{pseudo_labels}` pseudo-labels.",
    ]


def _task_tables(result: ReproduceResult, split: str, n_test: int) -> list[str]:
    """One table per further task of a multi-task reproduction, one row per evaluated head."""
    lines: list[str] = []
    for task in (t for t in result.tasks if t in TASK_COLUMNS):
        text, keys = TASK_COLUMNS[task]
        lines += [
            "",
            f"## {task.capitalize()} on `{split}` ({n_test} images)",
            "",
            text + " No published rows are shipped for this task: only this run's heads are listed.",
            "",
            "| head | " + " | ".join(keys) + " | source |",
            "|---|" + "---|" * (len(keys) + 1),
        ]
        for name, m in result.metrics.items():
            vals = " | ".join(_num(m.get(task, {}).get(k), 4) for k in keys)
            lines.append(f"| **{HEAD_LABELS[name]}** | {vals} | this run, `eval_{name}/` |")
    return lines


def report_text(
    cfg: ReproduceConfig, st: StageConfigs, result: ReproduceResult, counts: dict[str, int], dry_run: bool
) -> str:
    """`report.md`: our metrics beside the published ones, the settings, the stages."""
    n_train, n_test = counts[st.warmup.split], counts[st.evaluate.split]
    h, w = cfg.resolution
    lines = ["# Diff-2-in-1 reproduction report", ""]
    if dry_run:
        lines += [
            f"**Dry run**: backbone `{cfg.backbone}`, {n_train} train / {n_test} test images at {h}x{w}, "
            "a few steps per stage. It checks that every stage runs; its numbers say nothing about the "
            "method.",
            "",
        ]
    syn = n_train * st.create.samples_per_image
    wu, cr, si = st.warmup, st.create, st.self_improve
    lines += [
        f"Data `{cfg.data}` ({n_train} {wu.split} / {n_test} {st.evaluate.split} images), backbone "
        f"`{cfg.backbone}`, {h}x{w} with the `{cfg.resize}` resize, mixed precision `{cfg.mixed_precision}`. "
        f"Warm-up: {wu.epochs} epoch(s) at batch {wu.batch_size} (drop_last {wu.drop_last}), lr {wu.lr}. "
        f"Synthetic data: {syn} pairs, noise to t={cr.t_start}, {cr.steps} DDIM steps, guidance "
        f"{cr.guidance}. Self-improvement: {si.epochs} epoch(s) over {n_train} + {syn} samples at batch "
        f"{si.batch_size}, EMA {si.ema_decay} every {si.ema_every} steps. Every setting: `reproduce.yaml`.",
        *_tasks_line(result, si.pseudo_labels),
        "",
        f"## Surface normals on `{st.evaluate.split}` ({n_test} images)",
        "",
        "Angles in degrees, thresholds in % of valid pixels. Ours: float predictions at "
        f"{h}x{w} resized to the ground truth's size, every valid pixel of the split pooled, exact pi "
        "(docs/method.md section 9). The published rows come from other training data and evaluation "
        "setups (column 2) and are copied from the sources named; `unconfirmed` ones were not checked "
        "against a primary source.",
        "",
        "| method | trained on | mean | median | rmse | <11.25 | <22.5 | <30 | source |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ours_data = {
        "warmup": f"{cfg.data} {st.warmup.split} ({n_train})",
        "exploitation": f"{n_train} + {syn} synthetic",
        "creation": f"{n_train} + {syn} synthetic",
    }
    for name, m in result.metrics.items():
        vals = " | ".join(_num(m.get(k)) for k in ("mean", "median", "rmse", "a11", "a22", "a30"))
        lines.append(f"| **{HEAD_LABELS[name]}** | {ours_data[name]} | {vals} | this run, `eval_{name}/` |")
    for r in published_rows():
        vals = " | ".join(_num(r.get(k), 3) for k in ("mean", "median", "rmse", "a11", "a22", "a30"))
        status = {"source": "", "secondary": " (secondary)", "unconfirmed": " (**unconfirmed**)"}[r["status"]]
        lines.append(f"| {r['method']} | {r['trained_on']} | {vals} | {r['source']}{status} |")
    if "warmup" in result.metrics and "exploitation" in result.metrics and not dry_run:  # no verdict
        d = result.metrics["exploitation"]["mean"] - result.metrics["warmup"]["mean"]
        verb = "lowered" if d < 0 else "raised"
        lines += [
            "",
            f"Self-improvement {verb} the mean angular error by {abs(d):.2f} deg "
            f"({result.metrics['warmup']['mean']:.2f} -> {result.metrics['exploitation']['mean']:.2f}).",
        ]
    lines += _task_tables(result, st.evaluate.split, n_test)
    lines += [
        "",
        "## Stages (this invocation)",
        "",
        "| stage | status | seconds | output |",
        "|---|---|---|---|",
    ]
    outputs = {
        "captions": f"{st.create.data}/{st.create.split}/caption",
        "warm-up": "warmup/",
        "creation": "synthetic/",
        "self-improve": "self_improve/",
        **{f"evaluate {k}": f"eval_{k}/" for k in HEADS},
    }
    for name, status in result.stages.items():
        lines.append(
            f"| {name} | {status} | {result.seconds.get(name, 0.0):.1f} | `{outputs.get(name, '')}` |"
        )
    lines.append("")
    return "\n".join(lines)


