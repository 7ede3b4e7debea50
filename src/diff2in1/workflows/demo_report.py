"""The demo's numbers and its `report.md`: per task, the arms over the seeds (mean and spread) and
the self-improved minus control difference paired by seed with its 95 % interval."""

from __future__ import annotations

from dataclasses import dataclass

from ..intervals import mean_interval
from ..stages.evaluate import format_table, format_task_table
from .demo import CONTROL, EXPLOIT, SEED_STAGES, WARMUP, StageTimes
from .demo_figures import COLOR_MAX_DEG
from .demo_settings import DemoConfig


@dataclass(frozen=True)
class Primary:
    """The metric a task's arms are compared by (the paired difference and the verdict)."""

    key: str
    name: str
    unit: str
    digits: int
    lower_is_better: bool


PRIMARY = {
    "normals": Primary("mean", "mean angular error", " deg", 2, True),
    "depth": Primary("abs_rel", "AbsRel", "", 4, True),
    "segmentation": Primary("miou", "mIoU", "", 4, False),
}
# The columns of each task's table over the seeds: (metric, header, digits).
COLUMNS = {
    "normals": (
        ("mean", "mean error", 2),
        ("median", "median error", 2),
        ("a11", "<11.25 (%)", 1),
        ("calibration_gap", "calib. gap", 2),
    ),
    "depth": (("abs_rel", "AbsRel", 4), ("rmse", "RMSE (m)", 3), ("delta1", "delta1 (<1.25)", 3)),
    "segmentation": (("miou", "mIoU", 3), ("pixel_acc", "pixel accuracy", 3)),
}
ABOUT = {
    "normals": "Angular error on the {test} test scenes in degrees, pooled over their valid pixels "
    "(docs/method.md section 9). Calibration gap: pixel-weighted mean |predicted expected error - "
    "observed mean error| over the uncertainty bins (degrees; 0 = the uncertainty is exactly right "
    "on average).",
    "depth": "Depth on the {test} test scenes, per image over its valid pixels and averaged over the "
    "images: AbsRel = mean |d - d*| / d*, RMSE in metres, delta1 = share of pixels with "
    "max(d / d*, d* / d) < 1.25 (docs/multitask.md).",
    "segmentation": "Classes on the {test} test scenes from one confusion matrix over all their "
    "pixels: mIoU = mean over the classes present of intersection / union, pixel accuracy = share "
    "of pixels labelled right (fractions; higher is better).",
}
PSEUDO_ABOUT = {
    "research": "every synthetic pixel's label counts alike (the paper's behaviour)",
    "weighted": "each synthetic pixel's loss weighted by the creation head's confidence",
    "filtered": "only synthetic pixels at or above the confidence quantile of their image",
}


def summarize(per_seed: dict[int, dict[str, dict[str, float]]], task: str = "normals") -> dict:
    """Per-seed metrics of one task {seed: {arm: metrics}} -> per-seed values, per-arm
    mean/std/min/max of every metric, and the paired difference exploitation minus control of the
    task's primary metric (`PRIMARY`) with its 95 % t-interval over the seeds."""
    p = PRIMARY[task]
    seeds = list(per_seed)
    arms = list(per_seed[seeds[0]])
    keys = [k for k in per_seed[seeds[0]][arms[0]] if k != "pixels"]
    arm_stats = {
        arm: {k: mean_interval([float(per_seed[s][arm][k]) for s in seeds]) for k in keys} for arm in arms
    }
    diffs = {s: float(per_seed[s][EXPLOIT][p.key] - per_seed[s][CONTROL][p.key]) for s in seeds}
    return {
        "seeds": seeds,
        "per_seed": {str(s): per_seed[s] for s in seeds},
        "arms": arm_stats,
        "difference": {
            "what": f"{p.name}{p.unit and f' ({p.unit.strip()})'} of '{EXPLOIT}' minus '{CONTROL}', "
            "paired by seed",
            "per_seed": {str(s): d for s, d in diffs.items()},
            **mean_interval(list(diffs.values())),
        },
    }


def summarize_all(cfg: DemoConfig, per_seed: dict[int, dict[str, dict[str, dict]]]) -> dict:
    """{seed: {arm: {task: metrics}}} -> what metrics.json holds: the settings compared and one
    `summarize` per task."""
    out: dict = {"seeds": list(per_seed), "tasks": list(cfg.task_list), "pseudo_labels": cfg.pseudo_labels}
    for task in cfg.task_list:
        one = {s: {arm: m[task] for arm, m in by_arm.items()} for s, by_arm in per_seed.items()}
        out[task] = summarize(one, task)
    return out


def _pm(st: dict, digits: int = 2) -> str:
    """Mean ± std as text (the mean alone with one seed)."""
    if st["std"] is None:
        return f"{st['mean']:.{digits}f}"
    return f"{st['mean']:.{digits}f} ± {st['std']:.{digits}f}"


