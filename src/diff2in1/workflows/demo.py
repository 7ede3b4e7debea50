"""`diff2in1 demo`: the whole method end to end on procedural scenes with the shipped backbone.

make scenes -> for each seed: warm-up head -> create synthetic data -> self-improving stage, plus
a control (the warm-up head trained for the same extra steps on original data only) -> evaluate
all on the test scenes -> `report.md` with figures, the arms compared over the seeds (mean and
spread, and the self-improved minus control difference paired by seed with a 95 % interval).

Layout: `data/` (the scenes, shared), `seed_<s>/{warmup,synthetic,self_improve,control,eval}`,
`stage_times.json`, `metrics.json`, `report.md`, `fig_*.png`. Every stage writes its own run
folder, so the demo resumes where it stopped when run again with the same `--out`; the time of
each stage is kept in `stage_times.json` (a stage resumed after an interruption adds its runs).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import save_text
from ..backbone import load_backbone
from ..config import CreateConfig, SelfImproveConfig, WarmupConfig
from ..data import NormalsDataset
from ..data.scenes import make_scenes
from ..heads import NormalHead
from ..heads.normal_head import WEIGHTS_NAMES
from ..inference.predictor import NormalPredictor
from ..intervals import mean_interval
from ..metrics import angular_error_deg
from ..out_folder import claim_output_folder
from ..stages.create import create_data
from ..stages.evaluate import evaluate, format_table
from ..stages.self_improve import train_self_improve
from ..stages.warmup import train_warmup
from ..training.run_folder import RunDir, to_plain
from ..viz import (
    add_colorbar,
    error_to_rgb,
    grid,
    image_to_rgb,
    line_plot,
    normal_to_rgb,
    reliability_plot,
    save_png,
    uncertainty_to_rgb,
    with_normal_key,
)
from .stage_clock import StageClock

WARMUP = "warm-up"
EXPLOIT = "self-improved (exploitation)"
CREATION = "self-improved (creation)"
CONTROL = "control (warm-up + same steps, original data)"
# arm -> (run folder, head folder) inside a seed's folder
ARMS = {
    WARMUP: ("warmup", "head"),
    EXPLOIT: ("self_improve", "exploitation"),
    CREATION: ("self_improve", "creation"),
    CONTROL: ("control", "head"),
}
COLOR_MAX_DEG = 45.0  # colour scale of the error and uncertainty maps
SEED_STAGES = ("warm-up", "create data", "self-improve", "control", "evaluate")
# Rough relative cost of each stage at the default sizes, for the time-left estimate of the first
# seed (later seeds use the first seed's measured times).
STAGE_WEIGHTS = {
    "make scenes": 0.3,
    "warm-up": 4.0,
    "create data": 5.0,
    "self-improve": 4.0,
    "control": 2.0,
    "evaluate": 1.0,
    "figures and report": 0.3,
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



@dataclass
class DemoConfig:
    """Sizes of the demo; `quick()` is the smoke-test version used by the tests (no verdict).

    Defaults (`make demo`, about 12 minutes on an idle 2-core CPU): 160 train / 40 test
    scenes at 128x128 (the same scenes for every seed), and for each of the 2 seeds a warm-up of 8
    epochs (160 steps of batch 8), 160 synthetic pairs (1 per training image, t_start 600, 50 DDIM
    steps), a self-improving stage of 2 epochs over real + synthetic (80 steps, EMA 0.998 every 10
    steps) and the control trained the same 80 steps on the real images only. `seed` is the seed of
    the scenes; `seeds` those of the training runs (and of the synthetic data), one run each.
    """

    out: str = "runs/demo"
    backbone: str = "tiny-scenes"
    size: int = 128
    train: int = 160
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
    progress: bool = True
    smoke: bool = False  # `--quick`: checks every stage runs; too small for a verdict

    def __post_init__(self) -> None:
        self.seeds = tuple(dict.fromkeys(int(s) for s in self.seeds))  # unique, in order
        if not self.seeds:
            raise ValueError("the demo needs at least one seed")

    @classmethod
    def quick(cls, **kw) -> DemoConfig:
        base = dict(train=24, test=8, warmup_epochs=3, self_improve_epochs=1, steps=12, smoke=True)
        return cls(**{**base, **kw})


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


def _existing_or(run: Path, name: str, train) -> tuple[dict, bool]:
    """Run a training stage unless its final head exists; resume it if it was interrupted."""
    if any((run / name / w).exists() for w in WEIGHTS_NAMES):
        rows = (run / "log.csv").read_text().strip().splitlines()[1:] if (run / "log.csv").exists() else []
        return {"steps": len(rows), "losses": [float(r.split(",")[3]) for r in rows]}, False
    result = train(RunDir(run).config_path.exists())
    return {"steps": result.steps, "losses": result.losses}, True


def _run_seed(cfg: DemoConfig, seed: int, sd: Path, data: Path, backbone, times: StageTimes) -> dict:
    """Warm-up, creation, self-improvement, control and evaluation of one seed in `sd`."""
    res = (cfg.size, cfg.size)
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
    )
    tag = f"seed {seed}: "

    wcfg = WarmupConfig(**common, out=str(sd / "warmup"), head=cfg.head, epochs=cfg.warmup_epochs)
    warm = times.run(
        tag + "warm-up",
        lambda: _existing_or(sd / "warmup", "head", lambda resume: train_warmup(wcfg, resume, backbone)),
    )
    warm_head = sd / "warmup" / "head"

    ccfg = CreateConfig(
        data=str(data),
        backbone=cfg.backbone,
        head=str(warm_head),
        out=str(sd / "synthetic"),
        resolution=res,
        t_start=cfg.t_start,
        steps=cfg.steps,
        seed=seed,
        batch_size=cfg.batch_size,
        progress=cfg.progress,
    )

    def create():
        made = create_data(ccfg, backbone, NormalHead.from_pretrained(warm_head))
        return made, made.created > 0

    times.run(tag + "create data", create)

    scfg = SelfImproveConfig(
        **common,
        out=str(sd / "self_improve"),
        synthetic=[ccfg.out],
        init=str(warm_head),
        epochs=cfg.self_improve_epochs,
        ema_decay=cfg.ema_decay,
        ema_every=cfg.ema_every,
    )
    si = times.run(
        tag + "self-improve",
        lambda: _existing_or(
            sd / "self_improve", "exploitation", lambda resume: train_self_improve(scfg, resume, backbone)
        ),
    )

    # Control: the same number of extra steps on original data only, from the same warm-up head.
    kcfg = WarmupConfig(
        **common, out=str(sd / "control"), head=str(warm_head), epochs=10**6, max_steps=si["steps"]
    )
    control = times.run(
        tag + "control",
        lambda: _existing_or(sd / "control", "head", lambda resume: train_warmup(kcfg, resume, backbone)),
    )

    def evaluate_all():
        metrics, calibration, worked = {}, {}, False
        for arm, (run, head) in ARMS.items():
            where = sd / "eval" / (head if run == "self_improve" else run)  # eval/warmup, eval/creation, ...
            if (where / "metrics.json").exists() and (where / "calibration.json").exists():
                metrics[arm] = json.loads((where / "metrics.json").read_text())
                calibration[arm] = json.loads((where / "calibration.json").read_text())
                continue
            result = evaluate(
                NormalPredictor(backbone, NormalHead.from_pretrained(sd / run / head), resolution=res),
                data,
                "test",
                out=where,
                batch_size=cfg.batch_size,
                progress=False,
            )
            metrics[arm], calibration[arm], worked = result.metrics, result.calibration, True
        return (metrics, calibration), worked

    metrics, calibration = times.run(tag + "evaluate", evaluate_all)
    return {
        "warm": warm,
        "si": si,
        "control": control,
        "metrics": metrics,
        "calibration": calibration,
        "heads": {arm: sd / run / head for arm, (run, head) in ARMS.items()},
    }


def run_demo(cfg: DemoConfig) -> Path:
    """Run the demo into `cfg.out`; returns the path of `report.md`."""
    out = Path(cfg.out)
    claim_output_folder(out, "demo")  # a user's folder is refused; an earlier demo's resumed
    save_text(out / "demo_config.json", json.dumps(to_plain(cfg), indent=1))
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
    summary = summarize({s: r["metrics"] for s, r in runs.items()})
    figures = _figures(out, data, backbone, runs, (cfg.size, cfg.size))
    save_text(out / "report.md", _report(cfg, runs, summary, times, figures))
    save_text(out / "metrics.json", json.dumps(summary, indent=1))
    return out / "report.md"


def summarize(per_seed: dict[int, dict[str, dict[str, float]]]) -> dict:
    """Per-seed metrics {seed: {arm: metrics}} -> per-seed values, per-arm mean/std/min/max of every
    metric, and the paired difference exploitation minus control (mean angular error) with its
    95 % t-interval over the seeds."""
    seeds = list(per_seed)
    arms = list(per_seed[seeds[0]])
    keys = [k for k in per_seed[seeds[0]][arms[0]] if k != "pixels"]
    arm_stats = {
        arm: {k: mean_interval([float(per_seed[s][arm][k]) for s in seeds]) for k in keys} for arm in arms
    }
    diffs = {s: float(per_seed[s][EXPLOIT]["mean"] - per_seed[s][CONTROL]["mean"]) for s in seeds}
    return {
        "seeds": seeds,
        "per_seed": {str(s): per_seed[s] for s in seeds},
        "arms": arm_stats,
        "difference": {
            "what": f"mean angular error (deg) of '{EXPLOIT}' minus '{CONTROL}', paired by seed",
            "per_seed": {str(s): d for s, d in diffs.items()},
            **mean_interval(list(diffs.values())),
        },
    }


def pool_calibration(results: list[dict]) -> dict:
    """Calibration results of several seeds (same bins) -> one: each bin's predicted and observed
    means pooled over the seeds' pixels; "gap" is the mean of the seeds' gaps, as the table shows."""
    pooled: dict[tuple[float, float], list[float]] = {}
    for r in results:
        for b in r["bins"]:
            acc = pooled.setdefault((b["from"], b["to"]), [0, 0.0, 0.0])
            acc[0] += b["pixels"]
            acc[1] += b["predicted"] * b["pixels"]
            acc[2] += b["observed"] * b["pixels"]
    bins = [
        {"from": lo, "to": hi, "pixels": n, "predicted": p / n, "observed": o / n}
        for (lo, hi), (n, p, o) in sorted(pooled.items())
        if n > 0
    ]
    return {"bins": bins, "gap": float(np.mean([r["gap"] for r in results]))}


@torch.no_grad()
def _figures(out: Path, data: Path, backbone, runs: dict, res: tuple[int, int]) -> dict[str, str]:
    """Figures: sample grid (with error maps) and losses of the first seed; calibration of every arm
    over all seeds."""
    first = next(iter(runs.values()))
    test = NormalsDataset(data, "test", size=res, captions=False)
    shown = {WARMUP: "warm-up", EXPLOIT: "self-improved"}
    predictors = {
        arm: NormalPredictor(backbone, NormalHead.from_pretrained(first["heads"][arm]), resolution=res)
        for arm in shown
    }
    rows = []
    for i in range(min(4, len(test))):
        item = test[i]
        mask = item["mask"][0].numpy()
        row = [
            image_to_rgb(item["image"].permute(1, 2, 0).numpy()),
            normal_to_rgb(item["normal"].permute(1, 2, 0).numpy(), mask),
        ]
        for arm in shown:
            p = predictors[arm](item["image"][None], ids=[i])
            err = angular_error_deg(p.normal[0], item["normal"]).numpy()
            row += [
                normal_to_rgb(p.normal[0].permute(1, 2, 0).numpy()),
                np.asarray(add_colorbar(error_to_rgb(err, mask, COLOR_MAX_DEG), COLOR_MAX_DEG)),
                np.asarray(
                    add_colorbar(uncertainty_to_rgb(p.kappa[0, 0].numpy(), COLOR_MAX_DEG), COLOR_MAX_DEG)
                ),
            ]
        rows.append(row)
    labels = ["image", "ground truth"]
    for name in shown.values():
        labels += [name, f"{name} error", f"{name} uncert."]
    save_png(with_normal_key(grid(rows, labels, cell=128)), out / "fig_samples.png")

    losses = {"warm-up": first["warm"]["losses"], "self-improve": first["si"]["losses"]}
    losses["control"] = first["control"]["losses"]
    start = len(losses["warm-up"])  # both later stages continue from the warm-up head
    plot = line_plot(
        losses,
        "training loss per step (smoothed over 5 steps)",
        smooth=5,
        offsets={"self-improve": start, "control": start},
        xlabel="optimizer step",
        ylabel="loss",
    )
    save_png(plot, out / "fig_losses.png")

    short = {CONTROL: "control"}  # the legend has little room; the caption names the control
    calib = {
        short.get(arm, arm): pool_calibration([r["calibration"][arm] for r in runs.values()]) for arm in ARMS
    }
    save_png(reliability_plot(calib, size=(480, 420)), out / "fig_calibration.png")
    files = {"samples": "fig_samples.png", "losses": "fig_losses.png", "calibration": "fig_calibration.png"}
    preview = sorted((first["heads"][WARMUP].parent.parent / "synthetic").glob("preview_*.png"))
    if preview:
        files["synthetic"] = preview[0].relative_to(out).as_posix()
    return files


def _pm(st: dict, digits: int = 2) -> str:
    """Mean ± std as text (the mean alone with one seed)."""
    if st["std"] is None:
        return f"{st['mean']:.{digits}f}"
    return f"{st['mean']:.{digits}f} ± {st['std']:.{digits}f}"


def _verdict(d: dict, seeds: int) -> str:
    what = "mean angular error of the self-improved exploitation head minus the control's, paired by seed"
    if d["ci95"] is None:
        word = "beat" if d["mean"] < 0 else "did not beat"
        return (
            f"On its one seed, self-improvement {word} training longer on these scenes: difference "
            f"{d['mean']:+.2f} deg ({what}); one seed gives no interval, run with more seeds."
        )
    lo, hi = d["ci95"]
    word = "beat" if hi < 0 else "did not beat"
    text = (
        f"Self-improvement {word} training longer on these scenes: difference {d['mean']:+.2f} deg, "
        f"95 % interval [{lo:+.2f}, {hi:+.2f}] ({what}, {seeds} seeds; negative = self-improvement better)."
    )
    if lo > 0:
        text += " The control, trained for the same extra steps on the original data only, is better."
    elif hi >= 0:
        text += " The interval includes 0: these runs show no difference either way."
    if seeds == 2:
        text += (
            f" With 2 seeds the interval is wide (t = {d['t']:.1f} with 1 degree of freedom): "
            "it says how little two runs settle, not how large the effect is."
        )
    return text


def _report(cfg: DemoConfig, runs: dict, summary: dict, times: StageTimes, figures: dict) -> str:
    seeds = list(runs)
    first = runs[seeds[0]]
    arms, diff = summary["arms"], summary["difference"]
    lines = ["# diff2in1 demo report", ""]
    if cfg.smoke:
        lines += [
            "**Smoke run (`--quick`)**: it checks that every stage runs, on sizes far too small to "
            "compare the arms, so it gives no verdict. Run `make demo` for the comparison.",
            "",
        ]
    lines += [
        f"Backbone `{cfg.backbone}`, {cfg.train} train / {cfg.test} test procedural scenes at "
        f"{cfg.size}x{cfg.size} (scene seed {cfg.seed}), head `{cfg.head}`, {len(seeds)} training "
        f"seed(s) ({', '.join(map(str, seeds))}) on the same scenes. Per seed: warm-up {cfg.warmup_epochs} "
        f"epochs ({first['warm']['steps']} steps of batch {cfg.batch_size}); synthetic data: 1 sample per "
        f"training image, noise to t={cfg.t_start}, {cfg.steps} DDIM steps; self-improving stage "
        f"{cfg.self_improve_epochs} epoch(s) ({first['si']['steps']} steps), EMA {cfg.ema_decay} every "
        f"{cfg.ema_every} steps; control: the warm-up head trained the same {first['control']['steps']} "
        "extra steps on the original data only.",
        "",
        "Why these settings: they are the research defaults. The multi-seed study of the project "
        "(docs/self_improvement_study.md: labelled-set sizes 20-160, 1 or 4 samples per image, "
        "re-creating the set) found no setting where self-improvement does better than the control, so the "
        "demo has no better regime to show.",
        "",
    ]
    if not cfg.smoke:
        lines += ["## Verdict", "", _verdict(diff, len(seeds)), ""]
    lines += [
        "## Arms over the seeds",
        "",
        f"Angular error on the {cfg.test} test scenes in degrees, pooled over their valid pixels "
        f"(docs/method.md section 9): mean ± sample standard deviation over the {len(seeds)} seed(s). "
        "Calibration gap: pixel-weighted mean |predicted expected error - observed mean error| over "
        "the uncertainty bins (degrees; 0 = the uncertainty is exactly right on average).",
        "",
        "| arm | mean error | median error | <11.25 (%) | calib. gap |",
        "|---|---|---|---|---|",
    ]
    for arm, st in arms.items():
        lines.append(
            f"| {arm} | {_pm(st['mean'])} | {_pm(st['median'])} | {_pm(st['a11'], 1)} "
            f"| {_pm(st['calibration_gap'])} |"
        )
    lines += [
        "",
        "### Per seed: self-improved minus control",
        "",
        "| seed | warm-up mean | self-improved mean | control mean | difference |",
        "|---|---|---|---|---|",
    ]
    for s in seeds:
        m = runs[s]["metrics"]
        lines.append(
            f"| {s} | {m[WARMUP]['mean']:.2f} | {m[EXPLOIT]['mean']:.2f} | {m[CONTROL]['mean']:.2f} "
            f"| {diff['per_seed'][str(s)]:+.2f} |"
        )
    ci = (
        "no interval with one seed"
        if diff["ci95"] is None
        else "95 % interval [{:+.2f}, {:+.2f}]".format(*diff["ci95"])
    )
    lines += [
        f"| mean | {arms[WARMUP]['mean']['mean']:.2f} | {arms[EXPLOIT]['mean']['mean']:.2f} "
        f"| {arms[CONTROL]['mean']['mean']:.2f} | {diff['mean']:+.2f} ({ci}) |",
        "",
        "The interval is the t-interval of the mean difference over the seeds (Student's t with "
        "seeds - 1 degrees of freedom).",
        "",
        "### All metrics (mean over the seeds)",
        "",
        format_table({arm: {k: v["mean"] for k, v in st.items()} for arm, st in arms.items()}),
        "",
        "## Figures",
        "",
        f"![samples]({figures['samples']})",
        "",
        f"Test scenes (seed {seeds[0]}): image, ground truth, then for the warm-up and the self-improved "
        "head: the prediction, its angular error against the ground truth and its uncertainty "
        f"(expected angular error), both coloured 0-{COLOR_MAX_DEG:g} deg with their colour bars. Right: "
        "the colour key of the normal maps.",
        "",
        f"![calibration]({figures['calibration']})",
        "",
        "Calibration of every arm of the table: observed mean angular error against the predicted "
        f"expected error, per bin of predicted error, the test pixels of all {len(seeds)} seed(s) "
        "pooled per bin; the gap in the legend is the mean over the seeds, as in the table. On the "
        "diagonal the uncertainty is right.",
        "",
    ]
    if "synthetic" in figures:
        lines += [
            f"![synthetic]({figures['synthetic']})",
            "",
            "Synthetic pairs: source, new RGB, its normal map and uncertainty (0-45 deg) from the "
            "creation head.",
            "",
        ]
    lines += [
        f"![losses]({figures['losses']})",
        "",
        f"Training loss per optimizer step (seed {seeds[0]}): warm-up, then the self-improving stage "
        "and the control, both continuing from the warm-up head. The two later curves train on "
        "different data (the self-improving stage on original + synthetic pairs, the control on the "
        "original images only), so their levels do not rank the arms: the test metrics above do.",
        "",
        "## Time per stage (seconds)",
        "",
        "Kept in `stage_times.json`: a re-run that finds a stage done keeps its time, a stage resumed "
        "after an interruption adds its runs.",
        "",
    ]
    stages = list(SEED_STAGES)
    lines += [
        "| stage | " + " | ".join(f"seed {s}" for s in seeds) + " | all |",
        "|---" * (len(seeds) + 2) + "|",
    ]

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    def total(vs: list[float | None]) -> float | None:
        known = [v for v in vs if v is not None]
        return sum(known) if known else None

    scenes = times.seconds("make scenes")
    lines.append("| make scenes | " + " | ".join("" for _ in seeds) + f" | {cell(scenes)} |")
    for st in stages:
        vs = [times.seconds(f"seed {s}: {st}") for s in seeds]
        lines.append(f"| {st} | " + " | ".join(cell(v) for v in vs) + f" | {cell(total(vs))} |")
    per_seed = [total([times.seconds(f"seed {s}: {st}") for st in stages]) for s in seeds]
    everything = total([scenes, *per_seed])
    lines += ["| total | " + " | ".join(cell(v) for v in per_seed) + f" | {cell(everything)} |", ""]
    return "\n".join(lines)
