"""Where does creating data help? A multi-seed study of self-improvement on procedural scenes.

    .venv/bin/python scripts/self_improvement_study.py --out runs/study --size 64 --jobs 2
    .venv/bin/python scripts/self_improvement_study.py --out runs/study \
        --report docs/self_improvement_study.md

One fixed data set (160 train / 40 test scenes at `--size` pixels, `make_scenes` seed 0) and the shipped
`tiny-scenes` backbone. For every labelled-set size n (the first n training scenes) and every
seed, the cell trains:

- warm-up: a small head from scratch for `--warmup-steps` steps on the n scenes;
- control: the warm-up head for `--extra-steps` more steps on the same n scenes;
- si_spi1 / si_spi4: the research self-improving stage from the warm-up head for the same extra
  steps, on the n scenes + 1 or 4 synthetic samples per scene made by the warm-up head (4 only for
  the sizes in `--spi4-sizes`: creation dominates the cost)
  (t = 600, 50 DDIM steps, EMA 0.998 every 10 steps: the research defaults);
- si_recreate: the same with 1 sample per scene, re-created by the current creation head twice
  during the extra steps (`--recreate-every`);
- and for n = 160, `synthetic_only`: a head trained from scratch for `--warmup-steps` steps on the
  160 synthetic pairs alone (their labels are the warm-up head's predictions), next to the warm-up
  head trained on the 160 real scenes for the same steps: how useful the synthetic data are.

Every head is evaluated on the 40 test scenes (mean / median angular error, calibration gap).
Each cell writes `results.json` when done; a re-run skips finished cells and resumes unfinished
stages (each stage's own resume). `--report` aggregates: per (n, arm) the mean and a 95 %
t-interval over seeds, and the paired difference against the control, into a Markdown table and a
figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ARMS = ("warmup", "control", "si_spi1", "si_spi4", "si_recreate")
SIZES = (20, 40, 80, 160)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _link_view(pool: Path, view: Path, n: int) -> Path:
    """A data folder with the first n training scenes of `pool` and all its test scenes (links)."""
    from diff2in1.data.layout import list_ids

    if (view / "done").exists():
        return view
    ids = list_ids(pool, "train")[:n]
    for sub in ("img", "norm", "norm_npy", "caption"):
        (view / "train" / sub).mkdir(parents=True, exist_ok=True)
        for i in ids:
            for f in (pool / "train" / sub).glob(f"{i}.*"):
                dst = view / "train" / sub / f.name
                if not dst.exists():
                    dst.symlink_to(f.resolve())
    test = view / "test"
    if not test.exists():
        test.symlink_to((pool / "test").resolve())
    (view / "done").write_text("")
    return view


def _head_done(folder: Path) -> bool:
    return (folder / "diffusion_pytorch_model.safetensors").exists()


def run_cell(args: dict, n: int, seed: int) -> dict:
    """Train and evaluate every arm of one (n, seed) cell; returns (and writes) its results."""
    import torch

    torch.set_num_threads(args["threads"])
    from diff2in1.backbone import load_backbone
    from diff2in1.config import CreateConfig, SelfImproveConfig, WarmupConfig
    from diff2in1.heads import NormalHead
    from diff2in1.stages.create import create_data
    from diff2in1.stages.evaluate import evaluate
    from diff2in1.stages.predict import NormalPredictor
    from diff2in1.stages.self_improve import train_self_improve
    from diff2in1.stages.warmup import train_warmup

    root = Path(args["out"])
    cell = root / f"n{n:03d}_seed{seed}"
    done = cell / "results.json"
    if done.exists():
        return json.loads(done.read_text())
    data = _link_view(root / "data", root / f"data_n{n:03d}", n)
    backbone = load_backbone(args["backbone"])
    res = (args["size"], args["size"])
    common = dict(
        backbone=args["backbone"],
        resolution=res,
        batch_size=args["batch"],
        lr=args["lr"],
        seed=seed,
        progress=False,
        checkpoint_every=0,
        num_workers=0,
        epochs=10**6,
    )
    times: dict[str, float] = {}

    def train(kind: str, folder: Path, cfg, head_name: str) -> Path:
        t = time.perf_counter()
        if not _head_done(folder / head_name):
            resume = (folder / "state" / "state.json").exists()
            fn = train_warmup if kind == "warmup" else train_self_improve
            fn(cfg, resume, backbone)
        times[folder.name] = times.get(folder.name, 0.0) + time.perf_counter() - t
        return folder / head_name

    def create(folder: Path, head: Path, spi: int, source: Path) -> Path:
        t = time.perf_counter()
        ccfg = CreateConfig(
            data=str(source),
            backbone=args["backbone"],
            head=str(head),
            out=str(folder),
            resolution=res,
            samples_per_image=spi,
            t_start=600,
            steps=50,
            seed=seed,
            batch_size=args["batch"],
            progress=False,
            preview=0,
        )
        create_data(ccfg, backbone, NormalHead.from_pretrained(head))
        times[folder.name] = time.perf_counter() - t
        return folder

    warm = train(
        "warmup",
        cell / "warmup",
        WarmupConfig(
            **common, data=str(data), out=str(cell / "warmup"), head="small", max_steps=args["warmup_steps"]
        ),
        "head",
    )
    heads = {"warmup": warm}
    every = None
    if args["usefulness_only"]:  # only what the synthetic-only comparison needs
        create(cell / "synthetic_spi1", warm, 1, data)
    else:
        heads["control"] = train(
            "warmup",
            cell / "control",
            WarmupConfig(
                **common,
                data=str(data),
                out=str(cell / "control"),
                head=str(warm),
                max_steps=args["extra_steps"],
            ),
            "head",
        )
        si = dict(ema_decay=0.998, ema_every=10)
        for spi in (1, 4):
            if spi == 4 and n not in args["spi4_sizes"]:
                continue
            syn = create(cell / f"synthetic_spi{spi}", warm, spi, data)
            heads[f"si_spi{spi}"] = train(
                "si",
                cell / f"si_spi{spi}",
                SelfImproveConfig(
                    **common,
                    **si,
                    data=str(data),
                    out=str(cell / f"si_spi{spi}"),
                    synthetic=[str(syn)],
                    init=str(warm),
                    max_steps=args["extra_steps"],
                ),
                "exploitation",
            )
        steps_per_epoch = max(1, (2 * n) // args["batch"])
        every = max(1, math.ceil(args["extra_steps"] / steps_per_epoch / args["recreations"]))
        heads["si_recreate"] = train(
            "si",
            cell / "si_recreate",
            SelfImproveConfig(
                **common,
                **si,
                data=str(data),
                out=str(cell / "si_recreate"),
                init=str(warm),
                recreate_every=every,
                max_steps=args["extra_steps"],
                create={
                    "samples_per_image": 1,
                    "t_start": 600,
                    "steps": 50,
                    "batch_size": args["batch"],
                    "preview": 0,
                },
            ),
            "exploitation",
        )
    if n == max(SIZES):
        syn_data = cell / "synthetic_spi1"
        heads["synthetic_only"] = train(
            "warmup",
            cell / "synthetic_only",
            WarmupConfig(
                **common,
                data=str(syn_data),
                out=str(cell / "synthetic_only"),
                head="small",
                max_steps=args["warmup_steps"],
            ),
            "head",
        )
    results = {"n": n, "seed": seed, "arms": {}, "seconds": times, "recreate_every_epochs": every}
    for arm, head in heads.items():
        pred = NormalPredictor(backbone, NormalHead.from_pretrained(head), resolution=res)
        ev = evaluate(
            pred, root / "data", "test", out=cell / "eval" / arm, batch_size=args["batch"], progress=False
        )
        results["arms"][arm] = {k: ev.metrics[k] for k in ("mean", "median", "a11", "calibration_gap")}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, done)
    return results


# ------------------------------------------------------------------------------------ aggregation
def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval (nan half-width for one value)."""
    k = len(values)
    m = sum(values) / k
    if k < 2:
        return m, float("nan"), float("nan")
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (k - 1))
    h = T975.get(k - 1, 1.96) * sd / math.sqrt(k)
    return m, m - h, m + h