def _verdict(d: dict, seeds: int, task: str = "normals") -> str:
    """Whether self-improvement beat the control on `task`, with the paired difference's interval."""
    p = PRIMARY[task]
    sign = "negative" if p.lower_is_better else "positive"
    what = f"{p.name} of the self-improved exploitation head minus the control's, paired by seed"
    f = f"+.{p.digits}f"
    if d["ci95"] is None:
        better = d["mean"] < 0 if p.lower_is_better else d["mean"] > 0
        return (
            f"On its one seed, self-improvement {'beat' if better else 'did not beat'} training longer "
            f"on these scenes: difference {d['mean']:{f}}{p.unit} ({what}); one seed gives no "
            "interval, run with more seeds."
        )
    lo, hi = d["ci95"]
    better = hi < 0 if p.lower_is_better else lo > 0
    worse = lo > 0 if p.lower_is_better else hi < 0
    text = (
        f"Self-improvement {'beat' if better else 'did not beat'} training longer on these scenes: "
        f"difference {d['mean']:{f}}{p.unit}, 95 % interval [{lo:{f}}, {hi:{f}}] ({what}, {seeds} "
        f"seeds; {sign} = self-improvement better)."
    )
    if worse:
        text += " The control, trained for the same extra steps on the original data only, is better."
    elif not better:
        text += " The interval includes 0: these runs show no difference either way."
    if seeds == 2:
        text += (
            f" With 2 seeds the interval is wide (t = {d['t']:.1f} with 1 degree of freedom): "
            "it says how little two runs settle, not how large the effect is."
        )
    return text


