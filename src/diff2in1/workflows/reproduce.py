"""`diff2in1 reproduce`: the whole method on a dataset with the research recipe, in one command.

Stages (docs/method.md sections 5-9), each writing the folder its own command writes:

    captions      <data>/train/caption/<id>.txt, only where missing (needs --caption-model)
    warm-up       <out>/warmup          (train-warmup; final head <out>/warmup/head)
    creation      <out>/synthetic       (create-data with the warm-up head)
    self-improve  <out>/self_improve    (train-self-improve; heads exploitation/ and creation/)
    evaluation    <out>/eval_warmup, eval_exploitation, eval_creation (evaluate, test split)
    report        <out>/report.md       (metrics beside the published numbers, with sources)

Every hyper-parameter comes from one YAML file (`configs/reproduce.yaml`, or `--config`), copied
to `<out>/reproduce.yaml`. Running the same command again continues where it stopped: a stage
whose final output exists is skipped, an interrupted one resumes through its own resume (training
state, finished synthetic samples). Under `torchrun` / `accelerate launch` every stage uses every
process, as the single commands do.

`dry_run=True` runs every stage on a handful of images at 64x64 with the shipped `tiny-scenes`
backbone into `<out>/dry_run` (seconds on a CPU); `plan()` prints the cost of a run per stage.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..atomic import save_text
from ..config import (
    REPRODUCE_SETS,
    REPRODUCE_SHARED,
    CreateConfig,
    EvaluateSettings,
    ReproduceConfig,
    SelfImproveConfig,
    WarmupConfig,
    stage_defaults,
)
from ..config_check import check_config
from ..data import NormalsDataset
from ..data.layout import list_ids, sample_paths
from ..errors import InputError
from ..path_overlap import refuse_overlap
from ..run_settings import REPRODUCE_FREE, check_recorded, record_settings
from ..training.run_folder import RunDir, to_plain
from .stage_clock import StageClock

STAGE_CLASSES = {
    "warmup": WarmupConfig,
    "create": CreateConfig,
    "self_improve": SelfImproveConfig,
    "evaluate": EvaluateSettings,
}
# The heads evaluated: name -> (stage folder, head folder).
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
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    is_main: bool = True  # the process that wrote the report (others under torchrun: False)


# ----------------------------------------------------------------------------- settings


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
    return StageConfigs(
        warmup=_stage(WarmupConfig, "warmup", cfg.warmup, {**shared, "out": str(root / "warmup")}),
        create=_stage(
            CreateConfig, "create", cfg.create, {**shared, "out": str(root / "synthetic"), "head": warm_head}
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
    return dataclasses.replace(cfg, **sections)


def dry_run_config(cfg: ReproduceConfig) -> ReproduceConfig:
    """`cfg` made small: tiny-scenes at 64x64, a few steps per stage, into `<out>/dry_run`."""
    sections = {k: {**getattr(cfg, k), **DRY_RUN[k]} for k in STAGE_CLASSES}
    top = {k: v for k, v in DRY_RUN.items() if k not in STAGE_CLASSES}
    root = Path(cfg.out) / "dry_run"
    return dataclasses.replace(cfg, **top, **sections, out=str(root), data=str(root / "data"))


def record_config(cfg: ReproduceConfig, dry_run: bool) -> None:
    """Write `<out>/reproduce.yaml`, or refuse to continue a folder made with other settings."""
    root = Path(cfg.out)
    path = root / "reproduce.yaml"
    plain = to_plain(cfg)
    if check_recorded(
        path,
        plain,
        f"{path}: this folder holds a reproduction with other settings",
        "run it with the same settings to continue, or use another --out",
        free=REPRODUCE_FREE,
    ):
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


# ----------------------------------------------------------------------------- data


def make_dry_run_data(source: str, root: Path, progress: bool) -> None:
    """The dry run's data: the first few samples of `source` (copied), or procedural scenes."""
    if source:
        for split, n in DRY_RUN_IMAGES.items():
            ids = list_ids(source, split)
            if len(ids) < n:
                raise InputError(f"reproduce --dry-run: {source}/{split} has {len(ids)} image(s), needs {n}")
            for sid in ids[:n]:
                src, dst = sample_paths(source, split, sid), sample_paths(root, split, sid)
                dst_image = dst.image.with_suffix(src.image.suffix)
                for a, b in (
                    (src.normal_png, dst.normal_png),
                    (src.normal_npy, dst.normal_npy),
                    (src.caption, dst.caption),
                    (src.image, dst_image),  # last: a sample is listed once its image exists
                ):
                    if a.is_file() and not b.exists():
                        b.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(a, b)
        return
    from ..data.scenes import make_scenes

    make_scenes(
        root, DRY_RUN_IMAGES["train"], DRY_RUN_IMAGES["test"], size=DRY_RUN_SCENE_SIZE, progress=progress
    )


