"""Per-task self-improvement study: does the multi-task "2-in-1" stage help normals, depth and
segmentation, with research, confidence-weighted or filtered pseudo-labels, on small labelled sets?

    .venv/bin/python scripts/task_study.py --out runs/task_study            # run (resumable)
    .venv/bin/python scripts/task_study.py --out runs/task_study --report docs/task_study

Procedural scenes at 128x128 (a pool of training scenes and held-out test scenes, `make_scenes`
seed 0) and the shipped `tiny-scenes` backbone; every run trains the three heads (normals, depth,
segmentation) together, one backbone pass per step. For every labelled-set size n (the first n
training scenes) and every seed, a cell trains:

- warmup: small heads from scratch for `warmup_steps` steps on the n scenes;
- control: the warm-up heads for `extra_steps` more steps on the same n scenes (real data only);
- research / weighted / filtered: the multi-task self-improving stage from the warm-up heads for
  the same extra steps, on the n scenes + `samples_per_image` synthetic samples per scene made by
  the warm-up heads (multi-modal creation: t = 600, 50 DDIM steps; EMA 0.998 every 10 steps), with
  the pseudo-labels `--pseudo-labels research|weighted|filtered` (quantile 0.5 for filtered).

The extra steps are long on purpose: with 8 scenes the control overfits (its test error turns up
while its training loss keeps falling), the regime in which extra pairs can help. Heads are kept
every `eval_every` steps (the training loop's epoch checkpoints, so the epoch lengths are chosen to
divide it) and every kept head is evaluated on the test scenes: the curves. Every arm is also
judged at its last step (the tables) and at the control's best step (early stopping, which needs
held-out labels the method does not have: shown for scale, not as an arm).

Resumable: every stage resumes (each run folder's own resume), finished evaluations are kept in
`eval/<arm>/<step>.json`, a cell's `results.json` is written when it is complete. The settings are
recorded in `<out>/settings.json` (the project's settings guard): a re-run with other settings is
refused. `--report PREFIX` writes PREFIX.results.md (tables: mean over seeds with the 95 %
t-interval, and each arm minus the control paired by seed), PREFIX.json and PREFIX_curves.png.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

TASKS = ("normals", "depth", "segmentation")
ARMS = ("warmup", "control", "research", "weighted", "filtered")
SI_ARMS = ("research", "weighted", "filtered")
SETTINGS = dict(
    backbone="tiny-scenes",
    size=128,
    pool=32,  # training scenes made; a labelled set of size n is the first n
    test=24,
    scene_seed=0,
    sizes=(8, 32),
    seeds=(0, 1, 2),
    head="small",
    batch_size=8,
    lr=1e-3,
    warmup_steps=40,
    extra_steps=200,
    eval_every=40,
    samples_per_image={"8": 4, "32": 1},  # synthetic samples per labelled scene, per size
    t_start=600,
    ddim_steps=50,
    ema_decay=0.998,
    ema_every=10,
    quantile=0.5,
    feature_cache="disk",  # each image's taps once per run (fixed noise per image)
)
# (metric key, label, higher is better) per task: the first is the table's headline.
METRICS = {
    "normals": (("mean", "mean angular error (deg)", False), ("a11", "< 11.25 deg (%)", True)),
    "depth": (("abs_rel", "AbsRel", False), ("rmse", "RMSE (m)", False), ("delta1", "delta < 1.25", True)),
    "segmentation": (("miou", "mIoU", True), ("pixel_acc", "pixel accuracy", True)),
}
GROWABLE = ("extra_steps", "eval_every")  # settings a re-run may change (see main)


def t_interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95 % t-interval over the values); nan half-width for one value."""
    from diff2in1.intervals import t_quantile_975

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        dst.symlink_to(src.resolve())