def aggregate(results: list[dict]) -> dict:
    """{(n, arm): {mean: (m, lo, hi), median: ..., diff_mean: ... (arm - control, paired by seed)}}."""
    table: dict = {}
    sizes = sorted({r["n"] for r in results})
    arms = [a for a in (*ARMS, "synthetic_only") if any(a in r["arms"] for r in results)]
    for n in sizes:
        rows = [r for r in results if r["n"] == n]
        for arm in arms:
            have = [r for r in rows if arm in r["arms"]]
            if not have:
                continue
            entry = {"seeds": len(have)}
            for metric in ("mean", "median", "calibration_gap"):
                entry[metric] = mean_ci([r["arms"][arm][metric] for r in have])
            paired = [r for r in have if "control" in r["arms"]]  # usefulness-only runs have none
            nan = (float("nan"),) * 3
            entry["diff_mean"] = (
                mean_ci([r["arms"][arm]["mean"] - r["arms"]["control"]["mean"] for r in paired])
                if paired
                else nan
            )
            entry["diff_median"] = (
                mean_ci([r["arms"][arm]["median"] - r["arms"]["control"]["median"] for r in paired])
                if paired
                else nan
            )
            table[(n, arm)] = entry
    return table


def _fmt(ci: tuple[float, float, float]) -> str:
    m, lo, hi = ci
    return f"{m:.2f} [{lo:.2f}, {hi:.2f}]" if not math.isnan(lo) else f"{m:.2f}"


