"""`diff2in1 demo`: the whole method end to end on procedural scenes with the shipped backbone.

make scenes -> for each seed: warm-up heads (one per task: normals, depth, segmentation by
default) -> create multi-modal synthetic data (every task's label from one UNet run per sample)
-> self-improving stage, plus a control (the warm-up heads trained for the same extra steps on
original data only) -> evaluate all on the test scenes -> `report.md` with per-task tables and
figures, the arms compared over the seeds (mean and spread, and the self-improved minus control
difference paired by seed with a 95 % interval, per task). The report is written by
`demo_report.py`, the figures by `demo_figures.py`.

Layout: `data/` (the scenes, shared), `seed_<s>/{warmup,synthetic,self_improve,control,eval}`,
`demo_config.json` (the settings; a folder made with other settings is refused),
`stage_times.json`, `metrics.json`, `report.md`, `fig_*.png`. Every stage writes its own run
folder, so the demo resumes where it stopped when run again with the same `--out`; the time of
each stage is kept in `stage_times.json` (a stage resumed after an interruption adds its runs).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..atomic import save_text
from ..backbone import load_backbone
from ..config import CreateConfig, SelfImproveConfig, WarmupConfig
from ..data.scenes import make_scenes
from ..errors import InputError
from ..heads import NormalHead, load_head
from ..heads.normal_head import WEIGHTS_NAMES
from ..inference.predictor import NormalPredictor, TaskPredictor
from ..out_folder import claim_output_folder
from ..stages.create import create_data
from ..stages.evaluate import evaluate
from ..stages.self_improve import pair_names, train_self_improve
from ..stages.warmup import HEAD_FOLDERS, train_warmup
from ..tasks import TASKS
from ..training.run_folder import RunDir
from .demo_settings import DemoConfig, check_or_record
from .stage_clock import StageClock

WARMUP = "warm-up"
EXPLOIT = "self-improved (exploitation)"
CREATION = "self-improved (creation)"
CONTROL = "control (warm-up + same steps, original data)"
# arm -> (run folder, eval folder) inside a seed's folder
ARMS = {
    WARMUP: ("warmup", "warmup"),
    EXPLOIT: ("self_improve", "exploitation"),
    CREATION: ("self_improve", "creation"),
    CONTROL: ("control", "control"),
}
SEED_STAGES = ("warm-up", "create data", "self-improve", "control", "evaluate")
# Rough relative cost of each stage at the default sizes, for the time-left estimate of the first
# seed (later seeds use the first seed's measured times).
STAGE_WEIGHTS = {
    "make scenes": 0.2,
    "warm-up": 6.0,
    "create data": 10.0,
    "self-improve": 4.5,
    "control": 3.0,
    "evaluate": 2.0,
    "figures and report": 0.5,
}


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container's or taskset's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pick_threads(requested: int | None = None) -> str:
    """Set torch's CPU threads to `requested`, else to the usable cores; returns a line saying so."""
    n = requested or usable_cores()
    torch.set_num_threads(n)
    why = "--threads" if requested else "the cores this process may use; --threads N to choose"
    return f"[demo] {n} CPU thread(s) ({why})"


class StageTimes:
    """Seconds per stage, kept in a JSON file so a re-run of a finished demo keeps them.

    Each record is {"seconds": s, "done": bool}. A stage that does work adds its time to the
    record of an unfinished (interrupted) run of it, or starts afresh when its finished outputs
    were removed; a stage that finds its outputs done leaves its time as it was.
    """

    def __init__(self, path: Path, clock: StageClock | None = None) -> None:
        self.path = path
        self.records: dict[str, dict] = json.loads(path.read_text()) if path.exists() else {}
        self.clock = clock

    def run(self, name: str, fn: Callable[[], tuple[object, bool]]):
        """`fn() -> (result, did_work)`; returns the result and records the time. With a clock, a
        header line first ("seed 0: warm-up" is stage "warm-up" of group "seed 0")."""
        group, stage = name.split(": ", 1) if ": " in name else ("", name)
        if self.clock is not None:
            self.clock.start(group, stage)
        result = self._run(name, fn)
        if self.clock is not None:
            self.clock.done(group, stage, self.seconds(name))
        return result

    def _run(self, name: str, fn: Callable[[], tuple[object, bool]]):
        old = self.records.get(name, {"seconds": 0.0, "done": False})
        before = 0.0 if old.get("done") else float(old.get("seconds") or 0.0)
        t = time.perf_counter()
        try:
            result, worked = fn()
        except BaseException:  # interrupted or failed: keep the time spent for the resumed run
            self.records[name] = {"seconds": before + time.perf_counter() - t, "done": False}
            self._save()
            raise
        if worked:
            self.records[name] = {"seconds": before + time.perf_counter() - t, "done": True}
        elif name not in self.records:  # done by a run that kept no times
            self.records[name] = {"seconds": None, "done": True}
        else:
            self.records[name]["done"] = True
        self._save()
        return result

    def seconds(self, name: str) -> float | None:
        return self.records.get(name, {}).get("seconds")

    def _save(self) -> None:
        save_text(self.path, json.dumps(self.records, indent=1))