def _task_section(task: str, s: dict, cfg: DemoConfig, seeds: list[int]) -> list[str]:
    """One task's tables: the arms over the seeds, the per-seed paired difference, all metrics."""
    p, arms, diff = PRIMARY[task], s["arms"], s["difference"]
    cols = COLUMNS[task]
    lines = [
        f"### {task}",
        "",
        ABOUT[task].format(test=cfg.test)
        + f" Mean ± sample standard deviation over the {len(seeds)} seed(s).",
        "",
        "| arm | " + " | ".join(c[1] for c in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for arm, st in arms.items():
        lines.append(f"| {arm} | " + " | ".join(_pm(st[k], dg) for k, _, dg in cols) + " |")
    d = p.digits
    lines += [
        "",
        f"Per seed: self-improved minus control ({p.name}):",
        "",
        f"| seed | warm-up {p.name} | self-improved {p.name} | control {p.name} | difference |",
        "|---|---|---|---|---|",
    ]
    for seed in seeds:
        m = s["per_seed"][str(seed)]
        lines.append(
            f"| {seed} | {m[WARMUP][p.key]:.{d}f} | {m[EXPLOIT][p.key]:.{d}f} | {m[CONTROL][p.key]:.{d}f} "
            f"| {diff['per_seed'][str(seed)]:+.{d}f} |"
        )
    ci = (
        "no interval with one seed"
        if diff["ci95"] is None
        else "95 % interval [{:+.{d}f}, {:+.{d}f}]".format(*diff["ci95"], d=d)
    )
    means = " | ".join(f"{arms[a][p.key]['mean']:.{d}f}" for a in (WARMUP, EXPLOIT, CONTROL))
    lines += [f"| mean | {means} | {diff['mean']:+.{d}f} ({ci}) |", ""]
    rows = {arm: {k: v["mean"] for k, v in st.items()} for arm, st in arms.items()}
    lines += [
        "All metrics (mean over the seeds):",
        "",
        format_table(rows) if task == "normals" else format_task_table(task, rows),
        "",
    ]
    return lines


def report(cfg: DemoConfig, runs: dict, summary: dict, times: StageTimes, figures: dict) -> str:
    """The text of report.md."""
    seeds = list(runs)
    first = runs[seeds[0]]
    tasks = cfg.task_list
    lines = ["# diff2in1 demo report", ""]
    if cfg.smoke:
        lines += [
            "**Smoke run (`--quick`)**: it checks that every stage runs, on sizes far too small to "
            "compare the arms, so it gives no verdict. Run `make demo` for the comparison.",
            "",
        ]
    heads = "one head per task on the same backbone pass" if len(tasks) > 1 else "one head"
    heads_word = "heads" if len(tasks) > 1 else "head"
    labels = "its normals" + ("".join(f", {t}" for t in tasks if t != "normals"))
    cache = (
        "; every training stage computes each image's UNet taps once, in its first epoch (noise fixed "
        "per image), and trains the heads on them afterwards (`feature_cache` memory)"
        if cfg.feature_cache != "none"
        else ""
    )
    lines += [
        f"Tasks: {', '.join(tasks)} ({heads}). Backbone `{cfg.backbone}`, {cfg.train} train / "
        f"{cfg.test} test procedural scenes at {cfg.size}x{cfg.size} (scene seed {cfg.seed}), "
        f"`{cfg.head}` heads, {len(seeds)} training seed(s) ({', '.join(map(str, seeds))}) on the same "
        f"scenes. Per seed: warm-up {cfg.warmup_epochs} epochs ({first['warm']['steps']} steps of "
        f"batch {cfg.batch_size}); synthetic data: 1 sample per training image, noise to "
        f"t={cfg.t_start}, {cfg.steps} DDIM steps, {labels} from the warm-up {heads_word} on the same "
        f"last step; self-improving stage {cfg.self_improve_epochs} epoch(s) ({first['si']['steps']} steps), "
        f"EMA {cfg.ema_decay} every {cfg.ema_every} steps; control: the warm-up heads trained the "
        f"same {first['control']['steps']} extra steps on the original data only{cache}.",
        "",
        f"Synthetic labels (`--pseudo-labels`): **{cfg.pseudo_labels}**: "
        f"{PSEUDO_ABOUT[cfg.pseudo_labels]}.",
        "",
        "Why these settings: the research recipe's stage settings (t=600, 50 DDIM steps, EMA 0.998 "
        "every 10 steps, the control) at sizes that fit a 2-core CPU. The multi-seed study of the "
        "project (docs/self_improvement_study.md) found no setting where normals self-improvement "
        "does better than the control on these scenes, so the demo has no better regime to show.",
        "",
    ]
    if not cfg.smoke:
        lines += ["## Verdict", ""]
        for task in tasks:
            lines += [f"**{task}**: " + _verdict(summary[task]["difference"], len(seeds), task), ""]
    lines += [
        "## Arms over the seeds",
        "",
        "The interval of a difference is the t-interval of its mean over the seeds (Student's t with "
        "seeds - 1 degrees of freedom).",
        "",
    ]
    for task in tasks:
        lines += _task_section(task, summary[task], cfg, seeds)
    lines += ["## Figures", "", *_figure_lines(figures, seeds, len(tasks) > 1)]
    lines += _time_lines(times, seeds)
    return "\n".join(lines)


def _figure_lines(figures: dict, seeds: list[int], multi: bool) -> list[str]:
    lines = [
        f"![samples]({figures['samples']})",
        "",
        f"Test scenes (seed {seeds[0]}): image, ground truth, then for the warm-up and the self-improved "
        "head: the prediction, its angular error against the ground truth and its uncertainty "
        f"(expected angular error), both coloured 0-{COLOR_MAX_DEG:g} deg with their colour bars. Right: "
        "the colour key of the normal maps.",
        "",
    ]
    if "depth" in figures:
        lines += [
            f"![depth]({figures['depth']})",
            "",
            f"Depth of the same test scenes (seed {seeds[0]}): image, ground truth, the warm-up and the "
            "self-improved depth head's prediction, on one colour scale in metres (black: no depth, "
            "through the window).",
            "",
        ]
    if "segmentation" in figures:
        lines += [
            f"![segmentation]({figures['segmentation']})",
            "",
            f"Classes of the same test scenes (seed {seeds[0]}): image, ground truth, the warm-up and "
            "the self-improved segmentation head's class map; each legend names the classes in its "
            "map (black: no class, through the window).",
            "",
        ]
    lines += [
        f"![calibration]({figures['calibration']})",
        "",
        "Calibration of every normals arm: observed mean angular error against the predicted "
        f"expected error, per bin of predicted error, the test pixels of all {len(seeds)} seed(s) "
        "pooled per bin; the gap in the legend is the mean over the seeds, as in the table. On the "
        "diagonal the uncertainty is right.",
        "",
    ]
    if "synthetic_tasks" in figures:
        lines += [
            f"![synthetic]({figures['synthetic_tasks']})",
            "",
            f"Created samples (seed {seeds[0]}): the source scene, the new RGB image and every label the "
            "creation heads gave it from the same last denoising step (one UNet run per sample).",
            "",
        ]
    elif "synthetic" in figures:
        lines += [
            f"![synthetic]({figures['synthetic']})",
            "",
            "Synthetic pairs: source, new RGB, its normal map and uncertainty (0-45 deg) from the "
            "creation head.",
            "",
        ]
    what = "losses (the sum over the tasks)" if multi else "loss"
    lines += [
        f"![losses]({figures['losses']})",
        "",
        f"Training {what} per optimizer step (seed {seeds[0]}): warm-up, then the self-improving stage "
        "and the control, both continuing from the warm-up heads. The two later curves train on "
        "different data (the self-improving stage on original + synthetic pairs, the control on the "
        "original images only), so their levels do not rank the arms: the test metrics above do.",
        "",
    ]
    return lines


def _time_lines(times: StageTimes, seeds: list[int]) -> list[str]:
    lines = [
        "## Time per stage (seconds)",
        "",
        "Kept in `stage_times.json`: a re-run that finds a stage done keeps its time, a stage resumed "
        "after an interruption adds its runs.",
        "",
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
    for st in SEED_STAGES:
        vs = [times.seconds(f"seed {s}: {st}") for s in seeds]
        lines.append(f"| {st} | " + " | ".join(cell(v) for v in vs) + f" | {cell(total(vs))} |")
    per_seed = [total([times.seconds(f"seed {s}: {st}") for st in SEED_STAGES]) for s in seeds]
    everything = total([scenes, *per_seed])
    lines += ["| total | " + " | ".join(cell(v) for v in per_seed) + f" | {cell(everything)} |", ""]
    return lines
