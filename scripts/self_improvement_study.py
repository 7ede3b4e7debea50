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
- and at the largest size, what limits the synthetic pairs: small heads trained from scratch for
  `--warmup-steps` steps on `synthetic_only` (the synthetic pairs with their research labels,
  the creation head's predictions), `pseudo_real` (the real scenes labelled by the warm-up head),
  `synthetic_gt` (the synthetic images with their source scenes' true normals) and, with
  `--images-of OTHER_STUDY`, `other_synthetic_gt` (that study's synthetic images, same labels, this
  backbone's features: the generator's share). Each records its label error, the mean angle between
  its training labels and the source scenes' true normals.

`--arms` picks the arms (warm-up always runs). A cell's arms are kept in its results.json; a re-run
adds the missing ones. The settings that make cells comparable are recorded in
`<out>/settings.json`, and a re-run with other settings is refused.

Every head is evaluated on the 40 test scenes (mean / median angular error, calibration gap).
Each cell writes `results.json` when done; a re-run skips finished cells and resumes unfinished
stages (each stage's own resume). `--report` aggregates: per (n, arm) the mean and a 95 %
t-interval over seeds, the paired difference against the control, and the paired costs of model
labels, synthetic images and the generator, into Markdown tables and two figures (error vs set
size; synthetic pairs beside their source scenes).
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
# Heads trained from scratch on other data, for the largest size only (see run_cell).
USEFULNESS = ("synthetic_only", "pseudo_real", "synthetic_gt", "other_synthetic_gt")
SIZES = (20, 40, 80, 160)
# What makes two runs' cells comparable: recorded in <out>/settings.json, checked on every run.
DEFINING = ("size", "batch", "lr", "warmup_steps", "extra_steps", "recreations", "backbone")
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
                _link(f, view / "train" / sub / f.name)
    _link(pool / "test", view / "test")
    (view / "done").write_text("")
    return view


def _head_done(folder: Path) -> bool:
    return (folder / "diffusion_pytorch_model.safetensors").exists()


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        dst.symlink_to(src.resolve())


def _pseudo_real_data(folder: Path, data: Path, backbone, head: Path, res: tuple[int, int]) -> Path:
    """The labelled real training images, labelled by `head` instead of their true normals."""
    from diff2in1.data import NormalsDataset, write_sample
    from diff2in1.heads import NormalHead
    from diff2in1.inference.predictor import NormalPredictor

    if (folder / "done").exists():
        return folder
    pred = NormalPredictor(backbone, NormalHead.from_pretrained(head), resolution=res)
    ds = NormalsDataset(data, "train", size=res, labels=False)
    for i in range(len(ds)):
        it = ds[i]
        out = pred(it["image"][None])
        normal = out.normal[0].permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
        write_sample(folder, "train", it["id"], it["image"], normal, it["caption"])
    (folder / "done").write_text("")
    return folder


def _synthetic_gt_data(folder: Path, synthetic: Path, pool: Path) -> Path:
    """The synthetic images, labelled with the true normals of the scene each was made from."""
    if (folder / "done").exists():
        return folder
    for meta in sorted((synthetic / "meta").glob("*.json")):
        m = json.loads(meta.read_text())
        sid, src = m["id"], m["source_id"]
        for sub, root, name in (
            ("img", synthetic, sid),
            ("caption", synthetic, sid),
            ("norm", pool, src),
            ("norm_npy", pool, src),
        ):
            for f in (root / "train" / sub).glob(f"{name}.*"):
                _link(f, folder / "train" / sub / f"{sid}{f.suffix}")
    (folder / "done").write_text("")
    return folder


def _label_vs_truth(label_file: Path, pool: Path, source_id: str):
    """(label, true normals of the source scene, their valid mask, angle map in deg), all HxW(x3)."""
    from diff2in1.data.layout import valid_mask_of
    from diff2in1.imaging.files import load_npy
    from diff2in1.metrics import angular_error_deg

    label, truth = load_npy(label_file), load_npy(pool / "train" / "norm_npy" / f"{source_id}.npy")
    return label, truth, valid_mask_of(truth), angular_error_deg(label, truth, dim=-1)


def label_error(labelled: Path, pool: Path) -> float:
    """Mean angle (deg) between a folder's training labels and the true normals of their source
    scenes (`<id>` or `<id>_syn<k>`), over the true normals' valid pixels."""
    total, count = 0.0, 0
    for f in sorted((labelled / "train" / "norm_npy").glob("*.npy")):
        _, _, mask, err = _label_vs_truth(f, pool, f.stem.split("_syn")[0])
        total, count = total + float(err[mask].sum()), count + int(mask.sum())
    return total / max(count, 1)


def run_cell(args: dict, n: int, seed: int) -> dict:
    """Train and evaluate the requested arms of one (n, seed) cell; returns (and writes) its
    results. Arms already in the cell's results.json are kept, missing ones are added."""
    import torch

    torch.set_num_threads(args["threads"])
    from diff2in1.backbone import load_backbone
    from diff2in1.config import CreateConfig, SelfImproveConfig, WarmupConfig
    from diff2in1.heads import NormalHead
    from diff2in1.inference.predictor import NormalPredictor
    from diff2in1.stages.create import create_data
    from diff2in1.stages.evaluate import evaluate
    from diff2in1.stages.self_improve import train_self_improve
    from diff2in1.stages.warmup import train_warmup

    root = Path(args["out"])
    cell = root / f"n{n:03d}_seed{seed}"
    done = cell / "results.json"
    results = (
        json.loads(done.read_text())
        if done.exists()
        else {"n": n, "seed": seed, "arms": {}, "seconds": {}, "recreate_every_epochs": None}
    )
    usefulness = n == max(args["sizes"])
    want = [a for a in args["arms"] if a not in USEFULNESS or usefulness]
    want = [a for a in want if a != "si_spi4" or n in args["spi4_sizes"]]
    measured = ("label_error" in results["arms"].get(a, {"label_error": 0}) for a in USEFULNESS if a in want)
    if all(a in results["arms"] for a in want) and all(measured):
        return results
    pool = root / "data"
    data = _link_view(pool, root / f"data_n{n:03d}", n)
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
    times: dict[str, float] = results["seconds"]

    def timed(name: str, work) -> None:
        t = time.perf_counter()
        work()
        if name not in times:  # a resumed stage keeps the time of the run that did the work
            times[name] = time.perf_counter() - t

    def train(kind: str, folder: Path, cfg, head_name: str) -> Path:
        if not _head_done(folder / head_name):
            resume = (folder / "state" / "state.json").exists()
            fn = train_warmup if kind == "warmup" else train_self_improve
            timed(folder.name, lambda: fn(cfg, resume, backbone))
        return folder / head_name

    def warmup_cfg(source: Path, folder: Path, head: str, steps: int) -> WarmupConfig:
        return WarmupConfig(**common, data=str(source), out=str(folder), head=head, max_steps=steps)

    def create(folder: Path, head: Path, spi: int, source: Path) -> Path:
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
        if not (folder / "manifest.jsonl").exists():
            timed(folder.name, lambda: create_data(ccfg, backbone, NormalHead.from_pretrained(head)))
        return folder

    warm = train(
        "warmup", cell / "warmup", warmup_cfg(data, cell / "warmup", "small", args["warmup_steps"]), "head"
    )
    heads = {"warmup": warm}
    if "control" in want:
        heads["control"] = train(
            "warmup",
            cell / "control",
            warmup_cfg(data, cell / "control", str(warm), args["extra_steps"]),
            "head",
        )
    si = dict(ema_decay=0.998, ema_every=10)
    for spi in (1, 4):
        if f"si_spi{spi}" not in want:
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
    if "si_recreate" in want:
        steps_per_epoch = max(1, (2 * n) // args["batch"])
        every = max(1, math.ceil(args["extra_steps"] / steps_per_epoch / args["recreations"]))
        results["recreate_every_epochs"] = every
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
    # Usefulness of the synthetic pairs, and what limits it: heads trained from scratch for the
    # warm-up's steps on (synthetic images, creation-head labels), (real images, warm-up-head
    # labels) and (synthetic images, their source scenes' true normals).
    sources = {}
    if "synthetic_only" in want or "synthetic_gt" in want:
        sources["synthetic_only"] = create(cell / "synthetic_spi1", warm, 1, data)
    if "pseudo_real" in want:
        sources["pseudo_real"] = _pseudo_real_data(cell / "pseudo_real_data", data, backbone, warm, res)
    if "synthetic_gt" in want:
        sources["synthetic_gt"] = _synthetic_gt_data(
            cell / "synthetic_gt_data", sources["synthetic_only"], pool
        )
    if "other_synthetic_gt" in want:  # another generator's images, this backbone's features
        other = Path(args["images_of"]) / cell.name / "synthetic_gt_data"
        if not (other / "done").exists():
            raise FileNotFoundError(f"{other}: no finished synthetic_gt data (run that study first)")
        sources["other_synthetic_gt"] = other
    for arm, source in sources.items():
        if arm in want:
            heads[arm] = train(
                "warmup", cell / arm, warmup_cfg(source, cell / arm, "small", args["warmup_steps"]), "head"
            )
    for arm, head in heads.items():
        if arm not in results["arms"]:
            pred = NormalPredictor(backbone, NormalHead.from_pretrained(head), resolution=res)
            ev = evaluate(
                pred, pool, "test", out=cell / "eval" / arm, batch_size=args["batch"], progress=False
            )
            results["arms"][arm] = {k: ev.metrics[k] for k in ("mean", "median", "a11", "calibration_gap")}
        if arm in sources and "label_error" not in results["arms"][arm]:
            results["arms"][arm]["label_error"] = label_error(sources[arm], pool)
    if "warmup" in results["arms"] and "label_error" not in results["arms"]["warmup"]:
        results["arms"]["warmup"]["label_error"] = 0.0  # true normals
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
    arms = [a for a in (*ARMS, *USEFULNESS) if any(a in r["arms"] for r in results)]
    for n in sizes:
        rows = [r for r in results if r["n"] == n]
        for arm in arms:
            have = [r for r in rows if arm in r["arms"]]
            if not have:
                continue
            entry = {"seeds": len(have)}
            for metric in ("mean", "median", "calibration_gap", "label_error"):
                if all(metric in r["arms"][arm] for r in have):
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


def paired(results: list[dict], n: int, a: str, b: str) -> tuple[float, float, float] | None:
    """Mean and 95 % interval of arm a minus arm b (test mean error) over the seeds of size n that
    have both; None if none has."""
    both = [r for r in results if r["n"] == n and a in r["arms"] and b in r["arms"]]
    return mean_ci([r["arms"][a]["mean"] - r["arms"][b]["mean"] for r in both]) if both else None


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


def samples_figure(root: Path, path: Path, count: int = 4) -> bool:
    """Synthetic pairs of the largest size's seed-0 cell beside their source scenes: source, synthetic
    image, the source's true normals, the creation head's label, and the angle between the two
    normal maps (colour bar in degrees). False if no cell has synthetic data yet."""
    import numpy as np

    from diff2in1.data.layout import find_image
    from diff2in1.imaging.files import load_rgb
    from diff2in1.viz import add_colorbar, error_to_rgb, grid, normal_to_rgb, save_png

    cells = sorted(root.glob("n*_seed0/synthetic_spi1/meta"))
    if not cells:
        return False
    syn, pool = cells[-1].parent, root / "data"
    rows = []
    for meta in sorted(syn.glob("meta/*.json"))[:count]:
        m = json.loads(meta.read_text())
        sid, src = m["id"], m["source_id"]
        label, truth, mask, err = _label_vs_truth(syn / "train" / "norm_npy" / f"{sid}.npy", pool, src)
        rows.append(
            [
                load_rgb(find_image(pool, "train", src)),
                load_rgb(find_image(syn, "train", sid)),
                normal_to_rgb(truth, mask),
                normal_to_rgb(label),
                np.asarray(add_colorbar(error_to_rgb(err, mask, 90.0), 90.0)),
            ]
        )
    labels = ["source scene", "synthetic image", "source normals", "creation label", "angle (deg)"]
    save_png(grid(rows, labels, cell=128), path)
    return True


def report(root: Path, out_md: Path, args: argparse.Namespace) -> None:
    results = [json.loads(p.read_text()) for p in sorted(root.glob("n*_seed*/results.json"))]
    if not results:
        raise SystemExit(f"{root}: no finished cells yet")
    table = aggregate(results)
    fig = out_md.with_suffix(".png")
    figure(table, fig)
    samples = out_md.with_suffix(".samples.png")
    has_samples = samples_figure(root, samples)
    sizes = sorted({n for n, _ in table})
    lines = [
        "| n | arm | seeds | test mean (deg) | test median (deg) | mean - control | median - control "
        "| calib. gap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        for arm in (*ARMS, *USEFULNESS):
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
    useful = []
    top = max(sizes)
    if any((top, a) in table for a in USEFULNESS):
        useful = [
            f"What the synthetic pairs are worth, and what limits them: small heads trained from scratch for "
            f"the warm-up's steps on {top} images each, evaluated on the real test scenes. The label error "
            "is the mean angle between a head's training labels and the true normals of the scenes the "
            "images were made from.",
            "",
            "| trained on | images | labels | label error (deg) | test mean (deg) | calib. gap |",
            "|---|---|---|---|---|---|",
        ]
        rows = (
            ("warmup", "real scenes", "true normals"),
            ("pseudo_real", "real scenes", "the warm-up head's predictions"),
            ("synthetic_gt", "synthetic images", "their source scenes' true normals"),
            ("other_synthetic_gt", "the --images-of study's synthetic images", "their sources' true normals"),
            ("synthetic_only", "synthetic images", "the creation head's (research)"),
        )
        for arm, images, labels in rows:
            e = table.get((top, arm))
            if e is not None:
                le = _fmt(e["label_error"]) if "label_error" in e else ""
                gap = _fmt(e["calibration_gap"])
                useful.append(f"| {arm} | {images} | {labels} | {le} | {_fmt(e['mean'])} | {gap} |")
        useful.append("")
        for a, b, what in (
            ("pseudo_real", "warmup", "model labels instead of true ones, on the real images"),
            (
                "synthetic_only",
                "pseudo_real",
                "synthetic images instead of real ones, both with model labels",
            ),
            (
                "synthetic_gt",
                "other_synthetic_gt",
                "this generator's images instead of the other's (same labels)",
            ),
        ):
            d = paired(results, top, a, b)
            if d is not None:
                useful.append(
                    f"- Cost of {what}: {a} - {b} = {_fmt(d)} deg test mean error (paired by seed)."
                )
    recorded = root / "settings.json"
    run = json.loads(recorded.read_text()) if recorded.exists() else {k: getattr(args, k) for k in DEFINING}
    settings = (
        f"{len({r['seed'] for r in results})} seeds, sizes {sizes}, images {run['size']}x{run['size']}, "
        f"backbone {run['backbone']}, batch {run['batch']}, lr {run['lr']}, warm-up {run['warmup_steps']} "
        f"steps, extra {run['extra_steps']} steps, re-creation {run['recreations']}x during the extra "
        "steps; t_start 600, 50 DDIM steps, EMA 0.998 every 10 steps"
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
            *useful,
            "",
            *([f"![synthetic pairs beside their source scenes]({samples.name})", ""] if has_samples else []),
        ]
    )
    (out_md.with_suffix(".results.md")).write_text(text)
    print(text)


def _int_list(text: str) -> list[int]:
    """argparse type: comma-separated integers, e.g. "20,40"."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _sizes(text: str) -> list[int]:
    """argparse type: labelled-set sizes, each 1..max(SIZES) (the pool's training scenes)."""
    sizes = _int_list(text)
    if not sizes or not all(1 <= n <= max(SIZES) for n in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be 1..{max(SIZES)}, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/study")
    p.add_argument("--sizes", type=_sizes, default=",".join(map(str, SIZES)))
    p.add_argument("--seeds", type=_int_list, default="0,1,2")
    p.add_argument("--size", type=int, default=128, help="image size")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=160)
    p.add_argument("--extra-steps", type=int, default=80)
    p.add_argument(
        "--recreations", type=int, default=2, help="re-creations of the set during the extra steps"
    )
    p.add_argument(
        "--spi4-sizes", type=_int_list, default="20,40", help="sizes that also run 4 samples per image"
    )
    p.add_argument("--backbone", default="tiny-scenes", help="backbone (preset or folder)")
    p.add_argument(
        "--arms",
        default=",".join((*ARMS, *USEFULNESS[:-1])),
        help=f"arms to run (warm-up always runs); {'/'.join(USEFULNESS)} only at the largest size",
    )
    p.add_argument(
        "--usefulness-only",
        action="store_true",
        help="same as --arms warmup," + ",".join(USEFULNESS[:-1]),
    )
    p.add_argument(
        "--images-of",
        help="another study folder (same --size, other --backbone): adds the arm other_synthetic_gt, a "
        "head on this backbone trained on that study's synthetic images with their true normals",
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
    from PIL import Image

    with Image.open(next((root / "data" / "test" / "img").iterdir())) as im:
        if im.size != (a.size, a.size):
            p.error(f"{root / 'data'}: its scenes are {im.size[0]}x{im.size[1]}, not --size {a.size}")
    sizes, seeds = a.sizes, a.seeds
    jobs = [(n, s) for s in seeds for n in sizes]
    args = {
        k: getattr(a, k)
        for k in ("out", "size", "batch", "lr", "warmup_steps", "extra_steps", "recreations", "threads")
    }
    args["spi4_sizes"] = a.spi4_sizes
    args["backbone"], args["sizes"] = a.backbone, sizes
    base = ["warmup", *USEFULNESS[:-1]] if a.usefulness_only else [v for v in a.arms.split(",") if v]
    args["arms"] = [v for v in base if v != "other_synthetic_gt"] + (
        ["other_synthetic_gt"] if a.images_of else []
    )
    args["images_of"] = a.images_of
    if a.images_of and not (Path(a.images_of) / "settings.json").exists():
        p.error(f"--images-of {a.images_of}: not a study folder (no settings.json)")
    unknown = set(args["arms"]) - {*ARMS, *USEFULNESS}
    if unknown:
        p.error(f"--arms: unknown {sorted(unknown)}; choose from {', '.join((*ARMS, *USEFULNESS))}")
    recorded, settings = root / "settings.json", {k: args[k] for k in DEFINING}
    if recorded.exists():
        before = json.loads(recorded.read_text())
        changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if changed:  # cells of other settings would be mixed into one table
            p.error(f"{recorded}: this study ran with other settings {changed} (old, new); use another --out")
    else:
        recorded.write_text(json.dumps(settings, indent=1))
    for n in sizes:  # here, not in the cells: parallel cells of one size would race for the links
        _link_view(root / "data", root / f"data_n{n:03d}", n)
    t0 = time.perf_counter()
    failed = 0
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        futures = {pool.submit(run_cell, args, n, s): (n, s) for n, s in jobs}
        for i, f in enumerate(as_completed(futures), 1):
            n, s = futures[f]
            try:
                r = f.result()
            except Exception as e:  # one failed cell must not hide the others' results
                print(f"[{i}/{len(jobs)} cells] n={n} seed={s}: FAILED {type(e).__name__}: {e}", flush=True)
                failed += 1
                continue
            m = {k: round(v["mean"], 2) for k, v in r["arms"].items()}
            print(
                f"[{i}/{len(jobs)} cells, {time.perf_counter() - t0:.0f} s] n={n} seed={s}: {m}", flush=True
            )
    if failed:
        print(f"{failed} of {len(jobs)} cells failed; re-run the same command to retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