def labelled_view(pool: Path, view: Path, n: int) -> Path:
    """A data folder with the first n training scenes of `pool` and all its test scenes (links)."""
    from diff2in1.data.labels import CLASSES_FILE
    from diff2in1.data.layout import list_ids

    if (view / "done").exists():
        return view
    ids = list_ids(pool, "train")[:n]
    for sub in sorted(p.name for p in (pool / "train").iterdir() if p.is_dir()):
        (view / "train" / sub).mkdir(parents=True, exist_ok=True)
        for i in ids:
            for f in (pool / "train" / sub).glob(f"{i}.*"):
                _link(f, view / "train" / sub / f.name)
    _link(pool / "test", view / "test")
    _link(pool / CLASSES_FILE, view / CLASSES_FILE)
    (view / "done").write_text("")
    return view


def spi_of(s: dict, n: int) -> int:
    """Synthetic samples per labelled scene at set size n (1 where the settings name none)."""
    return int(s["samples_per_image"].get(str(n), 1))


def steps_per_epoch(n_images: int, batch: int) -> int:
    return n_images // batch  # drop_last


def head_folders(run: Path, arm: str, where: Path | None = None) -> list[str]:
    """The three heads of a run (or of one of its checkpoints, `where`)."""
    from diff2in1.stages.self_improve import pair_names
    from diff2in1.stages.warmup import HEAD_FOLDERS

    base = where or run
    if arm in SI_ARMS:
        return [str(base / pair_names(t)[1]) for t in TASKS]
    return [str(base / HEAD_FOLDERS[t]) for t in TASKS]


def checkpoints(run: Path, arm: str, epoch_steps: int, start: int) -> dict[int, list[str]]:
    """{global step: head folders} of every kept checkpoint and the final heads of a run."""
    found = {}
    for d in sorted((run / "checkpoints").glob("epoch_*")):
        found[start + int(d.name.split("_")[1]) * epoch_steps] = head_folders(run, arm, d)
    return found


def trained_steps(run: Path) -> int:
    """The last optimizer step a run logged (0 before its first)."""
    lines = (run / "log.csv").read_text().splitlines() if (run / "log.csv").exists() else []
    return int(lines[-1].split(",", 1)[0]) if len(lines) > 1 else 0


def train_arm(arm: str, cell: Path, view: Path, seed: int, s: dict, backbone, n: int) -> Path:
    """Train one arm of a cell (resuming an interrupted run); returns its run folder."""
    from diff2in1.config import SelfImproveConfig, WarmupConfig
    from diff2in1.stages.self_improve import train_self_improve
    from diff2in1.stages.warmup import HEAD_FOLDERS, train_warmup

    run = cell / arm
    final = head_folders(run, arm)
    target = s["warmup_steps"] if arm == "warmup" else s["extra_steps"]
    if all(Path(h, "config.json").exists() for h in final) and trained_steps(run) >= target:
        return run
    common = dict(
        data=str(view), backbone=s["backbone"], out=str(run), resolution=(s["size"], s["size"]),
        batch_size=s["batch_size"], lr=s["lr"], seed=seed, tasks=",".join(TASKS), epochs=10**6,
        feature_cache=s["feature_cache"], num_workers=0, progress=False,
    )  # fmt: skip
    resume = (run / "state").exists()
    if arm == "warmup":
        every = s["eval_every"] // steps_per_epoch(n, s["batch_size"])
        cfg = WarmupConfig(**common, head=s["head"], max_steps=s["warmup_steps"], checkpoint_every=every)
        train_warmup(cfg, resume=resume, backbone=backbone)
        return run
    warm = cell / "warmup"
    if arm == "control":
        every = s["eval_every"] // steps_per_epoch(n, s["batch_size"])
        cfg = WarmupConfig(
            **common, head=str(warm / HEAD_FOLDERS["normals"]), depth_head=str(warm / HEAD_FOLDERS["depth"]),
            segmentation_head=str(warm / HEAD_FOLDERS["segmentation"]), max_steps=s["extra_steps"],
            checkpoint_every=every,
        )  # fmt: skip
        train_warmup(cfg, resume=resume, backbone=backbone)
        return run
    spi = spi_of(s, n)
    every = s["eval_every"] // steps_per_epoch(n * (1 + spi), s["batch_size"])
    cfg = SelfImproveConfig(
        **common, synthetic=[str(cell / "synthetic")], init=str(warm / HEAD_FOLDERS["normals"]),
        depth_init=str(warm / HEAD_FOLDERS["depth"]),
        segmentation_init=str(warm / HEAD_FOLDERS["segmentation"]), ema_decay=s["ema_decay"],
        ema_every=s["ema_every"], pseudo_labels=arm, pseudo_label_quantile=s["quantile"],
        max_steps=s["extra_steps"], checkpoint_every=every,
    )  # fmt: skip
    train_self_improve(cfg, resume=resume, backbone=backbone)
    return run