def ensure_captions(cfg: ReproduceConfig, split: str, check_only: bool = False) -> str:
    """Caption the training images that have none (data creation is conditioned on captions);
    `check_only`: only refuse missing captions without a caption model."""
    from ..captioning import caption_dataset, find_missing

    missing, have = find_missing(cfg.data, [split])
    if not missing:
        return "skipped"
    if not cfg.caption_model:
        where = Path(cfg.data) / split / "caption"
        raise InputError(
            f"reproduce: {len(missing)} of {len(missing) + have} training images have no caption in {where} "
            "(data creation is conditioned on them); give --caption-model PATH, a local folder of a "
            "transformers image-to-text model such as BLIP, or write the <id>.txt files yourself"
        )
    if check_only:
        return "to do"
    caption_dataset(cfg.data, cfg.caption_model, splits=[split], device=cfg.device, progress=cfg.progress)
    missing, _ = find_missing(cfg.data, [split])
    if missing:
        raise InputError(
            f"reproduce: the caption model gave no caption for {len(missing)} image(s) "
            f"(first: {missing[0].image}); write them by hand or use another --caption-model"
        )
    return "ran" if not have else "resumed"


# ----------------------------------------------------------------------------- run


def _head_done(folder: Path) -> bool:
    from ..heads.normal_head import WEIGHTS_NAMES

    return any((folder / w).exists() for w in WEIGHTS_NAMES)


