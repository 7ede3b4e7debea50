"""Multi-task study: one backbone pass for three heads (normals, depth, segmentation) against
single-task heads, on procedural scenes with the shipped `tiny-scenes` backbone.

For every seed, four warm-up runs on the same scenes: the three-task head set
(`--tasks normals,depth,segmentation`) and one run per task alone; each is evaluated on the
held-out scenes. The table gives each task's metrics as the mean over seeds with a 95 % t-interval
(half-width t(0.975, n - 1) * s / sqrt(n)). Resumable: finished (arm, seed) results are kept in
`<out>/results/` and skipped on a rerun; the table is rewritten from all of them.

    .venv/bin/python scripts/multitask_study.py --out runs/multitask_study --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

SETTINGS = dict(
    backbone="tiny-scenes",
    size=128,  # scenes and head resolution (square)
    train=96,
    test=24,
    scene_seed=0,
    seeds=(0, 1, 2),
    head="small",
    batch_size=8,
    lr=1e-3,
    steps=100,  # 8 epochs of 96 scenes
    feature_cache="memory",  # each image's taps once (fixed noise per image): the heads dominate
)
ARMS = {
    "three heads": "normals,depth,segmentation",
    "normals alone": "normals",
    "depth alone": "depth",
    "segmentation alone": "segmentation",
}
COLUMNS = {
    "normals": (("mean", "mean angular error (deg)", False), ("a11", "< 11.25 deg (%)", True)),
    "depth": (("abs_rel", "AbsRel", False), ("rmse", "RMSE (m)", False), ("delta1", "delta < 1.25", True)),
    "segmentation": (("miou", "mIoU", True), ("pixel_acc", "pixel accuracy", True)),
}
# Two-sided 95 % Student t quantiles t(0.975, df), df = 1..10.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t_interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95 % t-interval); half-width nan for a single value."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, float("nan")
    return mean, T975[min(n - 1, len(T975)) - 1] * statistics.stdev(values) / math.sqrt(n)


def run_one(arm: str, tasks: str, seed: int, s: dict, data: Path, out: Path, backbone) -> dict:
    from diff2in1.config import WarmupConfig
    from diff2in1.inference.predictor import NormalPredictor, TaskPredictor
    from diff2in1.stages.evaluate import evaluate
    from diff2in1.stages.warmup import HEAD_FOLDERS, train_warmup

    run = out / "runs" / f"{arm.replace(' ', '_')}_s{seed}"
    cfg = WarmupConfig(
        data=str(data), backbone=s["backbone"], out=str(run), resolution=(s["size"], s["size"]),
        head=s["head"], batch_size=s["batch_size"], lr=s["lr"], epochs=10**6, max_steps=s["steps"],
        seed=seed, tasks=tasks, feature_cache=s["feature_cache"], num_workers=0, progress=False,
        checkpoint_every=0,
    )  # fmt: skip
    t0 = time.perf_counter()
    result = train_warmup(cfg, resume=(run / "state").exists(), backbone=backbone)
    seconds = time.perf_counter() - t0
    heads = [str(run / HEAD_FOLDERS[t]) for t in tasks.split(",")]
    if tasks == "normals":
        from diff2in1.heads import NormalHead

        predictor = NormalPredictor(backbone, NormalHead.from_pretrained(heads[0]))
    else:
        predictor = TaskPredictor(backbone, heads)
    ev = evaluate(predictor, data, "test", progress=False)
    metrics = {}
    if ev.metrics:
        metrics["normals"] = ev.metrics
    for task, m in ev.task_metrics.items():
        metrics[task] = {k: v for k, v in m.items() if not isinstance(v, list)}
    return {"arm": arm, "tasks": tasks, "seed": seed, "steps": result.steps, "train_seconds": seconds,
            "final_loss": result.losses[-1], "metrics": metrics}  # fmt: skip


def table(results: list[dict], s: dict) -> str:
    lines = [
        f"Procedural scenes at {s['size']}x{s['size']} ({s['train']} train / {s['test']} test scenes, "
        f"scene seed {s['scene_seed']}), backbone `{s['backbone']}`, `{s['head']}` heads, "
        f"{s['steps']} steps of batch {s['batch_size']}, lr {s['lr']:g}, feature cache "
        f"`{s['feature_cache']}`; mean over seeds {', '.join(map(str, s['seeds']))} +- the half-width "
        "of the 95 % t-interval.",
        "",
    ]
    for task, cols in COLUMNS.items():
        lines += [f"**{task}**", "", "| heads | seeds | " + " | ".join(c[1] for c in cols) + " |"]
        lines.append("|---" * (len(cols) + 2) + "|")
        for arm in ("three heads", f"{task} alone"):
            rows = [r for r in results if r["arm"] == arm and task in r["metrics"]]
            if not rows:
                continue
            cells = []
            for key, _, _ in cols:
                mean, half = t_interval([r["metrics"][task][key] for r in rows])
                cells.append(f"{mean:.4g} +- {half:.2g}" if math.isfinite(half) else f"{mean:.4g}")
            lines.append(f"| {arm} | {len(rows)} | " + " | ".join(cells) + " |")
        lines.append("")
    times = {
        arm: statistics.median(r["train_seconds"] for r in results if r["arm"] == arm)
        for arm in ARMS
        if any(r["arm"] == arm for r in results)
    }
    lines.append(
        "Training time per run (median over seeds; taps cached after the first epoch, so the heads "
        "dominate): " + ", ".join(f"{arm} {t:.0f} s" for arm, t in times.items()) + "."
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="study folder (data, runs, results, table)")
    ap.add_argument("--steps", type=int, default=SETTINGS["steps"])
    ap.add_argument("--seeds", default=",".join(map(str, SETTINGS["seeds"])))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    a = ap.parse_args()

    import torch

    from diff2in1.atomic import save_text
    from diff2in1.backbone import load_backbone
    from diff2in1.data.scenes import make_scenes

    if a.threads:
        torch.set_num_threads(a.threads)
    s = dict(SETTINGS, steps=a.steps, seeds=tuple(int(x) for x in a.seeds.split(",")))
    out = Path(a.out)
    data = out / "data"
    if not (data / "test").is_dir():
        make_scenes(data, s["train"], s["test"], size=s["size"], seed=s["scene_seed"], progress=False)
    backbone = load_backbone(s["backbone"])
    (out / "results").mkdir(parents=True, exist_ok=True)
    for seed in s["seeds"]:
        for arm, tasks in ARMS.items():
            path = out / "results" / f"{arm.replace(' ', '_')}_s{seed}.json"
            if path.is_file():
                continue
            r = run_one(arm, tasks, seed, s, data, out, backbone)
            save_text(path, json.dumps(r, indent=1))
            print(f"{arm} seed {seed}: {r['train_seconds']:.0f} s of training", flush=True)
    results = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    text = table(results, s)
    save_text(out / "table.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