def create(cell: Path, view: Path, seed: int, s: dict, backbone, n: int) -> None:
    from diff2in1.config import CreateConfig
    from diff2in1.inference.head_set import load_head_set
    from diff2in1.stages.create import create_data
    from diff2in1.stages.warmup import HEAD_FOLDERS

    warm = cell / "warmup"
    cfg = CreateConfig(
        data=str(view), backbone=s["backbone"], head=str(warm / HEAD_FOLDERS["normals"]),
        depth_head=str(warm / HEAD_FOLDERS["depth"]),
        segmentation_head=str(warm / HEAD_FOLDERS["segmentation"]), out=str(cell / "synthetic"),
        resolution=(s["size"], s["size"]),
        samples_per_image=spi_of(s, n), t_start=s["t_start"], steps=s["ddim_steps"],
        seed=seed, batch_size=8, preview=4, progress=False,
    )  # fmt: skip
    heads = {task: h for task, (_, h) in load_head_set(head_folders(warm, "warmup")).items()}
    create_data(cfg, backbone, heads)


def evaluate_heads(heads: list[str], view: Path, backbone, out: Path) -> dict:
    """Every task's test metrics of a head set, kept in `out` (a JSON file) once computed."""
    from diff2in1.atomic import save_text
    from diff2in1.inference.predictor import TaskPredictor
    from diff2in1.stages.evaluate import evaluate

    if out.is_file():
        return json.loads(out.read_text())
    ev = evaluate(TaskPredictor(backbone, heads), view, "test", batch_size=8, progress=False)
    metrics = {"normals": {k: v for k, v in ev.metrics.items() if not isinstance(v, list)}}
    for task, m in ev.task_metrics.items():
        metrics[task] = {k: v for k, v in m.items() if not isinstance(v, list)}
    save_text(out, json.dumps(metrics, indent=1))
    return metrics


def train_losses(run: Path, start: int) -> dict[str, list]:
    """Per-step training losses of a run's log.csv, steps counted from the cell's start."""
    import csv

    rows = list(csv.DictReader((run / "log.csv").open()))
    keys = [k for k in rows[0] if k.startswith("loss")] if rows else []
    return {"step": [start + int(r["step"]) for r in rows], **{k: [float(r[k]) for r in rows] for k in keys}}


def cell_extra_steps(result: dict, s: dict) -> int:
    """The extra steps a finished cell's arms trained (read from its control curve if not recorded)."""
    return result.get("extra_steps") or max(map(int, result["curves"]["control"])) - s["warmup_steps"]


