"""Running a reproduction: its data (dry-run data, captions) and every stage in order, each skipped,
resumed or run, with the stage clock's headers."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...atomic import save_text
from ...config import ReproduceConfig
from ...data import NormalsDataset
from ...data.layout import list_ids, sample_paths
from ...errors import InputError
from ...out_folder import claim_output_folder
from ...path_overlap import refuse_overlap
from ...training.run_folder import RunDir
from ..stage_clock import StageClock
from .multitask_data import (
    check_label_folders,
    check_multitask_data,
    copy_nyudmt_samples,
    eval_split,
    is_nyudmt,
    make_caption_source,
    nyudmt_ids,
)
from .recipe import (
    DRY_RUN_IMAGES,
    DRY_RUN_SCENE_SIZE,
    HEADS,
    ReproduceResult,
    StageConfigs,
    complete,
    dry_run_config,
    head_folder,
    record_config,
    stage_configs,
    tasks_of,
)
from .report import report_text


def make_dry_run_data(
    source: str,
    root: Path,
    progress: bool,
    tasks: tuple[str, ...] = ("normals",),
    test_split: str = "test",
) -> None:
    """The dry run's data: the first few samples of `source`'s training split and of `test_split`
    (the run's evaluation split; copied with the label files of `tasks`, a NYUD-MT folder stays
    one), or procedural scenes (their evaluation split is `test`)."""
    n_train, n_test = DRY_RUN_IMAGES["train"], DRY_RUN_IMAGES["test"]
    if source and is_nyudmt(source):
        copy_nyudmt_samples(source, root, {"train": n_train}, n_test, tasks, test_split)
        return
    if source:
        from ...data.labels import CLASSES_FILE
        from ...data.layout import label_paths

        for split, n in {"train": n_train, test_split: n_test}.items():
            ids = list_ids(source, split)
            if len(ids) < n:
                raise InputError(f"reproduce --dry-run: {source}/{split} has {len(ids)} image(s), needs {n}")
            for sid in ids[:n]:
                src, dst = sample_paths(source, split, sid), sample_paths(root, split, sid)
                dst_image = dst.image.with_suffix(src.image.suffix)
                pairs = [(src.normal_png, dst.normal_png), (src.normal_npy, dst.normal_npy)]
                lsrc, ldst = label_paths(source, split, sid), label_paths(root, split, sid)
                if "depth" in tasks:
                    pairs += [(lsrc.depth_npy, ldst.depth_npy), (lsrc.depth_png, ldst.depth_png)]
                if "segmentation" in tasks:
                    pairs.append((lsrc.seg, ldst.seg))
                pairs += [(src.caption, dst.caption), (src.image, dst_image)]  # image last: then listed
                for a, b in pairs:
                    if a.is_file() and not b.exists():
                        b.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(a, b)
        classes = Path(source) / CLASSES_FILE
        if "segmentation" in tasks and classes.is_file() and not (root / CLASSES_FILE).exists():
            shutil.copyfile(classes, root / CLASSES_FILE)
        return
    from ...data.scenes import make_scenes

    make_scenes(
        root, DRY_RUN_IMAGES["train"], DRY_RUN_IMAGES["test"], size=DRY_RUN_SCENE_SIZE, progress=progress
    )


def ensure_captions(cfg: ReproduceConfig, split: str, check_only: bool = False, data: str = "") -> str:
    """Caption the training images of `data` (default `cfg.data`) that have none (data creation is
    conditioned on captions); `check_only`: only refuse missing captions without a caption model."""
    from ...captioning import caption_dataset, find_missing

    data = data or cfg.data
    missing, have = find_missing(data, [split])
    if not missing:
        return "skipped"
    if not cfg.caption_model:
        where = Path(data) / split / "caption"
        raise InputError(
            f"reproduce: {len(missing)} of {len(missing) + have} training images have no caption in {where} "
            "(data creation is conditioned on them); give --caption-model PATH, a local folder of a "
            "transformers image-to-text model such as BLIP, or write the <id>.txt files yourself"
        )
    if check_only:
        return "to do"
    caption_dataset(data, cfg.caption_model, splits=[split], device=cfg.device, progress=cfg.progress)
    missing, _ = find_missing(data, [split])
    if missing:
        raise InputError(
            f"reproduce: the caption model gave no caption for {len(missing)} image(s) "
            f"(first: {missing[0].image}); write them by hand or use another --caption-model"
        )
    return "ran" if not have else "resumed"




def _count(data: str, split: str) -> int:
    """The images of a split (of the package's layout, or a NYUD-MT split list)."""
    return len(nyudmt_ids(data, split)) if is_nyudmt(data) else len(list_ids(data, split))


def _head_done(folder: Path) -> bool:
    from ...heads.normal_head import WEIGHTS_NAMES

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
    and the metrics. See the package docstring."""
    import torch
    from accelerate import PartialState

    from ...stages.self_improve import train_self_improve
    from ...stages.warmup import train_warmup
    from ...training.loop import check_batches

    if not cfg.out:
        raise InputError("reproduce: missing --out")
    # Outputs never touch inputs: checked here, not after hours in the stage that would notice.
    refuse_overlap(cfg.out, data=cfg.data, backbone=cfg.backbone, caption_model=cfg.caption_model)
    claim_output_folder(cfg.out, "reproduce", check_only=True)  # a user's folder is refused here
    given_out = cfg.out  # a dry run works in <out>/dry_run; the folder claimed is <out>
    source = cfg.data
    cfg = complete(cfg)
    if dry_run:
        cfg = dry_run_config(cfg)
    missing = [f"--{k}" for k in ("data", "backbone") if not getattr(cfg, k)]
    if missing:
        raise InputError("reproduce: missing " + ", ".join(missing))
    st = stage_configs(cfg)  # bad settings fail here, before any work
    tasks = tasks_of(cfg)
    root = Path(cfg.out)
    # As the training loop's Accelerator: on a machine without CUDA, "auto" is the CPU (and only
    # cpu=True makes accelerate join torchrun's process group there, with gloo).
    state = PartialState(cpu=cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()))
    main = state.is_main_process
    result = ReproduceResult(out=root, report=root / "report.md", is_main=main, tasks=tasks)

    if dry_run:
        h, w = cfg.resolution
        _say(main, f"dry run: {cfg.backbone}, {h}x{w}, a few steps per stage, into {root}")
        test_split = eval_split(source, st.evaluate.split) if source else "test"
        if main:
            claim_output_folder(given_out, "reproduce")  # its first write: the dry run's data
            make_dry_run_data(source, root / "data", cfg.progress, tasks, test_split)
        state.wait_for_everyone()
        st = stage_configs(cfg)  # its data exist now (a NYUD-MT copy: creation reads <out>/source)
        st.evaluate = dataclasses.replace(st.evaluate, split=test_split)
    st.evaluate = dataclasses.replace(st.evaluate, split=eval_split(cfg.data, st.evaluate.split))
    record_config(cfg, dry_run, write=False)  # a folder of other settings (other --tasks) is refused first

    # Everything that can be checked without the models, before any long stage.
    if tasks == ("normals",) and is_nyudmt(cfg.data):
        raise InputError(
            f"--data {cfg.data}: a NYUD-MT folder, read with --tasks (e.g. normals,depth,segmentation); "
            "the normals-only recipe reads <root>/{train,test}/{img,norm}"
        )
    if tasks == ("normals",):  # the research recipe's checks, unchanged
        with warnings.catch_warnings():  # missing captions: made below, or an error
            warnings.filterwarnings("ignore", message=".*have no caption file")
            n_train = len(
                NormalsDataset(
                    cfg.data,
                    st.warmup.split,
                    size=cfg.resolution,
                    resize=cfg.resize,
                    on_error="skip" if st.warmup.skip_bad_samples else "raise",
                )
            )
            NormalsDataset(cfg.data, st.evaluate.split, size=None, captions=False)
    else:
        check_label_folders(cfg.data, tasks, (st.warmup.split, st.evaluate.split))
        n_train = check_multitask_data(
            cfg.data, st.warmup.split, st.evaluate.split, tasks, cfg.resolution, cfg.resize,
            st.warmup.skip_bad_samples,
        )  # fmt: skip
        if is_nyudmt(cfg.data) and main:  # creation reads a captioned copy of the training images
            claim_output_folder(given_out, "reproduce")
            make_caption_source(cfg.data, st.warmup.split, st.create.data)
        state.wait_for_everyone()
    ensure_captions(cfg, st.create.split, check_only=True, data=st.create.data)
    check_batches(n_train, st.warmup)
    check_batches(n_train * (1 + st.create.samples_per_image), st.self_improve)
    if main:
        claim_output_folder(given_out, "reproduce")  # the inputs passed: mark the folder, then write
        record_config(cfg, dry_run)
    state.wait_for_everyone()

    run = _Reproduction(cfg, st, state, result)
    run.stage("captions", run.captions)
    run.load_backbone()
    warm_finals = tuple(head_folder("warmup", t) for t in tasks)
    run.stage("warm-up", lambda: run.train(st.warmup, warm_finals, train_warmup))
    run.stage("creation", run.create)
    finals = tuple(head_folder(k, t) for k in ("exploitation", "creation") for t in tasks)
    run.stage("self-improve", lambda: run.train(st.self_improve, finals, train_self_improve))
    for name, (folder, _) in HEADS.items():
        heads = [root / folder / head_folder(name, t) for t in tasks]
        run.stage(f"evaluate {name}", lambda n=name, d=heads: run.evaluate(n, d))

    if main:
        counts = {s: _count(cfg.data, s) for s in (st.warmup.split, st.evaluate.split)}
        save_text(root / "metrics.json", json.dumps(result.metrics, indent=1))
        save_text(result.report, report_text(cfg, st, result, counts, dry_run))
        _say(main, f"report written to {result.report}")
    state.wait_for_everyone()
    return result


class _Reproduction:
    """The stages of one reproduction, sharing its settings, process state, backbone and result."""

    def __init__(self, cfg: ReproduceConfig, st: StageConfigs, state: Any, result: ReproduceResult) -> None:
        self.cfg, self.st, self.state, self.result = cfg, st, state, result
        self.main = state.is_main_process
        self.backbone: Any = None
        self.device: Any = None
        names = ["captions", "warm-up", "creation", "self-improve", *(f"evaluate {k}" for k in HEADS)]
        self.clock = StageClock(
            [("", n) for n in names], STAGE_WEIGHTS, say=lambda text: _say(self.main, text)
        )

    def stage(self, name: str, fn: Callable[[], str]) -> None:
        """Run one stage (`fn` returns "ran", "resumed" or "skipped"), timed, all processes in step."""
        self.clock.start("", name)
        t = time.perf_counter()
        self.result.stages[name] = fn()
        self.clock.done("", name, time.perf_counter() - t)
        self.result.seconds[name] = time.perf_counter() - t
        self.state.wait_for_everyone()
        _say(self.main, f"{name}: {self.result.stages[name]} ({self.result.seconds[name]:.1f} s)")

    def captions(self) -> str:
        if self.main:
            return ensure_captions(self.cfg, self.st.create.split, data=self.st.create.data)
        return "ran by the main process"

    def load_backbone(self) -> None:
        import torch

        from ...backbone import ddim_inference_steps, load_backbone, weights_dtype
        from ...info import best_device

        cfg = self.cfg
        device = self.state.device if cfg.device == "auto" else torch.device(cfg.device)
        if cfg.device == "auto" and self.state.num_processes == 1:
            device = torch.device(best_device())
        self.device = device
        self.backbone = load_backbone(cfg.backbone, device=device, dtype=weights_dtype(cfg.mixed_precision))
        # A step count DDIM cannot take fails now, not after the warm-up's hours.
        ddim_inference_steps(self.backbone.num_timesteps, self.st.create.t_start, self.st.create.steps)

    def train(self, cfg_: Any, finals: tuple[str, ...], train_fn: Callable[..., Any]) -> str:
        """A training stage: skipped when finished, else resumed from its state or run."""
        run = RunDir(cfg_.out)
        if _training_done(run, cfg_) and all(_head_done(run.root / f) for f in finals):
            return "skipped"
        resume = run.has_state()
        train_fn(cfg_, resume=resume, backbone=self.backbone)
        return "resumed" if resume else "ran"

    def create(self) -> str:
        from ...heads import NormalHead, load_head
        from ...stages.create import create_data, write_manifest

        st, state = self.st, self.state
        out = Path(st.create.out)
        total = (
            len(NormalsDataset(st.create.data, st.create.split, size=None, labels=False))
            * st.create.samples_per_image
        )
        done = len(list((out / "meta").glob("*.json"))) if (out / "meta").is_dir() else 0
        if done >= total and (out / "manifest.jsonl").exists():
            return "skipped"
        head: Any = NormalHead.from_pretrained(st.create.head).to(self.device)
        if self.result.tasks != ("normals",):  # one UNet run per sample feeds every task's head
            extra = {t: getattr(st.create, f"{t}_head") for t in self.result.tasks if t != "normals"}
            head = {"normals": head, **{t: load_head(f, t, self.device) for t, f in extra.items()}}
        create_data(st.create, self.backbone, head, rank=state.process_index, world=state.num_processes)
        state.wait_for_everyone()
        if self.main:
            write_manifest(out)
        return "resumed" if done else "ran"

    def evaluate(self, name: str, head_dirs: list[Path]) -> str:
        """Evaluate one head (or, with --tasks, its head set on one backbone pass per batch)."""
        from ...backbone import autocast_dtype
        from ...heads import NormalHead
        from ...inference.predictor import NormalPredictor, TaskPredictor
        from ...stages.evaluate import evaluate

        cfg, ev = self.cfg, self.st.evaluate
        out = Path(cfg.out) / f"eval_{name}"
        if (out / "metrics.json").exists():
            self.result.metrics[name] = json.loads((out / "metrics.json").read_text())
            return "skipped"
        kw = {"seed": ev.noise_seed, "autocast_dtype": autocast_dtype(cfg.mixed_precision)}
        if len(head_dirs) == 1:
            predictor: Any = NormalPredictor(self.backbone, NormalHead.from_pretrained(head_dirs[0]), **kw)
        else:
            predictor = TaskPredictor(self.backbone, [str(d) for d in head_dirs], **kw)
        res = evaluate(
            predictor,
            cfg.data,
            ev.split,
            out=out,
            batch_size=ev.batch_size,
            progress=cfg.progress,
            limit=ev.limit,
            skip_bad_samples=self.st.warmup.skip_bad_samples,
        )
        self.result.metrics[name] = res.metrics | res.task_metrics  # as metrics.json holds them
        return "ran"
