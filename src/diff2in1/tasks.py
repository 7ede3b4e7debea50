"""The dense tasks as data: one `Task` per task (normals, depth, segmentation) naming its label
kind, loss, metrics, label files and pictures, so code can loop over tasks (docs/multitask.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from diff2in1 import losses
from diff2in1.data import labels
from diff2in1.errors import InputError


@dataclass(frozen=True)
class Task:
    """One dense task.

    name: "normals", "depth" or "segmentation". label_kind / units: what a label is and its unit.
    label_dir: its folder in a split of the NYU layout; label_ext: its file kind there.
    batch_keys: the `MultiTaskDataset` item keys of its label (the last one: the has-label flag).
    loss: the pure loss function of `diff2in1.losses` (its signature is the task's own).
    metric_keys: the columns of its metrics table; lower_is_better: those where smaller is better.
    new_accumulator(**kw): a metrics accumulator over a set (exact under several processes).
    read_label(path) / write_label(path, value): its label files.
    picture(value, **kw): a PIL picture of a prediction or a label.
    """

    name: str
    label_kind: str
    units: str
    label_dir: str
    label_ext: str
    batch_keys: tuple[str, ...]
    loss: Callable[..., Any]
    metric_keys: tuple[str, ...]
    lower_is_better: frozenset[str]
    new_accumulator: Callable[..., Any]
    read_label: Callable[[str | os.PathLike], Any]
    write_label: Callable[[str | os.PathLike, Any], None]
    picture: Callable[..., Image.Image]


# ---------------------------------------------------------------------------- normals


def _read_normals(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(normal float32 HxWx3, mask bool HxW) from an 8-bit normal PNG or a float .npy."""
    from diff2in1.data.layout import check_normal_array, decode_normal_png, valid_mask_of
    from diff2in1.imaging.files import load_npy, load_png_rgb_strict

    if Path(path).suffix == ".npy":
        n = check_normal_array(load_npy(path), path)
        mask = valid_mask_of(n)
        return np.where(mask[..., None], n, 0.0).astype(np.float32), mask
    return decode_normal_png(load_png_rgb_strict(path))


def _write_normals(path: str | os.PathLike, normal: Any) -> None:
    from diff2in1.data.layout import encode_normal_png
    from diff2in1.imaging.files import save_npy, save_png, to_hwc

    if Path(path).suffix == ".npy":
        save_npy(path, to_hwc(normal, "normal").astype(np.float32))
    else:
        save_png(path, encode_normal_png(normal))


def _normals_picture(normal: Any, mask: np.ndarray | None = None, **_: Any) -> Image.Image:
    from diff2in1.imaging.files import to_hwc
    from diff2in1.viz import normal_to_rgb

    return Image.fromarray(normal_to_rgb(to_hwc(normal, "normal"), mask))


def _normal_accumulator(**_: Any):
    from diff2in1.metrics import MetricAccumulator

    return MetricAccumulator()


# ---------------------------------------------------------------------------- depth, segmentation


def _depth_accumulator(max_depth: float = 10.0, eigen_crop: bool = False, **_: Any):
    from diff2in1.metrics import DepthAccumulator

    return DepthAccumulator(max_depth=max_depth, eigen_crop=eigen_crop)


def _depth_picture(depth: Any, vmax: float | None = None, **_: Any) -> Image.Image:
    from diff2in1.viz_tasks import depth_picture

    return depth_picture(np.asarray(depth, np.float32).squeeze(), vmax)


def _seg_accumulator(num_classes: int | None = None, ignore_index: int = labels.IGNORE_INDEX, **_: Any):
    from diff2in1.metrics import SegmentationAccumulator

    if num_classes is None:
        raise ValueError("the segmentation accumulator needs num_classes")
    return SegmentationAccumulator(num_classes, ignore_index)


def _seg_picture(classes: Any, class_list: labels.ClassList | None = None, **_: Any) -> Image.Image:
    from diff2in1.viz_tasks import segmentation_picture

    if class_list is None:
        raise ValueError("a segmentation picture needs the class list (class_list=...)")
    return segmentation_picture(np.asarray(classes), class_list)


TASKS: dict[str, Task] = {
    "normals": Task(
        name="normals",
        label_kind="unit surface normals in the camera frame (x right, y down, z forward, pointing away)",
        units="degrees (angular error)",
        label_dir="norm",
        label_ext=".png",
        batch_keys=("normal", "mask", "has_normals"),
        loss=losses.head_loss,
        metric_keys=("mean", "median", "rmse", "a11", "a22", "a30"),
        lower_is_better=frozenset({"mean", "median", "rmse"}),
        new_accumulator=_normal_accumulator,
        read_label=_read_normals,
        write_label=_write_normals,
        picture=_normals_picture,
    ),
    "depth": Task(
        name="depth",
        label_kind="metric depth along the camera axis, 0 = none",
        units="metres",
        label_dir=labels.DEPTH_DIR,
        label_ext=".npy",
        batch_keys=("depth", "has_depth"),
        loss=losses.depth_nll,
        metric_keys=("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3"),
        lower_is_better=frozenset({"abs_rel", "sq_rel", "rmse", "rmse_log", "log10"}),
        new_accumulator=_depth_accumulator,
        read_label=labels.read_depth,
        write_label=labels.write_depth,
        picture=_depth_picture,
    ),
    "segmentation": Task(
        name="segmentation",
        label_kind="semantic class ids, 255 = ignore",
        units="class ids",
        label_dir=labels.SEG_DIR,
        label_ext=".png",
        batch_keys=("classes", "has_segmentation"),
        loss=losses.segmentation_ce,
        metric_keys=("miou", "pixel_acc", "mean_acc"),
        lower_is_better=frozenset(),
        new_accumulator=_seg_accumulator,
        read_label=labels.read_seg,
        write_label=labels.write_seg,
        picture=_seg_picture,
    ),
}


def get_task(name: str) -> Task:
    """The Task called `name`; an unknown name is a one-line InputError listing the tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise InputError(f"unknown task {name!r}; choose from {', '.join(TASKS)}") from None


__all__ = ["TASKS", "Task", "get_task"]
