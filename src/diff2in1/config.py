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
    resize: str = "research"  # research | nearest: how data reach `resolution` (docs/method.md section 5)
    seed: int = 42
    lr: float = 3.57e-4
    batch_size: int = 8
    drop_last: bool = True  # no short last batch (795 images at batch 8: 99 steps per epoch)
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
    # research (every synthetic pixel alike) | weighted (by the creation head's confidence) |
    # filtered (only pixels at or above the confidence quantile of their image); docs/method.md section 8
    pseudo_labels: str = "research"
    pseudo_label_quantile: float = 0.5
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
    resize: str = "research"  # research | nearest: how source images reach `resolution`
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


# `diff2in1 reproduce` sets these once for every stage (top of reproduce.yaml) ...
REPRODUCE_SHARED = (
    "data",
    "backbone",
    "out",
    "resolution",
    "resize",
    "seed",
    "mixed_precision",
    "device",
    "progress",
)
# ... and these itself, per stage, from the folders of the earlier stages.
REPRODUCE_SETS = {"warmup": (), "create": ("head",), "self_improve": ("init", "synthetic"), "evaluate": ()}


def stage_defaults(cls: type, stage: str) -> dict[str, Any]:
    from .training.run_folder import to_plain

    drop = set(REPRODUCE_SHARED) | set(REPRODUCE_SETS[stage])
    return {k: v for k, v in to_plain(cls()).items() if k not in drop}


@dataclass
class EvaluateSettings:
    """Evaluation of a head on the test split (docs/method.md section 9)."""

    split: str = "test"
    batch_size: int = 4
    noise_seed: int = 0  # the t=0 noise of the prediction
    limit: int = 0  # 0 = every image


@dataclass
class ReproduceConfig:
    """`diff2in1 reproduce`: captions, warm-up, data creation, self-improvement and evaluation of
    the warm-up, exploitation and creation heads, with the research hyper-parameters
    (docs/method.md sections 5-9). The stage sections hold each stage's own settings (those of
    `train-warmup`, `create-data`, `train-self-improve`); what is not given takes that stage's default."""

    data: str = ""
    backbone: str = ""
    out: str = ""
    caption_model: str = ""  # local image-to-text model folder; used only if training captions are missing
    resolution: tuple[int, int] = (512, 512)
    resize: str = "research"
    seed: int = 42
    mixed_precision: str = "no"
    device: str = "auto"
    progress: bool = True
    warmup: dict[str, Any] = field(default_factory=lambda: stage_defaults(WarmupConfig, "warmup"))
    create: dict[str, Any] = field(default_factory=lambda: stage_defaults(CreateConfig, "create"))
    self_improve: dict[str, Any] = field(
        default_factory=lambda: stage_defaults(SelfImproveConfig, "self_improve")
    )
    evaluate: dict[str, Any] = field(default_factory=lambda: stage_defaults(EvaluateSettings, "evaluate"))


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
    cfg = cls(**values)
    from .config_check import check_config

    check_config(cfg, path or "flags")
    return cfg


def default_yaml(cls: type) -> str:
    """The YAML text of a config class's defaults (what `configs/*.yaml` ship)."""
    from .training.run_folder import to_plain

    return yaml.safe_dump(to_plain(cls()), sort_keys=False)