def figure(table: dict, path: Path) -> None:
    """Test mean error vs labelled set size, one line per arm, 95 % bands; labelled axes."""
    from PIL import Image, ImageDraw

    from diff2in1.viz import _LINE_COLORS, default_font, nice_ticks

    w, h, left, right, top, bottom = 720, 440, 64, 190, 30, 56
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img, "RGBA")
    font = default_font(12)
    sizes = sorted({n for n, _ in table})
    arms = [a for a in ARMS if any((n, a) in table for n in sizes)]
    vals = [v for (n, a), e in table.items() if a in arms for v in e["mean"] if not math.isnan(v)]
    lo_v, hi_v = math.floor(min(vals)) - 1, math.ceil(max(vals)) + 1
    ticks = [t for t in nice_ticks(hi_v, lo_v) if lo_v <= t <= hi_v]
    xs = {n: left + i / max(1, len(sizes) - 1) * (w - left - right) for i, n in enumerate(sizes)}

    def y(v: float) -> float:
        return top + (1 - (v - lo_v) / (hi_v - lo_v)) * (h - top - bottom)

    draw.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    for t in ticks:
        draw.line([(left - 4, y(t)), (left, y(t))], fill=(0, 0, 0))
        draw.text((8, y(t) - 7), f"{t:g}", fill=(0, 0, 0), font=font)
    for n, x in xs.items():
        draw.line([(x, h - bottom), (x, h - bottom + 4)], fill=(0, 0, 0))
        draw.text((x - 8, h - bottom + 6), str(n), fill=(0, 0, 0), font=font)
    draw.text((left + 120, h - 22), "labelled training scenes (n)", fill=(0, 0, 0), font=font)
    draw.text(
        (left, 8),
        "test mean angular error (deg), mean over seeds with 95% interval",
        fill=(0, 0, 0),
        font=font,
    )
    for i, arm in enumerate(arms):
        color = _LINE_COLORS[i % len(_LINE_COLORS)]
        pts = [(xs[n], table[(n, arm)]["mean"]) for n in sizes if (n, arm) in table]
        band_hi = [(x, y(table[(n, arm)]["mean"][2])) for n, x in xs.items() if (n, arm) in table]
        band_lo = [(x, y(table[(n, arm)]["mean"][1])) for n, x in xs.items() if (n, arm) in table]
        if len(band_hi) > 1 and not any(math.isnan(p[1]) for p in band_hi + band_lo):
            draw.polygon(band_hi + band_lo[::-1], fill=(*color, 40))
        line = [(x, y(m[0])) for x, m in pts]
        if len(line) > 1:
            draw.line(line, fill=color, width=2)
        for x, yy in line:
            draw.ellipse([x - 3, yy - 3, x + 3, yy + 3], fill=color)
        draw.text((w - right + 12, top + 8 + 16 * i), arm, fill=color, font=font)
    img.save(path)


