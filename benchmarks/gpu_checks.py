"""Checks of the GPU speed paths that a timing cannot show: `python benchmarks/gpu_checks.py --help`.

1. Host synchronisations in the DDIM loop: CUDA's sync debug mode counts every synchronising call
   during `Backbone.ddim_sample` at two step counts; equal counts mean no synchronisation per step.
2. Equal results: the pipeline's perception and creation with the speed knobs applied
   (`--compile` / `--compile-mode`, `--channels-last`, `--tf32`) against the plain path on the same
   weights and inputs, as the largest angle between normals (degrees), the relative difference of
   kappa and the largest difference of the created image (in [0, 1]).

Prints one JSON report (also written with `--json PATH`). Runs on a CPU too (item 1 is then skipped),
which is how its code is kept working without a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import speed_knobs  # noqa: E402


def count_syncs(backbone, steps: int, batch: int, resolution: int) -> int:
    """Synchronising CUDA calls made by one `ddim_sample` of `steps` steps (sync debug mode 'warn')."""
    lat = resolution // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, lat, lat, generator=g).to(backbone.device, backbone.dtype)
    cond = backbone.empty_embedding(batch)
    backbone.ddim_sample(x, cond, steps=steps)  # allocations and kernels warmed
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            backbone.ddim_sample(x, cond, steps=steps)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def _outputs(pipe, images: torch.Tensor, resolution: int, steps: int) -> dict[str, torch.Tensor]:
    seen = pipe(
        images,
        processing_resolution=resolution,
        batch_size=len(images),
        output_type="pt",
        show_progress_bar=False,
    )
    made = pipe.create(
        images,
        steps=steps,
        seed=list(range(len(images))),
        processing_resolution=resolution,
        batch_size=len(images),
        output_type="pt",
        show_progress_bar=False,
    )
    return {
        "normals": seen.normals.float().cpu(),
        "kappa": seen.kappa.float().cpu(),
        "created": made.images.float().cpu(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/gpu_checks.py", description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="sd15", help="preset, diffusers folder or checkpoint")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=12, help="DDIM steps of the compared creation")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", metavar="PATH")
    speed_knobs.add_arguments(p)
    args = p.parse_args(argv)

    from diff2in1 import Diff2in1Pipeline
    from diff2in1.backbone import load_backbone
    from diff2in1.heads import HeadConfig, NormalHead

    device, dtype = torch.device(args.device), torch.bfloat16 if args.dtype == "bf16" else torch.float32
    report: dict = {"device": str(device), "dtype": args.dtype, "torch": torch.__version__}
    plain = load_backbone(args.backbone, device=device, seed=0, dtype=dtype)
    if device.type == "cuda":
        counts = {s: count_syncs(plain, s, 1, args.resolution) for s in (4, 12)}
        report["ddim_syncs"] = {
            "steps_4": counts[4],
            "steps_12": counts[12],
            "per_step": (counts[12] - counts[4]) / 8,
        }
    in_ch = tuple(plain.tap_channels[g] for g in ("low", "mid", "high", "highest"))
    torch.manual_seed(0)
    head = NormalHead.from_head_config(HeadConfig.small(in_ch))
    g = torch.Generator().manual_seed(1)
    images = (torch.rand(args.batch, 3, args.resolution, args.resolution, generator=g) * 2 - 1).to(device)
    ref = _outputs(
        Diff2in1Pipeline.from_backbone(plain, head.to(device)), images, args.resolution, args.steps
    )
    del plain
    tuned = load_backbone(args.backbone, device=device, seed=0, dtype=dtype)
    report["applied"] = speed_knobs.apply(args, tuned, device)
    pipe = Diff2in1Pipeline.from_backbone(tuned, head)
    t0 = time.perf_counter()
    out = _outputs(pipe, images, args.resolution, args.steps)
    report["first_call_s"] = time.perf_counter() - t0
    out = _outputs(pipe, images, args.resolution, args.steps)  # a second call: compiled graphs replayed
    cos = (ref["normals"] * out["normals"]).sum(1).clamp(-1, 1)
    report["normals_max_angle_deg"] = torch.rad2deg(torch.acos(cos)).max().item()
    report["normals_mean_angle_deg"] = torch.rad2deg(torch.acos(cos)).mean().item()
    report["kappa_max_rel"] = (
        ((out["kappa"] - ref["kappa"]).abs() / ref["kappa"].abs().clamp_min(1e-6)).max().item()
    )
    report["created_max_abs"] = (out["created"] - ref["created"]).abs().max().item()
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    finite = all(torch.isfinite(v).all() for v in out.values())
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