def _existing_or(run: Path, names: list[str], train) -> tuple[dict, bool]:
    """Run a training stage unless its final heads exist; resume it if it was interrupted."""
    if all(any((run / name / w).exists() for w in WEIGHTS_NAMES) for name in names):
        rows = (run / "log.csv").read_text().strip().splitlines()[1:] if (run / "log.csv").exists() else []
        return {"steps": len(rows), "losses": [float(r.split(",")[3]) for r in rows]}, False
    result = train(RunDir(run).config_path.exists())
    return {"steps": result.steps, "losses": result.losses}, True


def arm_heads(sd: Path, arm: str, tasks: tuple[str, ...]) -> dict[str, Path]:
    """task -> head folder of an arm in the seed folder `sd`."""
    run = sd / ARMS[arm][0]
    if arm == EXPLOIT:
        return {t: run / pair_names(t)[1] for t in tasks}
    if arm == CREATION:
        return {t: run / pair_names(t)[0] for t in tasks}
    return {t: run / HEAD_FOLDERS[t] for t in tasks}


def predictor_of(backbone, heads: dict[str, Path], res: tuple[int, int]):
    """The normals-only predictor for a lone normal head (as a normals-only demo always ran), else
    one predictor for the whole head set."""
    if list(heads) == ["normals"]:
        return NormalPredictor(backbone, NormalHead.from_pretrained(heads["normals"]), resolution=res)
    return TaskPredictor(backbone, [str(p) for p in heads.values()], resolution=res)