def report(root: Path, out_md: Path, args: argparse.Namespace) -> None:
    results = [json.loads(p.read_text()) for p in sorted(root.glob("n*_seed*/results.json"))]
    if not results:
        raise SystemExit(f"{root}: no finished cells yet")
    table = aggregate(results)
    fig = out_md.with_suffix(".png")
    figure(table, fig)
    sizes = sorted({n for n, _ in table})
    lines = [
        "| n | arm | seeds | test mean (deg) | test median (deg) | mean - control | median - control "
        "| calib. gap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        for arm in (*ARMS, "synthetic_only"):
            e = table.get((n, arm))
            if e is None:
                continue
            diff = "" if arm == "control" else _fmt(e["diff_mean"])
            diffm = "" if arm == "control" else _fmt(e["diff_median"])
            lines.append(
                f"| {n} | {arm} | {e['seeds']} | {_fmt(e['mean'])} | {_fmt(e['median'])} | {diff} | {diffm} "
                f"| {_fmt(e['calibration_gap'])} |"
            )
    (out_md.with_suffix(".json")).write_text(
        json.dumps({f"{n}/{a}": v for (n, a), v in table.items()}, indent=1)
    )
    # What the intervals say, computed: a difference counts only if its 95 % interval excludes 0.
    better = [(n, a) for (n, a), e in table.items() if a.startswith("si") and e["diff_mean"][2] < 0]
    worse = [(n, a) for (n, a), e in table.items() if a.startswith("si") and e["diff_mean"][1] > 0]
    has_si = any(a.startswith("si") for _, a in table)
    verdict = (
        ""
        if not has_si
        else (
            "Self-improvement beat the control (95 % interval of the paired difference below 0) in: "
            + ", ".join(f"n={n} {a}" for n, a in sorted(better))
            if better
            else "In no cell did self-improvement beat the control: every 95 % interval of the paired "
            "difference (self-improved minus control, test mean error) reaches 0 or lies above it."
        )
    )
    if worse:
        verdict += (
            " It was worse than the control (interval above 0) in: "
            + ", ".join(f"n={n} {a}" for n, a in sorted(worse))
            + "."
        )
    useful = ""
    if (max(sizes), "synthetic_only") in table:
        syn, real = table[(max(sizes), "synthetic_only")]["mean"], table[(max(sizes), "warmup")]["mean"]
        useful = (
            f"Usefulness of the synthetic pairs: a head trained on the {max(sizes)} synthetic pairs alone "
            f"reaches {_fmt(syn)} deg test mean error, the same head trained on {max(sizes)} real scenes "
            f"for the same steps {_fmt(real)} deg."
        )
    settings = (
        f"{len({r['seed'] for r in results})} seeds, sizes {sizes}, images {args.size}x{args.size}, batch "
        f"{args.batch}, lr {args.lr}, warm-up {args.warmup_steps} steps, extra {args.extra_steps} steps, "
        f"re-creation {args.recreations}x during the extra steps; t_start 600, 50 DDIM steps, EMA 0.998 "
        "every 10 steps"
    )
    text = "\n".join(
        [
            "<!-- written by scripts/self_improvement_study.py --report; edit the script, not this file -->",
            "## Results",
            "",
            f"Settings: {settings}. Intervals: 95 % t-intervals over seeds; differences paired by seed.",
            "",
            *lines,
            "",
            f"![test mean error vs labelled set size]({fig.name})",
            "",
            verdict,
            "",
            useful,
            "",
        ]
    )
    (out_md.with_suffix(".results.md")).write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/study")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--size", type=int, default=128, help="image size")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=160)
    p.add_argument("--extra-steps", type=int, default=80)
    p.add_argument(
        "--recreations", type=int, default=2, help="re-creations of the set during the extra steps"
    )
    p.add_argument("--spi4-sizes", default="20,40", help="sizes that also run 4 samples per image")
    p.add_argument("--backbone", default="tiny-scenes", help="backbone (preset or folder)")
    p.add_argument(
        "--usefulness-only",
        action="store_true",
        help="only warm-up, 1 synthetic sample/scene, synthetic-only",
    )
    p.add_argument("--jobs", type=int, default=1, help="cells run in parallel (one process each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--report", help="write the aggregate table + figure next to this .md path (no training)")
    a = p.parse_args(argv)
    root = Path(a.out)
    if a.report:
        report(root, Path(a.report), a)
        return 0
    from diff2in1.data.scenes import make_scenes

    if not (root / "data" / "test").exists():
        make_scenes(root / "data", max(SIZES), 40, size=a.size, seed=0, progress=False)
    sizes = [int(s) for s in a.sizes.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    jobs = [(n, s) for s in seeds for n in sizes]
    args = {
        k: getattr(a, k)
        for k in ("out", "size", "batch", "lr", "warmup_steps", "extra_steps", "recreations", "threads")
    }
    args["spi4_sizes"] = [int(v) for v in a.spi4_sizes.split(",") if v]
    args["backbone"], args["usefulness_only"] = a.backbone, a.usefulness_only
    for n in sizes:  # here, not in the cells: parallel cells of one size would race for the links
        _link_view(root / "data", root / f"data_n{n:03d}", n)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        futures = {pool.submit(run_cell, args, n, s): (n, s) for n, s in jobs}
        for i, f in enumerate(as_completed(futures), 1):
            n, s = futures[f]
            try:
                r = f.result()
            except Exception as e:  # one failed cell must not hide the others' results
                print(f"[{i}/{len(jobs)} cells] n={n} seed={s}: FAILED {type(e).__name__}: {e}", flush=True)
                continue
            m = {k: round(v["mean"], 2) for k, v in r["arms"].items()}
            print(
                f"[{i}/{len(jobs)} cells, {time.perf_counter() - t0:.0f} s] n={n} seed={s}: {m}", flush=True
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