def run_cell(n: int, seed: int, s: dict, out: Path, pool: Path, backbone) -> dict:
    """Train, create and evaluate every arm of the cell (n, seed); returns its results."""
    from diff2in1.atomic import save_text

    cell = out / "cells" / f"n{n}_s{seed}"
    done = cell / "results.json"
    old = json.loads(done.read_text()) if done.is_file() else None
    if old is not None and cell_extra_steps(old, s) >= s["extra_steps"]:
        return old
    view = labelled_view(pool, out / "views" / f"n{n}", n)
    t0 = time.perf_counter()
    seconds = {}
    for arm in ARMS:
        if arm in SI_ARMS and not (cell / "synthetic" / "done").exists():
            t = time.perf_counter()
            create(cell, view, seed, s, backbone, n)
            (cell / "synthetic" / "done").write_text("")
            seconds["create"] = time.perf_counter() - t
        t = time.perf_counter()
        train_arm(arm, cell, view, seed, s, backbone, n)
        seconds[arm] = time.perf_counter() - t
        print(f"  n={n} seed {seed}: {arm} trained ({seconds[arm]:.0f} s)", flush=True)
    spi = spi_of(s, n)
    result = {"n": n, "seed": seed, "extra_steps": s["extra_steps"], "curves": {}, "final": {}, "losses": {},
              "seconds": seconds}  # fmt: skip
    for arm in ARMS:
        run = cell / arm
        start = 0 if arm == "warmup" else s["warmup_steps"]
        n_images = n * (1 + spi) if arm in SI_ARMS else n
        points = checkpoints(run, arm, steps_per_epoch(n_images, s["batch_size"]), start)
        points[start + (s["warmup_steps"] if arm == "warmup" else s["extra_steps"])] = head_folders(run, arm)
        curve = {}
        for step, heads in sorted(points.items()):
            curve[step] = evaluate_heads(heads, view, backbone, cell / "eval" / arm / f"{step:05d}.json")
        result["curves"][arm] = curve
        result["final"][arm] = curve[max(curve)]
        result["losses"][arm] = train_losses(run, start)
    result["seconds"]["total"] = time.perf_counter() - t0
    if old is not None:  # a cell continued to more extra steps: its time is both runs'
        for k, v in old["seconds"].items():
            result["seconds"][k] = result["seconds"].get(k, 0.0) + v
    save_text(done, json.dumps(result, indent=1))
    return result


# ---------------------------------------------------------------------------------------- report


def _cell(values: list[float], digits: int = 3) -> str:
    mean, half = t_interval(values)
    return f"{mean:.{digits}g} +- {half:.2g}" if math.isfinite(half) else f"{mean:.{digits}g}"


def _best_step(r: dict, task: str) -> int:
    key, _, higher = METRICS[task][0]
    curve = {int(k): v[task][key] for k, v in r["curves"]["control"].items()}
    return (max if higher else min)(curve, key=curve.get)