def _task_metrics(saved: dict, tasks: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """metrics.json of `evaluate` (normal metrics at the top, the other tasks under their names) ->
    task -> the task's numeric metrics."""
    out = {}
    for task in tasks:
        if task == "normals":
            out[task] = {k: v for k, v in saved.items() if not isinstance(v, (dict, list))}
        else:
            out[task] = {k: float(saved[task][k]) for k in TASKS[task].metric_keys}
    return out


def _run_seed(cfg: DemoConfig, seed: int, sd: Path, data: Path, backbone, times: StageTimes) -> dict:
    """Warm-up, creation, self-improvement, control and evaluation of one seed in `sd`."""
    res = (cfg.size, cfg.size)
    tasks = cfg.task_list
    common = dict(
        data=str(data),
        backbone=cfg.backbone,
        resolution=res,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=seed,
        progress=cfg.progress,
        checkpoint_every=0,
        num_workers=0,  # small images: loading in the training process is cheaper than workers
        feature_cache=cfg.feature_cache,
        tasks=cfg.tasks,
    )
    tag = f"seed {seed}: "
    warm_heads = arm_heads(sd, WARMUP, tasks)
    names = [HEAD_FOLDERS[t] for t in tasks]

    wcfg = WarmupConfig(**common, out=str(sd / "warmup"), head=cfg.head, epochs=cfg.warmup_epochs)
    warm = times.run(
        tag + "warm-up",
        lambda: _existing_or(sd / "warmup", names, lambda resume: train_warmup(wcfg, resume, backbone)),
    )
    extra_heads = {f"{t}_head": str(warm_heads[t]) for t in tasks if t != "normals"}

    ccfg = CreateConfig(
        data=str(data),
        backbone=cfg.backbone,
        head=str(warm_heads["normals"]),
        **extra_heads,
        out=str(sd / "synthetic"),
        resolution=res,
        t_start=cfg.t_start,
        steps=cfg.steps,
        seed=seed,
        batch_size=cfg.batch_size,
        progress=cfg.progress,
    )

    def create():
        heads = {t: load_head(p, t) for t, p in warm_heads.items()}
        made = create_data(ccfg, backbone, heads if len(heads) > 1 else heads["normals"])
        return made, made.created > 0

    times.run(tag + "create data", create)

    scfg = SelfImproveConfig(
        **common,
        out=str(sd / "self_improve"),
        synthetic=[ccfg.out],
        init=str(warm_heads["normals"]),
        epochs=cfg.self_improve_epochs,
        ema_decay=cfg.ema_decay,
        ema_every=cfg.ema_every,
        pseudo_labels=cfg.pseudo_labels,
    )
    exploit_names = [pair_names(t)[1] for t in tasks]
    si = times.run(
        tag + "self-improve",
        lambda: _existing_or(
            sd / "self_improve", exploit_names, lambda resume: train_self_improve(scfg, resume, backbone)
        ),
    )

    if si["steps"] < 1:  # the control would have no step count to match (and train without end)
        raise InputError(
            f"{sd / 'self_improve'}: its log.csv records no step; remove the folder to run the stage again"
        )
    # Control: the same number of extra steps on original data only, from the same warm-up heads.
    kcfg = WarmupConfig(
        **common,
        out=str(sd / "control"),
        head=str(warm_heads["normals"]),
        **extra_heads,
        epochs=10**6,
        max_steps=si["steps"],
    )
    control = times.run(
        tag + "control",
        lambda: _existing_or(sd / "control", names, lambda resume: train_warmup(kcfg, resume, backbone)),
    )

    def evaluate_all():
        metrics, calibration, worked = {}, {}, False
        for arm, (_, folder) in ARMS.items():
            where = sd / "eval" / folder
            if (where / "metrics.json").exists() and (where / "calibration.json").exists():
                metrics[arm] = _task_metrics(json.loads((where / "metrics.json").read_text()), tasks)
                calibration[arm] = json.loads((where / "calibration.json").read_text())
                continue
            predictor = predictor_of(backbone, arm_heads(sd, arm, tasks), res)
            result = evaluate(predictor, data, "test", out=where, batch_size=cfg.batch_size, progress=False)
            metrics[arm] = _task_metrics(result.metrics | result.task_metrics, tasks)
            calibration[arm], worked = result.calibration, True
        return (metrics, calibration), worked

    metrics, calibration = times.run(tag + "evaluate", evaluate_all)
    return {
        "warm": warm,
        "si": si,
        "control": control,
        "metrics": metrics,
        "calibration": calibration,
        "heads": {arm: arm_heads(sd, arm, tasks) for arm in ARMS},
        "synthetic": sd / "synthetic",
    }


def run_demo(cfg: DemoConfig) -> Path:
    """Run the demo into `cfg.out`; returns the path of `report.md`."""
    from .demo_figures import figures
    from .demo_report import report, summarize_all

    out = Path(cfg.out)
    claim_output_folder(out, "demo")  # a user's folder is refused; an earlier demo's resumed
    check_or_record(cfg, out)
    seed_stages = [(f"seed {s}", name) for s in cfg.seeds for name in SEED_STAGES]
    stages = [("", "make scenes"), *seed_stages, ("", "figures and report")]
    times = StageTimes(out / "stage_times.json", StageClock(stages, STAGE_WEIGHTS, say=_say))
    data = out / "data"

    def scenes():
        made = make_scenes(data, cfg.train, cfg.test, size=cfg.size, seed=cfg.seed, progress=cfg.progress)
        return made, made["written"] > 0

    times.run("make scenes", scenes)
    backbone = load_backbone(cfg.backbone)
    runs = {s: _run_seed(cfg, s, out / f"seed_{s}", data, backbone, times) for s in cfg.seeds}

    times.clock.start("", "figures and report")
    summary = summarize_all(cfg, {s: r["metrics"] for s, r in runs.items()})
    made = figures(out, data, backbone, runs, cfg)
    save_text(out / "report.md", report(cfg, runs, summary, times, made))
    save_text(out / "metrics.json", json.dumps(summary, indent=1))
    return out / "report.md"
