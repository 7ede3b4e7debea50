"""Run configurations: one dataclass per stage, defaults mirrored in `configs/*.yaml`.

Precedence: dataclass defaults < `--config FILE` (YAML) < command-line flags. The resolved
configuration is copied into the run folder, so a run records every hyper-parameter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import InputError


@dataclass
class TrainConfig:
    """Settings shared by both training stages (defaults of docs/method.md sections 6 and 8)."""

    data: str = ""
    backbone: str = ""
    out: str = ""
    split: str = "train"
    resolution: tuple[int, int] = (512, 512)
    seed: int = 42
    lr: float = 3.57e-4
    batch_size: int = 8
    epochs: int = 50
    max_steps: int = 0  # 0 = no limit; stops after this many optimizer steps (quick runs)
    checkpoint_every: int = 5  # keep a head checkpoint every k epochs
    loss: str = "ug_nll"  # ug_nll | angular | l2
    mixed_precision: str = "no"  # no | bf16 | fp16 (autocast of backbone and head)
    grad_accum: int = 1
    sample_posterior: bool = True  # the research code samples the VAE posterior (docs/method.md section 1)
    posterior_cache: bool = True  # keep each image's VAE posterior in memory (same results, no encoder)
    feature_cache: str = "none"  # none | memory | disk: reuse each image's taps across epochs (warm-up)
    skip_bad_samples: bool = False  # leave out unreadable / unpaired samples (listed) instead of failing
    num_workers: int = 2  # data-loading processes (0 = load in the training process)
    device: str = "auto"
    progress: bool = True


@dataclass
class WarmupConfig(TrainConfig):
    """Stage 1: warm-up of the head on labelled data (docs/method.md section 6)."""

    head: str = "reference"  # reference | small | a head folder to start from


@dataclass
class SelfImproveConfig(TrainConfig):
    """Stage 2: self-improving learning (docs/method.md section 8)."""

    synthetic: list[str] = field(default_factory=list)
    init: str = ""  # warm-up head folder: start of both the creation and exploitation copies
    ema_decay: float = 0.998
    ema_every: int = 10
    recreate_every: int = 0  # re-create the synthetic set with the creation head every k epochs
    create: dict[str, Any] = field(default_factory=dict)  # CreateConfig overrides for re-creation


@dataclass
class CreateConfig:
    """Synthetic multi-modal data creation (docs/method.md section 7)."""

    data: str = ""
    backbone: str = ""
    head: str = ""
    out: str = ""
    split: str = "train"
    resolution: tuple[int, int] = (512, 512)
    samples_per_image: int = 1
    t_start: int = 600
    steps: int = 50
    guidance: float = 1.0
    seed: int = 42
    batch_size: int = 4
    mixed_precision: str = "no"
    shard: str = "0/1"  # i/n: this machine makes every n-th sample starting at i
    preview: int = 8  # side-by-side pictures of the first few samples
    device: str = "auto"
    progress: bool = True


C = TypeVar("C")


def load_config(cls: type[C], path: str | Path | None = None, **overrides: Any) -> C:
    """Build `cls` from defaults, an optional YAML file and explicit overrides (None = unset)."""
    values: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise InputError(f"{path}: cannot read config ({e})") from None
        if not isinstance(loaded, dict):
            raise InputError(f"{path}: a config file must be a mapping of settings")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise InputError(f"{path or 'config'}: unknown setting(s) {', '.join(unknown)}")
    for k, v in list(values.items()):
        if names[k].type in ("tuple[int, int]",) and isinstance(v, (list, int)):
            values[k] = (v, v) if isinstance(v, int) else tuple(v)
    return cls(**values)


def default_yaml(cls: type) -> str:
    """The YAML text of a config class's defaults (what `configs/*.yaml` ship)."""
    from .runs import to_plain

    return yaml.safe_dump(to_plain(cls()), sort_keys=False)