def curve_table(rows: list[dict]) -> list[str]:
    """Each task's headline test metric per arm at every evaluated step (mean over the cells)."""
    steps = sorted({int(k) for r in rows for arm in ARMS for k in r["curves"][arm]})
    head = "| step | " + " | ".join(f"{task}: {arm}" for task in TASKS for arm in ARMS[1:]) + " |"
    lines = ["Along the training (warm-up until its last step, then the arms; mean over seeds; "
             f"{', '.join(METRICS[t][0][1] for t in TASKS)}):", "", head, "|---" * (1 + 4 * len(TASKS)) + "|"]
    for step in steps:
        cells = []
        for task in TASKS:
            key = METRICS[task][0][0]
            for arm in ARMS[1:]:
                src = "warmup" if all(str(step) in r["curves"]["warmup"] for r in rows) else arm
                have = [r["curves"][src][str(step)][task][key] for r in rows if str(step) in r["curves"][src]]
                cells.append(f"{statistics.fmean(have):.3g}" if len(have) == len(rows) else "")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def report(results: list[dict], s: dict, prefix: Path) -> str:
    """Markdown tables (per size and task: arms at their last step, and each arm minus the control
    paired by seed), the curves figure and the raw numbers (PREFIX.json)."""
    from diff2in1.atomic import save_text

    lines = [
        f"Procedural scenes at {s['size']}x{s['size']} ({s['test']} test scenes), backbone "
        f"`{s['backbone']}`, three `{s['head']}` heads trained together, batch {s['batch_size']}, lr "
        f"{s['lr']:g}; warm-up {s['warmup_steps']} steps, then the extra steps given per size; "
        f"synthetic samples per labelled scene {s['samples_per_image']} (t = {s['t_start']}, "
        f"{s['ddim_steps']} DDIM steps), EMA {s['ema_decay']} every {s['ema_every']} steps, filtered "
        f"quantile {s['quantile']}. Mean over seeds +- the half-width of the 95 % t-interval; "
        "differences are paired by seed (arm minus control; for an error, negative = better).",
        "",
    ]
    for n in s["sizes"]:
        rows = [r for r in results if r["n"] == n]
        if not rows:
            continue
        seeds = sorted(r["seed"] for r in rows)
        extra = sorted({cell_extra_steps(r, s) for r in rows})
        lines += [
            f"### n = {n} labelled scenes, {'/'.join(map(str, extra))} extra steps "
            f"(seeds {', '.join(map(str, seeds))})",
            "",
        ]
        for task, cols in METRICS.items():
            key, label, higher = cols[0]
            lines += [f"**{task}**", ""]
            head = "| arm | " + " | ".join(c[1] for c in cols) + f" | {label}: arm - control |"
            lines += [head, "|---" * (len(cols) + 2) + "|"]
            for arm in ARMS:
                vals = [_cell([r["final"][arm][task][k] for r in rows]) for k, _, _ in cols]
                diff = "" if arm == "control" else _cell(
                    [r["final"][arm][task][key] - r["final"]["control"][task][key] for r in rows]
                )
                lines.append(f"| {arm} | " + " | ".join(vals) + f" | {diff} |")
            best = [r["curves"]["control"][str(_best_step(r, task))][task][key] for r in rows]
            steps = [_best_step(r, task) for r in rows]
            lines.append(
                f"| control at its best step ({', '.join(map(str, steps))}; needs test labels) | "
                + _cell(best) + " |" + " |" * (len(cols) - 1) + " |"
            )
            lines.append("")
        lines += curve_table(rows)
    secs = [r["seconds"].get("total", 0) for r in results]
    lines.append(f"Time per cell: median {statistics.median(secs):.0f} s on the 2-core CPU.")
    text = "\n".join(lines) + "\n"
    save_text(prefix.with_name(prefix.name + ".results.md"), text)
    kept = [{k: v for k, v in r.items() if k != "losses"} for r in results]  # per-step losses: in the cells
    save_text(prefix.with_name(prefix.name + ".json"), json.dumps({"settings": s, "results": kept}))
    _curves_figure(results, s, prefix.with_name(prefix.name + "_curves.png"))
    return text


def mean_curve(rows: list[dict], arm: str, task: str, key: str) -> list[float]:
    """An arm's test metric at each of its evaluated steps, mean over the cells `rows`."""
    steps = sorted(set.intersection(*({int(k) for k in r["curves"][arm]} for r in rows)))  # in every cell
    return [statistics.fmean(r["curves"][arm][str(k)][task][key] for r in rows) for k in steps]