def _training_done(run: RunDir, cfg: Any) -> bool:
    """Whether a training run's saved state is at its end (all epochs, or its max_steps)."""
    try:
        meta = json.loads((run.state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return False
    if cfg.max_steps and meta.get("step", 0) >= cfg.max_steps:
        return True
    return meta.get("epoch", 0) >= cfg.epochs


# Relative cost of each stage for the time-left estimate (the plan's one-H100 times, in minutes).
STAGE_WEIGHTS = {
    "captions": 1.0,
    "warm-up": 54.0,
    "creation": 25.0,
    "self-improve": 168.0,
    **{f"evaluate {k}": 0.7 for k in HEADS},
}


def _say(main: bool, text: str) -> None:
    if main:
        print(f"[reproduce] {text}", flush=True)


def run_reproduce(cfg: ReproduceConfig, dry_run: bool = False) -> ReproduceResult:
    """Run (or continue) every stage into `cfg.out`; returns the report's path, the stages' status
    and the metrics. See the module docstring."""
    import torch
    from accelerate import PartialState

    from ..backbone import autocast_dtype, ddim_inference_steps, load_backbone, weights_dtype
    from ..heads import NormalHead
    from ..inference.predictor import NormalPredictor
    from ..info import best_device
    from ..stages.create import create_data, write_manifest
    from ..stages.evaluate import evaluate
    from ..stages.self_improve import train_self_improve
    from ..stages.warmup import train_warmup
    from ..training.loop import check_batches

    if not cfg.out:
        raise InputError("reproduce: missing --out")
    # Outputs never touch inputs: checked here, not after hours in the stage that would notice.
    refuse_overlap(cfg.out, data=cfg.data, backbone=cfg.backbone, caption_model=cfg.caption_model)
    source = cfg.data
    cfg = complete(cfg)
    if dry_run:
        cfg = dry_run_config(cfg)
    missing = [f"--{k}" for k in ("data", "backbone") if not getattr(cfg, k)]
    if missing:
        raise InputError("reproduce: missing " + ", ".join(missing))
    st = stage_configs(cfg)  # bad settings fail here, before any work
    root = Path(cfg.out)
    # As the training loop's Accelerator: on a machine without CUDA, "auto" is the CPU (and only
    # cpu=True makes accelerate join torchrun's process group there, with gloo).
    state = PartialState(cpu=cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()))
    main = state.is_main_process
    result = ReproduceResult(out=root, report=root / "report.md", is_main=main)

    if dry_run:
        h, w = cfg.resolution
        _say(main, f"dry run: {cfg.backbone}, {h}x{w}, a few steps per stage, into {root}")
        if main:
            make_dry_run_data(source, root / "data", cfg.progress)
        state.wait_for_everyone()

    # Everything that can be checked without the models, before any long stage.
    with warnings.catch_warnings():  # missing captions: made below, or an error
        warnings.filterwarnings("ignore", message=".*have no caption file")
        train = NormalsDataset(
            cfg.data,
            st.warmup.split,
            size=cfg.resolution,
            resize=cfg.resize,
            on_error="skip" if st.warmup.skip_bad_samples else "raise",
        )
        NormalsDataset(cfg.data, st.evaluate.split, size=None, captions=False)
    ensure_captions(cfg, st.create.split, check_only=True)
    check_batches(len(train), st.warmup)
    check_batches(len(train) * (1 + st.create.samples_per_image), st.self_improve)
    if main:
        record_config(cfg, dry_run)
    state.wait_for_everyone()

    names = ["captions", "warm-up", "creation", "self-improve", *(f"evaluate {k}" for k in HEADS)]
    clock = StageClock([("", n) for n in names], STAGE_WEIGHTS, say=lambda text: _say(main, text))

    def stage(name: str, fn) -> None:
        clock.start("", name)
        t = time.perf_counter()
        result.stages[name] = fn()
        clock.done("", name, time.perf_counter() - t)
        result.seconds[name] = time.perf_counter() - t
        state.wait_for_everyone()
        _say(main, f"{name}: {result.stages[name]} ({result.seconds[name]:.1f} s)")

    def captions() -> str:
        if main:
            return ensure_captions(cfg, st.create.split)
        return "ran by the main process"

    stage("captions", captions)

    device = state.device if cfg.device == "auto" else torch.device(cfg.device)
    if cfg.device == "auto" and state.num_processes == 1:
        device = torch.device(best_device())
    backbone = load_backbone(cfg.backbone, device=device, dtype=weights_dtype(cfg.mixed_precision))
    # A step count DDIM cannot take fails now, not after the warm-up's hours.
    ddim_inference_steps(backbone.num_timesteps, st.create.t_start, st.create.steps)

    def train_stage(cfg_: Any, finals: tuple[str, ...], train_fn) -> str:
        run = RunDir(cfg_.out)
        if _training_done(run, cfg_) and all(_head_done(run.root / f) for f in finals):
            return "skipped"
        resume = run.has_state()
        train_fn(cfg_, resume=resume, backbone=backbone)
        return "resumed" if resume else "ran"

    stage("warm-up", lambda: train_stage(st.warmup, ("head",), train_warmup))

    def create() -> str:
        out = Path(st.create.out)
        total = (
            len(NormalsDataset(cfg.data, st.create.split, size=None, labels=False))
            * st.create.samples_per_image
        )
        done = len(list((out / "meta").glob("*.json"))) if (out / "meta").is_dir() else 0
        if done >= total and (out / "manifest.jsonl").exists():
            return "skipped"
        head = NormalHead.from_pretrained(st.create.head).to(device)
        create_data(st.create, backbone, head, rank=state.process_index, world=state.num_processes)
        state.wait_for_everyone()
        if main:
            write_manifest(out)
        return "resumed" if done else "ran"

    stage("creation", create)
    stage(
        "self-improve",
        lambda: train_stage(st.self_improve, ("exploitation", "creation"), train_self_improve),
    )

    for name, (folder, head_name) in HEADS.items():

        def run_eval(name: str = name, head_dir: Path = root / folder / head_name) -> str:
            out = root / f"eval_{name}"
            if (out / "metrics.json").exists():
                result.metrics[name] = json.loads((out / "metrics.json").read_text())
                return "skipped"
            predictor = NormalPredictor(
                backbone,
                NormalHead.from_pretrained(head_dir),
                seed=st.evaluate.noise_seed,
                autocast_dtype=autocast_dtype(cfg.mixed_precision),
            )
            res = evaluate(
                predictor,
                cfg.data,
                st.evaluate.split,
                out=out,
                batch_size=st.evaluate.batch_size,
                progress=cfg.progress,
                limit=st.evaluate.limit,
                skip_bad_samples=st.warmup.skip_bad_samples,
            )
            result.metrics[name] = res.metrics
            return "ran"

        stage(f"evaluate {name}", run_eval)

    if main:
        counts = {s: len(list_ids(cfg.data, s)) for s in (st.warmup.split, st.evaluate.split)}
        save_text(root / "metrics.json", json.dumps(result.metrics, indent=1))
        save_text(result.report, report_text(cfg, st, result, counts, dry_run))
        _say(main, f"report written to {result.report}")
    state.wait_for_everyone()
    return result


# ----------------------------------------------------------------------------- report


def published_rows() -> list[dict[str, Any]]:
    """The published numbers shipped in `configs/published.yaml` (with sources and status)."""
    text = (resources.files("diff2in1.configs") / "published.yaml").read_text()
    return yaml.safe_load(text)["rows"]


def _num(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{float(v):.{digits}f}"


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
    lines += [
        "",
        "## Stages (this invocation)",
        "",
        "| stage | status | seconds | output |",
        "|---|---|---|---|",
    ]
    outputs = {
        "captions": f"{cfg.data}/{st.create.split}/caption",
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


# ----------------------------------------------------------------------------- plan

NYU_COUNTS = (795, 654)  # NYUv2's official train / test split
PASSES = ("unet_forward", "vae_encode", "vae_decode", "head_eval", "head_train")
PASS_LABELS = ("UNet", "VAE enc", "VAE dec", "head eval", "head train")
COLUMNS = (("cpu", "fp32"), ("cpu", "bf16"), ("h100", "bf16"), ("h100", "fp32"))


def measured() -> dict[str, Any]:
    """The measured costs shipped in `configs/measured.yaml` (FLOPs, seconds, memory, with sources)."""
    return yaml.safe_load((resources.files("diff2in1.configs") / "measured.yaml").read_text())


@dataclass
class StagePlan:
    """One stage of a plan: its passes and its expected seconds per (device, precision)."""

    name: str
    work: str
    passes: dict[str, int]
    seconds: dict[tuple[str, str], float]
    memory: str = "n/m"

    def flops(self, per_pass: dict[str, float], scale: float) -> float:
        return sum(self.passes[p] * per_pass[p] * 1e9 * scale for p in PASSES)


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def plan_stages(cfg: ReproduceConfig, n_train: int, n_test: int) -> tuple[list[StagePlan], dict[str, Any]]:
    """Pass counts and expected times of every stage of `cfg` on n_train / n_test images."""
    cfg = complete(cfg)
    st = stage_configs(dataclasses.replace(cfg, out=cfg.out or "out"))
    m = measured()
    h, w = cfg.resolution
    scale = h * w / 512**2  # FLOPs and times grow about with the pixel count (estimate off 512x512)
    sec = {(d, p): m["devices"][d]["seconds_per_image"][p] for d, p in COLUMNS}
    per_pass = m["flops_g_per_pass"]
    stages = []

    def steps_of(c: Any, n: int) -> int:  # image-steps of a training stage
        per_epoch = n // c.batch_size if c.drop_last else -(-n // c.batch_size)
        steps = c.epochs * per_epoch
        if c.max_steps:
            steps = min(steps, c.max_steps * c.grad_accum)
        return steps * c.batch_size

    def train_seconds(c: Any, images: int, encodes: int, key: str) -> dict[tuple[str, str], float]:
        out = {}
        for col, t in sec.items():
            step = (
                t[key] if key != "warmup_step" else (t["warmup_step_cached"] if c.posterior_cache else t[key])
            )
            extra = t["warmup_step"] - t["warmup_step_cached"]  # one VAE encoder pass
            if key == "warmup_step":
                out[col] = (images * step + (encodes * extra if c.posterior_cache else 0)) * scale
            else:
                out[col] = (images * step + (0 if c.posterior_cache else (images - encodes) * extra)) * scale
        return out

    def memory(key: str) -> str:
        mem = m["devices"]["h100"]["peak_memory_gb"]
        vals = [mem[p].get(key) for p in ("bf16", "fp32")]
        return " / ".join("n/m" if v is None else f"{v:.1f}" for v in vals) + " GB (b1)"

    wu = st.warmup
    s_w = steps_of(wu, n_train)
    enc_w = min(n_train, s_w) if wu.posterior_cache else s_w
    stages.append(
        StagePlan(
            "warm-up",
            f"{wu.epochs} ep x {s_w // max(1, wu.epochs * wu.batch_size)} steps x {wu.batch_size}",
            {"unet_forward": s_w, "vae_encode": enc_w, "vae_decode": 0, "head_eval": 0, "head_train": s_w},
            train_seconds(wu, s_w, enc_w, "warmup_step"),
            memory("training"),
        )
    )

    cr = st.create
    n_syn = n_train * cr.samples_per_image
    unet_per = cr.steps * (2 if cr.guidance > 1 else 1)  # classifier-free guidance runs the UNet twice

    def sample_flops(unet: int) -> float:
        return (
            per_pass["vae_encode"]
            + unet * per_pass["unet_forward"]
            + per_pass["vae_decode"]
            + per_pass["head_eval"]
        )

    ratio = sample_flops(unet_per) / sample_flops(50)  # the measured sample: 50 steps, no guidance
    stages.append(
        StagePlan(
            "creation",
            f"{n_syn} samples x {cr.steps} DDIM steps",
            {
                "unet_forward": n_syn * unet_per,
                "vae_encode": n_syn,
                "vae_decode": n_syn,
                "head_eval": n_syn,
                "head_train": 0,
            },
            {col: n_syn * t["created_sample"] * ratio * scale for col, t in sec.items()},
        )
    )

    si = st.self_improve
    s_s = steps_of(si, n_train + n_syn)
    enc_s = min(n_train + n_syn, s_s) if si.posterior_cache else s_s
    stages.append(
        StagePlan(
            "self-improve",
            f"{si.epochs} ep x {s_s // max(1, si.epochs * si.batch_size)} steps x {si.batch_size}",
            # The creation head labels each batch (all of it, then the synthetic samples are kept).
            {"unet_forward": s_s, "vae_encode": enc_s, "vae_decode": 0, "head_eval": s_s, "head_train": s_s},
            train_seconds(si, s_s, enc_s, "self_improve_step"),
            memory("self_improve"),
        )
    )

    ev = st.evaluate
    n_eval = len(HEADS) * (min(n_test, ev.limit) if ev.limit else n_test)
    stages.append(
        StagePlan(
            "evaluation",
            f"{len(HEADS)} heads x {n_eval // len(HEADS)} images",
            {
                "unet_forward": n_eval,
                "vae_encode": n_eval,
                "vae_decode": 0,
                "head_eval": n_eval,
                "head_train": 0,
            },
            {col: n_eval * t["prediction"] * scale for col, t in sec.items()},
        )
    )
    return stages, m


def plan(cfg: ReproduceConfig) -> str:
    """The plan of a reproduction: per stage, the UNet / VAE / head passes, FLOPs, and the time and
    memory expected on this project's CPU and on an H100 (from `configs/measured.yaml`)."""
    counts, where = NYU_COUNTS, "NYUv2's official split"
    if cfg.data and Path(cfg.data).is_dir():
        st = stage_configs(dataclasses.replace(cfg, out=cfg.out or "out"))
        counts = (len(list_ids(cfg.data, st.warmup.split)), len(list_ids(cfg.data, st.evaluate.split)))
        where = f"`{cfg.data}`"
    n_train, n_test = counts
    stages, m = plan_stages(cfg, n_train, n_test)
    h, w = cfg.resolution
    scale = h * w / 512**2
    per_pass = m["flops_g_per_pass"]
    head = ["stage", "work", *PASS_LABELS, "PFLOP"]
    head += [f"{'2-core CPU' if d == 'cpu' else 'H100'} {p}" for d, p in COLUMNS] + [
        "H100 memory bf16 / fp32"
    ]
    rows = []
    total_sec = {col: 0.0 for col in COLUMNS}
    total_flops = 0.0
    for s in stages:
        f = s.flops(per_pass, scale)
        total_flops += f
        for col in COLUMNS:
            total_sec[col] += s.seconds[col]
        rows.append(
            [s.name, s.work, *(f"{s.passes[p]:,}" for p in PASSES), f"{f / 1e15:.1f}"]
            + [_duration(s.seconds[col]) for col in COLUMNS]
            + [s.memory]
        )
    rows.append(
        ["total", "", *("" for _ in PASSES), f"{total_flops / 1e15:.1f}"]
        + [_duration(total_sec[col]) for col in COLUMNS]
        + [""]
    )
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    gpu, cpu = m["devices"]["h100"], m["devices"]["cpu"]
    fixed = {  # backbone weights + head weights, gradients and Adam moments (fp32)
        p: m["parameters"]["backbone"] * (2 if p == "bf16" else 4) / 1e9 + m["parameters"]["head"] * 16 / 1e9
        for p in ("bf16", "fp32")
    }
    batch = stage_configs(dataclasses.replace(cfg, out=cfg.out or "out")).warmup.batch_size
    cpu_mem = cpu["peak_memory_gb"]
    est = {p: fixed[p] + batch * (gpu["peak_memory_gb"][p]["training"] - fixed[p]) for p in ("bf16", "fp32")}
    notes = [
        f"Plan of `diff2in1 reproduce` for {n_train} train / {n_test} test images ({where}) at {h}x{w}, "
        "with the settings of reproduce.yaml (the research recipe unless --config changes it).",
        "",
        *table,
        "",
        "- Passes per image: warm-up step = UNet at t=0 + head forward and backward (the VAE encoder "
        "runs once per image: its posterior is cached); created sample = VAE encoder + one UNet pass per "
        "DDIM step + VAE decoder + head; self-improving step = UNet + the exploitation head trained + the "
        "creation head labelling the batch; evaluation = VAE encoder + UNet + head. The CLIP text encoder "
        "(once per caption) and captioning are left out.",
        f"- FLOPs per pass at 512x512, measured ({per_pass['measured']}): UNet {per_pass['unet_forward']} G, "
        f"VAE encoder {per_pass['vae_encode']} G, decoder {per_pass['vae_decode']} G, head "
        f"{per_pass['head_eval']} G, head forward + backward {per_pass['head_train']} G. The totals are "
        "these times the pass counts.",
        f"- Seconds per image, measured at batch 1: H100 = {gpu['name']} ({gpu['measured']}); 2-core CPU = "
        f"{cpu['name']} ({cpu['measured']}). Every time in the table is an estimate: the measured "
        "per-image time times the images of the stage"
        + ("" if scale == 1 else f", scaled by the pixel count ({scale:.2f}x of 512x512)")
        + ". A GPU is usually faster per image at the recipe's batch 8 than at batch 1; with N GPUs "
        "(torchrun / accelerate launch) divide by about N.",
        f"- H100 memory: peak measured at batch 1 (b1; n/m = not measured). At batch {batch} (estimate, "
        f"linear in the batch beyond the weights and optimizer): about {est['bf16']:.0f} GB bf16 / "
        f"{est['fp32']:.0f} GB fp32 for the warm-up. The 2-core CPU's peak resident memory at batch 1 "
        f"(measured): {cpu_mem['fp32']['training']} GB fp32, {cpu_mem['bf16']['training']} GB bf16.",
    ]
    return "\n".join(notes)
