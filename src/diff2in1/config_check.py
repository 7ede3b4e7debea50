"""Type and range checks of a run configuration, before anything loads: one line per mistake.

YAML files and flags can hold anything (`batch_size: eight`, `lr: fast`, `epochs: -1`, `fp8`); a
dataclass does not check. Every field of the config dataclasses is checked against its annotated
type and, where one is given below, its allowed range or choices.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

from .errors import InputError

# field -> (test, what it must be); a field not listed is only type-checked.
RANGES: dict[str, tuple[Any, str]] = {
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "epochs": (lambda v: v >= 1, "at least 1"),
    "max_steps": (lambda v: v >= 0, "0 (no limit) or more"),
    "checkpoint_every": (lambda v: v >= 0, "0 (never) or more"),
    "grad_accum": (lambda v: v >= 1, "at least 1"),
    "num_workers": (lambda v: v >= 0, "0 or more"),
    "lr": (lambda v: math.isfinite(v) and v > 0, "a positive number"),
    "ema_decay": (lambda v: 0.0 <= v <= 1.0, "between 0 and 1"),
    "ema_every": (lambda v: v >= 1, "at least 1"),
    "recreate_every": (lambda v: v >= 0, "0 (never) or more"),
    "pseudo_label_quantile": (lambda v: 0.0 <= v < 1.0, "at least 0 and below 1"),
    "samples_per_image": (lambda v: v >= 1, "at least 1"),
    "t_start": (lambda v: 1 <= v <= 1000, "between 1 and 1000"),
    "steps": (lambda v: v >= 1, "at least 1"),
    "guidance": (lambda v: math.isfinite(v) and v >= 1.0, "1 (no guidance) or more"),
    "preview": (lambda v: v >= 0, "0 or more"),
    "seed": (lambda v: v >= 0, "0 or more"),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "loss": ("ug_nll", "angular", "l2"),
    "mixed_precision": ("no", "bf16", "fp16"),
    "feature_cache": ("none", "memory", "disk"),
    "resize": ("research", "nearest"),
    "pseudo_labels": ("research", "weighted", "filtered"),
}


def _type_error(source: str, key: str, want: str, value: Any) -> InputError:
    return InputError(f"{source}: {key}: expected {want}, got {value!r}")


def _check_type(source: str, key: str, kind: str, value: Any) -> None:
    if kind == "bool":
        if not isinstance(value, bool):
            raise _type_error(source, key, "true or false", value)
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(source, key, "an integer", value)
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(source, key, "a number", value)
    elif kind == "str":
        if not isinstance(value, str):
            raise _type_error(source, key, "a string", value)
    elif kind == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _type_error(source, key, "a list of strings", value)
    elif kind.startswith("tuple[int"):
        ok = isinstance(value, tuple) and len(value) == 2
        if not ok or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise _type_error(source, key, "a size: an integer or [height, width]", value)
    elif kind.startswith("dict") and not isinstance(value, dict):
        raise _type_error(source, key, "a mapping", value)


def check_config(config: Any, source: str | Path | None = None) -> None:
    """InputError (one line, naming the setting and the file or 'flags') for the first bad value."""
    src = str(source) if source else "settings"
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        _check_type(src, f.name, str(f.type).replace(" ", ""), value)
        if f.name in RANGES:
            test, what = RANGES[f.name]
            if not test(value):
                raise InputError(f"{src}: {f.name}: must be {what}, got {value!r}")
        if f.name in CHOICES and value not in CHOICES[f.name]:
            raise InputError(f"{src}: {f.name}: must be one of {', '.join(CHOICES[f.name])}, got {value!r}")
    resolution = getattr(config, "resolution", None)
    if resolution is not None and (min(resolution) < 64 or any(r % 64 for r in resolution)):
        raise InputError(f"{src}: resolution: must be a multiple of 64 on both sides, got {list(resolution)}")
    steps, t_start = getattr(config, "steps", None), getattr(config, "t_start", None)
    if steps is not None and t_start is not None and steps > t_start:
        raise InputError(f"{src}: steps: must be at most t_start ({t_start}), got {steps}")
    shard = getattr(config, "shard", None)
    if shard is not None:
        m = re.fullmatch(r"(\d+)/(\d+)", str(shard))
        if not m or not int(m.group(1)) < int(m.group(2)):
            raise InputError(f"{src}: shard: use i/n with 0 <= i < n, got {shard!r}")
