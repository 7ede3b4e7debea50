"""The demo's settings (`DemoConfig`) and the guard of a demo folder: a re-run continues only a
folder made with the same settings. Imports no torch (the command line reads the defaults)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..run_settings import check_recorded, defaults_of, record_settings

# The synthetic labels of the demo's self-improving stage (`--pseudo-labels`). Confidence-weighted:
# in the per-task study (docs/self_improvement_study.md) it beat the research labels in every seed
# in 4 of 6 (task, set size) rows, though no arm beat the control. `research` is one flag away.
DEFAULT_PSEUDO_LABELS = "weighted"
PSEUDO_LABELS = ("research", "weighted", "filtered")
ALL_TASKS = "normals,depth,segmentation"
# Settings a re-run of a demo folder may change: they change no result of a finished seed (a new
# seed adds its own folder).
FREE_SETTINGS = frozenset({"out", "progress", "seeds"})
# What a demo_config.json written before these settings existed stands for (normals only).
RECORD_DEFAULTS = {"tasks": "normals", "pseudo_labels": "research", "feature_cache": "none"}


@dataclass
class DemoConfig:
    """Sizes of the demo; `quick()` is the smoke-test version used by the tests (no verdict).

    Defaults (`make demo`, 6 min 27 s on an idle 2-core CPU, see the README): the
    three tasks on 80 train / 40 test scenes at 128x128 (the same scenes for every seed), and for
    each of the 2 seeds a warm-up of 8 epochs (80 steps of batch 8), 80 synthetic samples with
    every task's label (1 per training image, t_start 600, 50 DDIM steps), a self-improving stage
    of 2 epochs over real + synthetic (40 steps, EMA 0.998 every 10 steps) and the control
    trained the same 40 steps on the real images only. The sizes are chosen for the time: per
    training scene the three heads' stages cost about 1.3x the normal head's (CPU time, three
    heads with the tap cache against the normal head without it: warm-up 1.28x,
    self-improvement 1.38x, control 1.36x; the heads, not the UNet, dominate at 128x128),
    creation about the same (one UNet run serves every head), so the scenes are half the 160 of
    the normals-only demo.
    `tasks`: the heads trained, created and compared (normals is always one: its head is the
    creation head of the method). `pseudo_labels`: the synthetic labels of the self-improving stage
    (research | weighted | filtered, default `DEFAULT_PSEUDO_LABELS`). `feature_cache`: "memory"
    computes each image's UNet taps once (in the first epoch of every training stage, with the
    noise fixed per image) and trains the heads on them afterwards; "none" is the research
    behaviour (fresh noise every step); the self-improving stage allows it because the demo does
    not re-create its synthetic set. `seed` is the seed of the scenes; `seeds` those of the
    training runs (and of the synthetic data), one run each.
    """

    out: str = "runs/demo"
    backbone: str = "tiny-scenes"
    tasks: str = ALL_TASKS
    pseudo_labels: str = DEFAULT_PSEUDO_LABELS
    size: int = 128
    train: int = 80
    test: int = 40
    seed: int = 0
    seeds: tuple[int, ...] = (0, 1)
    head: str = "small"
    batch_size: int = 8
    lr: float = 1e-3
    warmup_epochs: int = 8
    self_improve_epochs: int = 2
    t_start: int = 600
    steps: int = 50
    ema_decay: float = 0.998
    ema_every: int = 10
    feature_cache: str = "memory"
    progress: bool = True
    smoke: bool = False  # `--quick`: checks every stage runs; too small for a verdict

    def __post_init__(self) -> None:
        self.seeds = tuple(dict.fromkeys(int(s) for s in self.seeds))  # unique, in order
        if not self.seeds:
            raise InputError("--seeds: the demo needs at least one seed")
        from ..data.multitask import parse_tasks

        tasks = parse_tasks(self.tasks)
        if "normals" not in tasks:
            raise InputError(f"--tasks {self.tasks}: the demo needs normals (its head creates the data)")
        self.tasks = ",".join(tasks)
        if self.pseudo_labels not in PSEUDO_LABELS:
            raise InputError(f"--pseudo-labels: choose from {', '.join(PSEUDO_LABELS)}")

    @property
    def task_list(self) -> tuple[str, ...]:
        return tuple(self.tasks.split(","))

    @classmethod
    def quick(cls, **kw) -> DemoConfig:
        base = dict(
            size=64, train=8, test=2, batch_size=4, seeds=(0,), warmup_epochs=2, self_improve_epochs=1,
            steps=6, smoke=True,
        )  # fmt: skip
        return cls(**{**base, **kw})


def check_or_record(cfg: DemoConfig, out: Path) -> None:
    """Refuse, in one line, a demo folder made with other settings (other tasks, sizes, ...); then
    record the settings in `demo_config.json` (before any work)."""
    path = out / "demo_config.json"
    settings = dataclasses.asdict(cfg)
    check_recorded(
        path,
        settings,
        f"{out}: a demo made with other settings",
        "use another --out, or the settings it was made with",
        free=FREE_SETTINGS,
        labels={"tasks": "--tasks", "pseudo_labels": "--pseudo-labels", "backbone": "--backbone"},
        defaults=defaults_of(cfg) | RECORD_DEFAULTS,
    )
    out.mkdir(parents=True, exist_ok=True)
    record_settings(path, settings)