def _curves_figure(results: list[dict], s: dict, path: Path) -> None:
    """Per size: each task's test metric against the step (mean over seeds; every arm starts from
    the warm-up's last point) and the training loss of the warm-up + control and research runs."""
    import numpy as np

    from diff2in1.viz import grid, line_plot, save_png

    warm = s["warmup_steps"]
    rows_out = []
    for n in (n for n in s["sizes"] if any(r["n"] == n for r in results)):
        rows = [r for r in results if r["n"] == n]
        row = []
        for task in TASKS:
            key, label, _ = METRICS[task][0]

            start = mean_curve(rows, "warmup", task, key)
            series = {"warmup": start, **{a: [start[-1], *mean_curve(rows, a, task, key)] for a in ARMS[1:]}}
            offsets = {arm: len(start) - 1 for arm in ARMS[1:]}
            steps = sorted(set.intersection(*({int(k) for k in r["curves"]["warmup"]} for r in rows)))
            steps += sorted(set.intersection(*({int(k) for k in r["curves"]["control"]} for r in rows)))
            title = f"n = {n}: {task}, test {label}"
            xlabel = "at steps " + " ".join(map(str, steps))  # the points are evenly spaced, the steps not
            row.append(np.asarray(line_plot(series, title, (560, 330), offsets=offsets, xlabel=xlabel,
                                            ylabel=label)))  # fmt: skip
        losses = {}
        for arm in ("warmup", "control", "research"):
            per_seed = [r["losses"][arm]["loss"] for r in rows]
            losses[arm] = [statistics.fmean(v) for v in zip(*per_seed, strict=False)]  # the shortest run
        row.append(np.asarray(line_plot(
            losses, f"n = {n}: training loss, all tasks (mean over seeds)", (560, 330), smooth=8,
            offsets={"control": warm, "research": warm}, xlabel="step", ylabel="loss",
        )))  # fmt: skip
        rows_out.append(row)
    save_png(grid(rows_out), path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="study folder (scenes, cells, settings.json)")
    ap.add_argument("--sizes", help="labelled-set sizes, comma-separated (default %(default)s)")
    ap.add_argument("--seeds", help="seeds, comma-separated")
    ap.add_argument("--extra-steps", type=int)
    ap.add_argument("--warmup-steps", type=int)
    ap.add_argument("--eval-every", type=int)
    for name in ("backbone", "size", "pool", "test", "batch_size", "ddim_steps"):  # small test runs
        ap.add_argument("--" + name.replace("_", "-"), type=type(SETTINGS[name]), help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    ap.add_argument("--report", metavar="PREFIX", help="write the tables and figure from finished cells")
    a = ap.parse_args()

    import torch

    from diff2in1.atomic import save_text
    from diff2in1.errors import InputError
    from diff2in1.run_settings import check_recorded

    if a.threads:
        torch.set_num_threads(a.threads)
    s = dict(SETTINGS)
    if a.sizes:
        s["sizes"] = tuple(int(x) for x in a.sizes.split(","))
    if a.seeds:
        s["seeds"] = tuple(int(x) for x in a.seeds.split(","))
    knobs = ("extra_steps", "warmup_steps", "eval_every", "backbone", "size", "pool", "test", "batch_size")
    for name in (*knobs, "ddim_steps"):
        if getattr(a, name) is not None:
            s[name] = getattr(a, name)
    out = Path(a.out)
    settings = out / "settings.json"
    # More cells may be added (sizes, seeds); the arms may be trained longer (extra_steps: a cell's
    # runs continue exactly, the learning rate being constant) and kept more often (eval_every).
    defining = json.loads(json.dumps({k: v for k, v in s.items() if k not in ("sizes", "seeds")}))
    try:
        if not check_recorded(
            settings, defining, f"{settings}: recorded with other settings", free=GROWABLE
        ):
            out.mkdir(parents=True, exist_ok=True)
            save_text(settings, json.dumps(defining, indent=1))
    except InputError as e:
        sys.exit(f"task_study: error: {e}")
    results = []
    if a.report:
        for path in sorted((out / "cells").glob("*/results.json")):
            r = json.loads(path.read_text())
            if r["n"] in s["sizes"] and r["seed"] in s["seeds"]:
                results.append(r)
        if not results:
            sys.exit(f"task_study: error: {out}: no finished cell to report")
        print(report(results, s, Path(a.report)))
        return

    from diff2in1.backbone import load_backbone
    from diff2in1.data.scenes import make_scenes

    pool = out / "scenes"
    make_scenes(pool, s["pool"], s["test"], size=s["size"], seed=s["scene_seed"], progress=False)
    backbone = load_backbone(s["backbone"])
    for n in s["sizes"]:
        for seed in s["seeds"]:
            t = time.perf_counter()
            print(f"cell n={n} seed {seed}", flush=True)
            r = run_cell(n, seed, s, out, pool, backbone)
            print(f"cell n={n} seed {seed} done ({time.perf_counter() - t:.0f} s)", flush=True)
            results.append(r)


if __name__ == "__main__":
    main()
