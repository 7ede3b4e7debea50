"""A head set: head folders (one per task) read and checked before the backbone loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from ..heads import head_task
from ..heads.dense_head import load_head

TASK_COMPONENTS = {"normals": "head", "depth": "depth_head", "segmentation": "segmentation_head"}
ALL_TASKS = tuple(TASK_COMPONENTS)


def load_head_set(heads: list) -> dict[str, tuple[str, Any]]:
    """Head folders or models -> task -> (name, head); each folder's config names its task. Two heads
    of one task are a one-line InputError."""
    out: dict[str, tuple[str, Any]] = {}
    for h in heads:
        if h is None:
            continue
        name = str(h) if isinstance(h, (str, Path)) else TASK_COMPONENTS[head_task(h)]
        model = load_head(h) if isinstance(h, (str, Path)) else h
        task = head_task(model)
        if task in out:
            first = out[task][0]
            raise InputError(f"{name}: a second {task} head (the first: {first}); give one head per task")
        out[task] = (name, model)
    if not out:
        raise InputError("no head given")
    return {t: out[t] for t in ALL_TASKS if t in out}
