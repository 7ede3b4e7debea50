"""The reproduction's recipe: every stage's settings from one YAML file, the folders wired between the
stages, the dry run's small settings, and the recorded `reproduce.yaml`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config import (
    REPRODUCE_SETS,
    REPRODUCE_SHARED,
    CreateConfig,
    EvaluateSettings,
    ReproduceConfig,
    SelfImproveConfig,
    WarmupConfig,
    stage_defaults,
)
from ...config_check import check_config
from ...data.multitask import parse_tasks
from ...errors import InputError
from ...run_settings import REPRODUCE_FREE, check_recorded, defaults_of, record_settings
from ...training.run_folder import to_plain
from .multitask_data import SOURCE, is_nyudmt

STAGE_CLASSES = {
    "warmup": WarmupConfig,
    "create": CreateConfig,
    "self_improve": SelfImproveConfig,
    "evaluate": EvaluateSettings,
}
# The heads evaluated: name -> (stage folder, head folder of the normals).
HEADS = {
    "warmup": ("warmup", "head"),
    "exploitation": ("self_improve", "exploitation"),
    "creation": ("self_improve", "creation"),
}
HEAD_LABELS = {
    "warmup": "ours: warm-up head (stage 1)",
    "exploitation": "ours: self-improved, exploitation head",
    "creation": "ours: self-improved, creation head (EMA)",
}
# The dry run: a handful of images at 64x64 with the shipped tiny backbone, a few steps each.
DRY_RUN_IMAGES = {"train": 4, "test": 2}
DRY_RUN_SCENE_SIZE = (96, 128)  # procedural scenes, 3:4 like NYUv2, squashed to 64x64 as the recipe does
DRY_RUN: dict[str, Any] = {
    "backbone": "tiny-scenes",
    "resolution": (64, 64),
    "warmup": {"head": "small", "epochs": 2, "batch_size": 2, "num_workers": 0, "checkpoint_every": 1},
    "create": {"t_start": 600, "steps": 12, "batch_size": 2, "preview": 2},
    "self_improve": {"epochs": 1, "batch_size": 2, "num_workers": 0, "checkpoint_every": 1, "ema_every": 1},
    "evaluate": {"batch_size": 2},
}


@dataclass
class StageConfigs:
    """The resolved settings of every stage of one reproduction."""

    warmup: WarmupConfig
    create: CreateConfig
    self_improve: SelfImproveConfig
    evaluate: EvaluateSettings


@dataclass
class ReproduceResult:
    """What a reproduction did: per stage "ran", "resumed" or "skipped"; metrics per head."""

    out: Path
    report: Path
    stages: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    tasks: tuple[str, ...] = ("normals",)  # with more: each head's metrics hold "depth", "segmentation"
    is_main: bool = True  # the process that wrote the report (others under torchrun: False)


def head_folder(name: str, task: str) -> str:
    """The folder of `task`'s head of the evaluated head `name` inside its stage folder, as
    `train-warmup --tasks` (head, head_depth, ...) and `train-self-improve --tasks` (exploitation,
    exploitation_depth, ...) save them."""
    base = HEADS[name][1]
    return base if task == "normals" else f"{base}_{task}"


def tasks_of(cfg: ReproduceConfig) -> tuple[str, ...]:
    """The tasks of a reproduction (its warm-up's and self-improvement's `tasks`, which must agree;
    the normals among them: the normal head is the creation head)."""
    warm, si = (parse_tasks(_section(cfg, k).get("tasks", "normals")) for k in ("warmup", "self_improve"))
    if warm != si:
        raise InputError(
            f"reproduce: warmup.tasks ({','.join(warm)}) and self_improve.tasks ({','.join(si)}) "
            "differ; give both the same tasks (or --tasks)"
        )
    if "normals" not in warm:
        raise InputError("--tasks: the recipe needs normals (the normal head creates the synthetic data)")
    return warm


def with_flags(
    cfg: ReproduceConfig, tasks: str | None = None, pseudo_labels: str | None = None
) -> ReproduceConfig:
    """`cfg` with the command line's `--tasks` (the warm-up's and self-improvement's tasks) and
    `--pseudo-labels` (the self-improvement's) written into their stage sections (None = not given)."""
    warm, si = _section(cfg, "warmup"), _section(cfg, "self_improve")
    if tasks is not None:
        warm, si = {**warm, "tasks": tasks}, {**si, "tasks": tasks}
    if pseudo_labels is not None:
        si = {**si, "pseudo_labels": pseudo_labels}
    return dataclasses.replace(cfg, warmup=warm, self_improve=si)


def _section(cfg: ReproduceConfig, name: str) -> dict[str, Any]:
    section = getattr(cfg, name)
    if not isinstance(section, dict):
        raise InputError(f"reproduce: {name}: expected a mapping of settings, got {section!r}")
    return section


def _stage(cls: type, name: str, section: dict[str, Any], fixed: dict[str, Any]) -> Any:
    """A stage's config from its YAML section (over the stage's defaults) and the shared settings."""
    if not isinstance(section, dict):
        raise InputError(f"reproduce: {name}: expected a mapping of settings, got {section!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - names)
    if unknown:
        raise InputError(f"reproduce: {name}: unknown setting(s) {', '.join(unknown)}")
    owned = sorted(set(section) & (set(REPRODUCE_SHARED) | set(REPRODUCE_SETS[name])))
    if owned:
        raise InputError(
            f"reproduce: {name}: {', '.join(owned)} is set for every stage at the top of the file "
            "or by reproduce itself, not in a stage section"
        )
    values = {**section, **{k: v for k, v in fixed.items() if k in names}}
    if isinstance(values.get("resolution"), list):
        values["resolution"] = tuple(values["resolution"])
    config = cls(**values)
    check_config(config, f"reproduce: {name}")  # types and ranges, before any work
    return config


def stage_configs(cfg: ReproduceConfig) -> StageConfigs:
    """Every stage's settings, with the folders of `cfg.out` wired between the stages."""
    root = Path(cfg.out)
    shared = {k: getattr(cfg, k) for k in REPRODUCE_SHARED if k != "out"}
    shared["resolution"] = tuple(cfg.resolution)
    warm_head = str(root / "warmup" / "head")
    # A multi-task reproduction wires each further task's warm-up head into the creation (its
    # creation head) and the self-improvement (its start), as it wires the normal head.
    extra = [t for t in tasks_of(cfg) if t != "normals"]
    warm_heads = {t: str(root / "warmup" / head_folder("warmup", t)) for t in extra}
    for section, key in (("create", "{}_head"), ("self_improve", "{}_init")):
        given = [key.format(t) for t in extra if _section(cfg, section).get(key.format(t))]
        if given:
            raise InputError(
                f"reproduce: {section}: {given[0]} is set by reproduce itself with --tasks "
                "(the warm-up's head of that task)"
            )
    return StageConfigs(
        warmup=_stage(WarmupConfig, "warmup", cfg.warmup, {**shared, "out": str(root / "warmup")}),
        create=_stage(
            CreateConfig,
            "create",
            cfg.create,
            {
                **shared,
                # A NYUD-MT folder has no captions: creation reads its captioned copy in <out>/source.
                **({"data": str(root / SOURCE)} if is_nyudmt(cfg.data) else {}),
                "out": str(root / "synthetic"),
                "head": warm_head,
                **{f"{t}_head": h for t, h in warm_heads.items()},
            },
        ),
        self_improve=_stage(
            SelfImproveConfig,
            "self_improve",
            cfg.self_improve,
            {
                **shared,
                "out": str(root / "self_improve"),
                "init": warm_head,
                "synthetic": [str(root / "synthetic")],
                **{f"{t}_init": h for t, h in warm_heads.items()},
            },
        ),
        evaluate=_stage(EvaluateSettings, "evaluate", cfg.evaluate, {}),
    )


def complete(cfg: ReproduceConfig) -> ReproduceConfig:
    """`cfg` with every stage section holding all of its stage's settings (a YAML section may give
    only some: the others take that stage's defaults), so the recorded file is complete."""
    sections = {}
    for name, cls in STAGE_CLASSES.items():
        given = getattr(cfg, name)
        if not isinstance(given, dict):
            raise InputError(f"reproduce: {name}: expected a mapping of settings, got {given!r}")
        sections[name] = {**stage_defaults(cls, name), **given}
        if isinstance(sections[name].get("tasks"), (str, list)):  # one spelling: normals,depth,...
            sections[name]["tasks"] = ",".join(parse_tasks(sections[name]["tasks"]))
    return dataclasses.replace(cfg, **sections)


def dry_run_config(cfg: ReproduceConfig) -> ReproduceConfig:
    """`cfg` made small: tiny-scenes at 64x64, a few steps per stage, into `<out>/dry_run`."""
    sections = {k: {**getattr(cfg, k), **DRY_RUN[k]} for k in STAGE_CLASSES}
    top = {k: v for k, v in DRY_RUN.items() if k not in STAGE_CLASSES}
    root = Path(cfg.out) / "dry_run"
    return dataclasses.replace(cfg, **top, **sections, out=str(root), data=str(root / "data"))


def record_config(cfg: ReproduceConfig, dry_run: bool, write: bool = True) -> None:
    """Write `<out>/reproduce.yaml`, or refuse to continue a folder made with other settings
    (`write=False`: only refuse)."""
    root = Path(cfg.out)
    path = root / "reproduce.yaml"
    plain = to_plain(cfg)
    if check_recorded(
        path,
        plain,
        f"{path}: this folder holds a reproduction with other settings",
        "run it with the same settings to continue, or use another --out",
        free=REPRODUCE_FREE,
        defaults=to_plain(
            {**defaults_of(cfg), **{name: defaults_of(cls()) for name, cls in STAGE_CLASSES.items()}}
        ),
    ) or not write:
        return
    if root.exists() and not root.is_dir():
        raise InputError(f"--out {root}: exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    head = (
        "# Settings of this reproduction (`diff2in1 reproduce`"
        + (" --dry-run: tiny-scenes, 64x64, a few steps per stage" if dry_run else "")
        + "). A re-run with the same settings continues it.\n"
    )
    record_settings(path, plain, header=head)


