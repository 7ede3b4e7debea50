"""`python benchmarks/bench.py --batched 1,8,32`: the throughput of the pipeline's batched calls.

At each batch size B: perception images/s (`pipe(images, batch_size=B)`), creation samples/s
(`pipe.create(images, batch_size=B)`; with `--steps` below `--full-steps` the full length is
extrapolated with the UNet pass measured at that batch size), and the UNet pass alone (B latents,
each pass timed between two synchronisations) as FLOP/s and as a fraction of the dense
matmul rate of the run's dtype measured in the same process. Each row also keeps its peak memory
and its first call's time: with `--compile` that call holds the compilation for this shape, so
first minus steady is the compile time. A size that does not fit in GPU memory is reported as
such and larger ones are skipped. No module is synchronised inside a call (no timing hooks), so
the GPU is never stalled by the measurement itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from collections.abc import Callable

import torch

import speed_knobs
from bench import (
    _fmt_s,
    extrapolate,
    loadavg,
    machine_fields,
    make_batch,
    matmul_flops_per_s,
    measure,
    resolve_device,
    stage_record,
    unet_forward_flops,
)


def unet_passes(backbone, batch: int, resolution: int, repeat: int, warmup: int) -> dict:
    """Median seconds of one UNet pass over `batch` latents, as the DDIM loop runs it (t = 600,
    the empty caption); each of `repeat` passes synchronised only at its start and end."""
    device = backbone.device
    g = torch.Generator().manual_seed(0)
    z = torch.randn(batch, backbone.unet.config.in_channels, resolution // 8, resolution // 8, generator=g)
    z = z.to(device, backbone.dtype)
    cond = backbone.empty_embedding(batch)
    t = torch.full((batch,), 600, device=device, dtype=torch.long)
    m = measure(lambda i: backbone.unet_forward(z, t, cond), repeat, warmup, device, None)
    return {
        "seconds": [round(s, 5) for s in m.seconds],
        "pass_s": statistics.median(m.seconds),
        "first_s": m.warmup_seconds,
    }


def _first_call(m, steady: float) -> dict:
    """The first untimed call's seconds and its excess over a steady call (compilation, warm-up)."""
    if not m.warmup_seconds:
        return {}
    return {"first_call_s": m.warmup_seconds[0], "first_call_extra_s": max(0.0, m.warmup_seconds[0] - steady)}


def run_batched(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """Images/s of batched perception, samples/s of batched creation and the UNet's achieved
    fraction of the matmul rate at each batch size of `args.batched` (`args.repeat` timed calls)."""
    from diff2in1 import Diff2in1Pipeline
    from diff2in1.backbone import load_backbone
    from diff2in1.heads import HeadConfig, NormalHead

    wall0 = time.perf_counter()
    device = resolve_device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    amp = torch.bfloat16 if args.dtype == "bf16" else None
    res = args.resolution
    peak_key = "bf16" if amp is not None else "fp32"
    # The machine's matmul rate first, with nothing big allocated yet.
    peak = matmul_flops_per_s(amp or torch.float32, device)
    backbone = load_backbone(args.backbone, device=device, seed=0, dtype=amp or torch.float32)
    torch.manual_seed(0)
    in_ch = tuple(backbone.tap_channels[g] for g in ("low", "mid", "high", "highest"))
    small = args.smoke or args.head == "small"
    cfg = HeadConfig.small(in_ch) if small else dataclasses.replace(HeadConfig.reference(), in_channels=in_ch)
    pipe = Diff2in1Pipeline.from_backbone(backbone, NormalHead.from_head_config(cfg).to(device))
    applied = speed_knobs.apply(args, backbone, device)
    flops_1 = unet_forward_flops(backbone.unet.config, 1, res)
    images = make_batch(max(args.batched), res, device)["image"]
    report: dict = {
        "config": {
            "backbone": args.backbone,
            "head": "small" if small else "reference",
            "resolution": res,
            "dtype": args.dtype,
            "steps_measured": args.steps,
            "steps_full": args.full_steps,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "device": str(device),
            **machine_fields(device, amp),
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "loadavg_start": loadavg(),
            "torch": torch.__version__,
            "speed": applied,
        },
        "matmul": {
            "dtype": peak_key,
            "flops_per_s": peak,
            "how": "torch.mm 2048x2048, best of several rounds",
        },
        "unet_gflop_per_image": flops_1 / 1e9,
        "batched": {},
    }
    log(
        f"bench --batched: {args.backbone}, {res}x{res}, {args.dtype}, {device} "
        f"({report['config']['device_name']}), {speed_knobs.describe(applied)}, threads "
        f"{torch.get_num_threads()}, load average at start {report['config']['loadavg_start']}"
    )
    for b in args.batched:
        x = images[:b]
        seeds = list(range(b))
        row: dict = {}
        try:
            unet = unet_passes(backbone, b, res, args.repeat, args.warmup)
            m = measure(
                lambda i, x=x: pipe(
                    x, processing_resolution=res, batch_size=len(x), output_type="pt", show_progress_bar=False
                ),
                args.repeat,
                args.warmup,
                device,
                None,
            )
            row["perception"] = stage_record(m, b) | _first_call(m, statistics.median(m.seconds))
            m = measure(
                lambda i, x=x, seeds=seeds: pipe.create(
                    x,
                    steps=args.steps,
                    seed=seeds,
                    processing_resolution=res,
                    batch_size=len(x),
                    output_type="pt",
                    show_progress_bar=False,
                ),
                args.repeat,
                args.warmup,
                device,
                None,
            )
        except torch.cuda.OutOfMemoryError:
            log(f"  batch {b}: out of GPU memory; larger batches skipped")
            report["batched"][str(b)] = {"fits": False}
            torch.cuda.empty_cache()
            break
        measured = statistics.median(m.seconds)
        full = extrapolate(measured, unet["pass_s"], args.steps, args.full_steps)
        row["creation"] = stage_record(m, b, per_call_s=full) | _first_call(m, measured)
        row["creation"].update(measured_sec_per_call=measured)
        rate = b * flops_1 / unet["pass_s"]
        row["unet"] = unet | {"flops_per_s": rate, "fraction_of_matmul": rate / peak}
        report["memory_method"] = m.memory_method
        row["fits"] = True
        report["batched"][str(b)] = row
        log(
            f"  batch {b}: perception {row['perception']['images_per_s']:.2f} images/s, "
            f"creation {row['creation']['images_per_s']:.4f} samples/s, "
            f"UNet {_rate(rate)}FLOP/s = {rate / peak:.2f} of the {peak_key} matmul rate"
        )
    report["config"]["loadavg_end"] = loadavg()
    report.setdefault("memory_method", "")
    report["wall_seconds"] = time.perf_counter() - wall0
    return report


def _rate(flops_per_s: float) -> str:
    return f"{flops_per_s / 1e12:.1f} T" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:.1f} G"


def format_batched(report: dict) -> str:
    c = report["config"]
    full = f"{c['steps_full']} steps" + (
        f", extrapolated from {c['steps_measured']} measured with the UNet pass of the row"
        if c["steps_measured"] < c["steps_full"]
        else ""
    )
    mm = report["matmul"]
    lines = [
        f"diff2in1 bench --batched  {c['backbone']} / {c['head']} head, {c['resolution']}x{c['resolution']}, "
        f"{c['dtype']}, {c['device']} ({c['device_name']}, {c.get('cpu_capability', '?')}), "
        f"{speed_knobs.describe(c['speed'])}, threads {c['threads']}, "
        f"repeat {c['repeat']} (+{c['warmup']} untimed)",
        f"load average at start {c['loadavg_start']}, at end {c['loadavg_end']}; "
        f"wall {report['wall_seconds']:.0f} s",
        "",
        f"{'batch':>5} {'perception img/s':>17} {'s/image':>8} {'peak MB':>8} "
        f"{'creation samples/s':>19} {'s/sample':>9} {'peak MB':>8} {'UNet FLOP/s':>12} {'of matmul':>9} "
        f"{'1st call s':>10}",
    ]
    for b, r in report["batched"].items():
        if not r["fits"]:
            lines.append(f"{b:>5} does not fit in memory")
            continue
        p, cr, u = r["perception"], r["creation"], r["unet"]
        first = (
            f"{p['first_call_s']:.1f}/{cr['first_call_s']:.1f}"
            if "first_call_s" in p and "first_call_s" in cr
            else "-"
        )
        lines.append(
            f"{b:>5} {p['images_per_s']:>17.2f} {_fmt_s(p['sec_per_image']):>8} {p['peak_mb']:>8.0f} "
            f"{cr['images_per_s']:>19.4f} {_fmt_s(cr['sec_per_image']):>9} {cr['peak_mb']:>8.0f} "
            f"{_rate(u['flops_per_s']):>12} {u['fraction_of_matmul']:>9.2f} {first:>10}"
        )
    lines += [
        f"perception: pipe(images, batch_size=B); creation: pipe.create(images, batch_size=B), {full}",
        f"UNet: {report['unet_gflop_per_image']:.1f} GFLOP per image per pass, B latents, median of "
        f"separately timed passes; matmul ({mm['how']}): {mm['dtype']} {_rate(mm['flops_per_s'])}FLOP/s",
        "1st call s: the first (untimed) perception / creation call; with --compile it holds the compile",
        f"memory: {report['memory_method']}, absolute peak per row",
    ]
    if c.get("precision_emulated"):
        lines.append(f"note: {c['precision_emulated']}")
    return "\n".join(lines)
