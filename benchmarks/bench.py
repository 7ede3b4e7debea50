"""Speed and memory of every stage at real scale: `python benchmarks/bench.py --help`.

Not part of the installed package: run it from a checkout, with the package installed.

Stages, each timed as the package runs it (the stage code itself is called, not a copy):
  taps               VAE encode + one UNet pass with the feature taps (`Backbone.perceive`)
  warmup_step        one warm-up training step: features (no grad) + head (train) + loss + backward + Adam
  predict            `NormalPredictor` on a batch
  predict_three_heads  `TaskPredictor`: one backbone pass read by the normal, depth and segmentation
                     heads (the dense heads at the preset of the normal head); reported also as a
                     ratio to `predict` (normals alone)
  create_sample      one created sample (`creation.create_samples`): DDIM + VAE decode + head; timed
                     with `--steps` DDIM steps and, when that is fewer than `--full-steps` (50), the
                     full-length time extrapolated with the measured time of one UNet pass (said so)
  self_improve_step  features + creation head (eval, no grad) + exploitation training step
and, on precomputed features, the head alone (head_warmup_step, head_predict).

Baseline column: `bench_baseline.py` (next to this file), a straightforward fp32 implementation of
docs/method.md sections 2-4 with the research code's choices, sharing the head's parameters;
measured in the same run for the warm-up step and prediction (end to end and head only), reported
as speed-up = baseline / ours.
With `--dtype bf16` ours runs as the stages do under `--mixed-precision bf16` (backbone stored in
bf16, head under autocast with fp32 weights); the baseline stays fp32, on its own fp32 copy of the
same weights.

FLOPs: `torch.utils.flop_counter.FlopCounterMode` on one forward of a meta-device copy of each
module (FLOPs depend only on shapes; the copy costs no time and no memory). torch's counter has
no formula for the CPU flash-attention kernel, so one is added (the same as its other SDPA ops).
The UNet's achieved FLOP/s uses the median UNet pass time measured during the `taps` stage and is
printed as a fraction of this run's dense matmul FLOP/s (2048x2048 torch.mm, fp32 and bf16).

Memory: CUDA: `torch.cuda.max_memory_allocated`. CPU: the process's peak resident set (Linux
VmHWM, reset per stage through /proc/self/clear_refs; otherwise psutil sampled every 5 ms, or
ru_maxrss), as the absolute peak and as the rise above the resident set at the stage's start.

`--batched 1,8,32` measures instead the throughput of the user's batched calls at each batch size
B: perception images/s (`pipe(images, batch_size=B)`) and creation samples/s (`pipe.create(images,
batch_size=B)`, `--steps` measured and extrapolated to `--full-steps` as above), with each size's
peak memory; a size that does not fit in GPU memory is reported as such and larger ones skipped.

`main(argv)` is the entry point. `--smoke` is the few-second CI form.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # `bench_baseline`, `bench_batched`, `speed_knobs`: siblings, imported by name
    sys.path.insert(0, _HERE)

import speed_knobs  # noqa: E402

STAGES = (
    "taps",
    "warmup_step",
    "warmup_step_cached",
    "predict",
    "predict_ensemble4",
    "predict_three_heads",
    "create_sample",
    "self_improve_step",
)
HEAD_STAGES = ("head_warmup_step", "head_predict")
BASELINE_STAGES = ("warmup_step", "predict", "head_warmup_step", "head_predict")
LABELS = {
    "taps": "feature taps (VAE enc + UNet)",
    "warmup_step": "warm-up training step",
    "warmup_step_cached": "  same, VAE posterior cached",
    "predict": "prediction",
    "predict_ensemble4": "  same, ensemble_size=4",
    "predict_three_heads": "  same, + depth + segmentation heads",
    "create_sample": "created sample",
    "self_improve_step": "self-improving step",
    "head_warmup_step": "  head only: warm-up step",
    "head_predict": "  head only: prediction",
}
SEED = 42
CAPTION = "a photo of a living room with a sofa and a table"


# ------------------------------------------------------------------ small helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_fields(device: torch.device, amp: torch.dtype | None) -> dict:
    """The device's name, the CPU's vector instructions (torch's dispatch level) and, where the run's
    reduced precision is emulated by this CPU, why: its rates then say nothing of a CPU that has it."""
    from diff2in1.devices import emulated_precision

    return {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "precision_emulated": emulated_precision(device, amp) if amp is not None else None,
    }


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def extrapolate(measured_s: float, unet_pass_s: float, measured_steps: int, full_steps: int) -> float:
    """Time of a `full_steps` DDIM run from a `measured_steps` one: each extra step is one UNet pass
    (the DDIM update itself is a few element-wise ops)."""
    return measured_s + max(0, full_steps - measured_steps) * unet_pass_s


class Autocast(nn.Module):
    """Runs a head under autocast and hands back fp32 outputs (what accelerate does to a prepared model)."""

    def __init__(self, module: nn.Module, device_type: str, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None):
            out = self.module(*args, **kwargs)
        if self.dtype is None:
            return out
        return dataclasses.replace(
            out,
            normal=out.normal.float(),
            kappa=out.kappa.float(),
            coarse=None if out.coarse is None else out.coarse.float(),
            point_preds=[p.float() for p in out.point_preds],
        )


# ------------------------------------------------------------------ memory
def _rss_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(ImportError):
        import psutil

        return psutil.Process().memory_info().rss
    return None


def _hwm_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Peak memory over a block: `peak_mb` (absolute) and `delta_mb` (above the level at entry)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""
        self.peak_mb = self.delta_mb = float("nan")
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._max = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        self._start = _rss_bytes() or 0
        if _reset_hwm() and _hwm_bytes() is not None:
            self.method = "VmHWM (peak RSS, reset per stage)"
            return self
        try:
            import psutil
        except ImportError:
            self.method = "ru_maxrss (process-lifetime peak RSS)"
            return self
        proc = psutil.Process()
        self._max = self._start

        def sample() -> None:
            while not self._stop.wait(0.005):
                self._max = max(self._max, proc.memory_info().rss)

        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()
        self.method = "psutil RSS sampled every 5 ms"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            peak = max(self._max, _rss_bytes() or 0)
        elif self.method.startswith("VmHWM"):
            peak = _hwm_bytes() or 0
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
                1 if sys.platform == "darwin" else 1024
            )
        self.peak_mb = peak / 2**20
        self.delta_mb = max(0, peak - self._start) / 2**20


# ------------------------------------------------------------------ module timers
class ModuleTimer:
    """Wall time of every forward of some modules (forward pre/post hooks; CUDA-synchronised)."""

    def __init__(self, modules: dict[str, nn.Module], device: torch.device) -> None:
        self.device = device
        self.times: dict[str, list[float]] = {name: [] for name in modules}
        self._t0: dict[str, float] = {}
        self._handles = []
        for name, m in modules.items():
            self._handles.append(m.register_forward_pre_hook(self._pre(name)))
            self._handles.append(m.register_forward_hook(self._post(name)))

    def _pre(self, name: str):
        def hook(*_):
            sync(self.device)
            self._t0[name] = time.perf_counter()

        return hook

    def _post(self, name: str):
        def hook(*_):
            sync(self.device)
            self.times[name].append(time.perf_counter() - self._t0.pop(name))

        return hook

    def reset(self) -> None:
        for v in self.times.values():
            v.clear()

    def snapshot(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self.times.items()}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


# ------------------------------------------------------------------ FLOPs
def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter():
    """FlopCounterMode that also counts the CPU flash-attention kernel (missing from torch's table)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _cpu_sdpa_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(fn: Callable[[], object]) -> int:
    with flop_counter() as fc:
        fn()
    return int(fc.get_total_flops())


def unet_forward_flops(unet_config, batch: int, resolution: int) -> int:
    """Forward FLOPs of one UNet pass over `batch` latents, counted on a meta-device copy (free)."""
    from diffusers import UNet2DConditionModel

    lat = resolution // 8
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        z = torch.randn(batch, unet.config.in_channels, lat, lat)
        cond = torch.randn(batch, 77, unet.config.cross_attention_dim)
        t = torch.zeros(batch, dtype=torch.long)
    with torch.no_grad():
        return count_flops(lambda: unet(z, t, encoder_hidden_states=cond))


def model_flops(backbone, head, batch: int, resolution: int) -> dict[str, int]:
    """Forward FLOPs of one call, at this batch and resolution, on meta-device copies (free)."""
    from diffusers import AutoencoderKL

    from diff2in1.heads import NormalHead
    from diff2in1.losses import head_loss
    from diff2in1.taps import TapFeatures

    lat = resolution // 8
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(backbone.vae.config)
        mhead = NormalHead.from_head_config(head.widths)
        img = torch.randn(batch, 3, resolution, resolution)
        lz = torch.randn(batch, vae.config.latent_channels, lat, lat)
        c = head.widths.in_channels
        feats = TapFeatures(
            *(torch.randn(batch, ch, lat // s, lat // s) for ch, s in zip(c, (8, 4, 2, 1), strict=True))
        )
        gt = torch.randn(batch, 3, resolution, resolution)
        mask = torch.ones(batch, 1, resolution, resolution, dtype=torch.bool)
    out = {"unet_forward": unet_forward_flops(backbone.unet.config, batch, resolution)}
    with torch.no_grad():
        out["vae_encode"] = count_flops(lambda: vae.encode(img))
        out["vae_decode"] = count_flops(lambda: vae.decode(lz))
        out["head_eval"] = count_flops(lambda: mhead.eval()(feats, image_size=(resolution, resolution)))

    def train_step() -> None:
        o = mhead.train()(feats, image_size=(resolution, resolution), gt_mask=mask)
        head_loss(o, gt, mask).backward()

    out["head_train_fwd_bwd"] = count_flops(train_step)
    return out


def make_dense_heads(backbone, preset: str, device: torch.device) -> list[nn.Module]:
    """A depth and a segmentation head (40 classes, as NYUD-MT) of `preset` widths, random weights."""
    from diff2in1.data.labels import nyu40_classes
    from diff2in1.heads import build_head

    torch.manual_seed(1)
    return [
        build_head(preset, backbone, task="depth").to(device).eval(),
        build_head(preset, backbone, task="segmentation", class_list=nyu40_classes()).to(device).eval(),
    ]


def dense_heads_flops(backbone, preset: str, batch: int, resolution: int) -> int:
    """Forward FLOPs of the depth and segmentation heads of one call, on meta-device copies."""
    from diff2in1.data.labels import nyu40_classes
    from diff2in1.heads import DenseHead
    from diff2in1.heads.dense_head import dense_head_config
    from diff2in1.taps import TapFeatures

    lat = resolution // 8
    c = tuple(backbone.tap_channels[g] for g in ("low", "mid", "high", "highest"))
    names = list(nyu40_classes().names)
    with torch.device("meta"):
        heads = [
            DenseHead(**dense_head_config("depth", preset, c)),
            DenseHead(**dense_head_config("segmentation", preset, c), class_names=names),
        ]
        feats = TapFeatures(
            *(torch.randn(batch, ch, lat // s, lat // s) for ch, s in zip(c, (8, 4, 2, 1), strict=True))
        )
    with torch.no_grad():
        size = (resolution, resolution)
        return sum(count_flops(lambda h=h: h.eval()(feats, image_size=size)) for h in heads)


def matmul_flops_per_s(
    dtype: torch.dtype, device: torch.device, n: int = 2048, seconds: float = 0.6
) -> float:
    """Best dense matmul rate over a few timed rounds (n x n times n x n, 2 n^3 FLOPs each)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    sync(device)
    best, reps, spent = 0.0, 1, 0.0
    while spent < seconds:
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        sync(device)
        dt = time.perf_counter() - t0
        spent += dt
        best = max(best, 2 * n**3 * reps / dt)
        reps = min(reps * 2, 64) if dt < 0.1 else reps
    return best


# ------------------------------------------------------------------ the benchmark
@dataclasses.dataclass
class Measurement:
    seconds: list[float]
    peak_mb: float
    delta_mb: float
    memory_method: str
    passes: dict[str, list[float]]
    warmup_seconds: list[float] = dataclasses.field(default_factory=list)


def measure(
    fn: Callable[[int], object],
    repeat: int,
    warmup: int,
    device: torch.device,
    timer: ModuleTimer | None,
) -> Measurement:
    """`warmup` untimed calls (their times kept: the first holds any compilation), then `repeat` timed
    calls (the argument is the call number). Without a `timer` no module is synchronised per call."""
    warm = []
    for i in range(warmup):
        sync(device)
        t0 = time.perf_counter()
        fn(-1 - i)
        sync(device)
        warm.append(time.perf_counter() - t0)
    if timer is not None:
        timer.reset()
    seconds = []
    with PeakMemory(device) as mem:
        for i in range(repeat):
            sync(device)
            t0 = time.perf_counter()
            fn(i)
            sync(device)
            seconds.append(time.perf_counter() - t0)
    passes = timer.snapshot() if timer is not None else {}
    return Measurement(seconds, mem.peak_mb, mem.delta_mb, mem.method, passes, warm)


def stage_record(m: Measurement, batch: int, per_call_s: float | None = None, note: str = "") -> dict:
    per_call = statistics.median(m.seconds) if per_call_s is None else per_call_s
    rec = {
        "seconds": [round(s, 4) for s in m.seconds],
        "sec_per_call": per_call,
        "sec_per_image": per_call / batch,
        "images_per_s": batch / per_call,
        "peak_mb": round(m.peak_mb, 1),
        "peak_delta_mb": round(m.delta_mb, 1),
    }
    calls = len(m.seconds)
    rec["module_seconds_per_call"] = {k: sum(v) / calls for k, v in m.passes.items() if v}
    rec["module_calls_per_call"] = {k: len(v) / calls for k, v in m.passes.items() if v}
    if note:
        rec["note"] = note
    return rec


def make_batch(batch: int, resolution: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(SEED)
    images = torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1
    normal = F.normalize(torch.randn(batch, 3, resolution, resolution, generator=g), dim=1)
    mask = torch.ones(batch, 1, resolution, resolution, dtype=torch.bool)
    mask[..., : resolution // 10, :] = False  # some invalid ground truth, as real data has
    return {
        "image": images.to(device),
        "normal": normal.to(device),
        "mask": mask.to(device),
        "index": list(range(batch)),
        "labelled": [False] * batch,  # self-improving step: synthetic samples, labelled by C
    }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda but no CUDA device is available")
    return torch.device(name)


def run_benchmark(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    from bench_baseline import (
        BaselineHead,
        baseline_loss,
        baseline_predict,
        baseline_warmup_loss,
        tap_splits,
    )
    from diff2in1.backbone import ddim_inference_steps, load_backbone
    from diff2in1.config import CreateConfig, WarmupConfig
    from diff2in1.creation import create_samples
    from diff2in1.errors import InputError
    from diff2in1.heads import HeadConfig, NormalHead
    from diff2in1.inference.predictor import NormalPredictor, TaskPredictor
    from diff2in1.losses import head_loss
    from diff2in1.stages.self_improve import mixed_targets
    from diff2in1.stages.warmup import StepCaches, perception_step
    from diff2in1.training.feature_cache import PosteriorCache
    from diff2in1.training.loop import mix_seed

    wall0 = time.perf_counter()
    device = resolve_device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    amp = torch.bfloat16 if args.dtype == "bf16" else None
    res, bsz = args.resolution, args.batch
    report: dict = {
        "config": {
            "backbone": args.backbone,
            "head": "small" if args.smoke else "reference",
            "resolution": res,
            "batch": bsz,
            "dtype": args.dtype,
            "compile": args.compile,
            "steps_measured": args.steps,
            "steps_full": args.full_steps,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "smoke": args.smoke,
            "device": str(device),
            **machine_fields(device, amp),
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "loadavg_start": loadavg(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
    }
    log(
        f"bench: {args.backbone}, {res}x{res}, batch {bsz}, {args.dtype}, {device} "
        f"({report['config']['device_name']}), threads {torch.get_num_threads()}, "
        f"load average at start {report['config']['loadavg_start']}"
    )

    # -- machine peak first (nothing big allocated yet)
    peaks = {"fp32": matmul_flops_per_s(torch.float32, device)}
    if args.dtype == "bf16" or not args.smoke:
        peaks["bf16"] = matmul_flops_per_s(torch.bfloat16, device)

    t0 = time.perf_counter()
    # Under bf16 the frozen backbone is stored in bf16, as the stages do (`weights_dtype`).
    backbone = load_backbone(args.backbone, device=device, seed=0, dtype=amp or torch.float32)
    torch.manual_seed(0)
    in_ch = tuple(backbone.tap_channels[g] for g in ("low", "mid", "high", "highest"))
    cfg = (
        HeadConfig.small(in_ch)
        if args.smoke
        else dataclasses.replace(HeadConfig.reference(), in_channels=in_ch)
    )
    head = NormalHead.from_head_config(cfg).to(device)
    log(f"loaded backbone + head in {time.perf_counter() - t0:.1f} s")
    try:  # refuse a step count the DDIM scheduler cannot step now, not after timing the other stages
        n_train = backbone.scheduler.config.num_train_timesteps
        ddim_inference_steps(n_train, CreateConfig().t_start, args.steps)
    except InputError as e:
        raise SystemExit(f"bench: --steps: {e}") from None
    report["config"]["speed"] = speed_knobs.apply(args, backbone, device)
    flops = model_flops(backbone, head, bsz, res)
    preset = "small" if args.smoke else "reference"
    flops["dense_heads_eval"] = dense_heads_flops(backbone, preset, bsz, res)
    timer = ModuleTimer(
        {"unet": backbone.unet, "vae_encoder": backbone.vae.encoder, "vae_decoder": backbone.vae.decoder},
        device,
    )
    batch = make_batch(bsz, res, device)
    images, size = batch["image"], (res, res)
    captions = [CAPTION] * bsz
    dev = device.type

    def autocast():
        return torch.autocast(dev, dtype=amp, enabled=amp is not None)

    def points(step: int) -> list[int]:  # per-image seeds of the head's random points, as the stages
        return [mix_seed(SEED, step, j, 1) for j in range(bsz)]

    wcfg = WarmupConfig(seed=SEED)
    head_call = Autocast(head, dev, amp)
    opt = torch.optim.Adam(head.parameters(), lr=wcfg.lr)
    stages: dict[str, dict] = {}
    kept: dict[str, object] = {}

    def run(name: str, fn: Callable[[int], object], **kw) -> Measurement:
        log(f"  {name} ...")
        m = measure(fn, args.repeat, args.warmup, device, timer)
        stages[name] = stage_record(m, bsz, **kw)
        log(f"  {name}: {stages[name]['sec_per_image']:.3f} s/image")
        return m

    # (1) taps
    def taps(i: int) -> None:
        with autocast():
            kept["feats"] = backbone.perceive(images, seeds=[mix_seed(SEED, i, j) for j in range(bsz)])

    m_taps = run("taps", taps)

    # (2) warm-up step
    def warm(i: int) -> None:
        head.train()
        loss = perception_step(backbone, head_call, batch, wcfg, i, autocast, StepCaches())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    run("warmup_step", warm)

    # (2b) the same with the training default: each image's VAE posterior kept after first use
    cached = StepCaches(posterior=PosteriorCache())
    cached.posterior(backbone, images, [int(j) for j in batch["index"]])

    def warm_cached(i: int) -> None:
        head.train()
        loss = perception_step(backbone, head_call, batch, wcfg, i, autocast, cached)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    run("warmup_step_cached", warm_cached)

    # (3) prediction
    predictor = NormalPredictor(backbone, head, (res, res), seed=0, autocast_dtype=amp)
    run("predict", lambda i: predictor(images))
    # (3b) the pipeline's ensemble: 4 noise draws, 2 of them on the flipped image (2 VAE encodes)
    run("predict_ensemble4", lambda i: predictor.pipe.predict_model_space(images, seed=0, ensemble_size=4))

    # (3c) one backbone pass, three heads (normals + depth + segmentation), against normals alone
    dense_heads = make_dense_heads(backbone, preset, device)
    three = TaskPredictor(backbone, [head, *dense_heads], (res, res), seed=0, autocast_dtype=amp)
    run("predict_three_heads", lambda i: three(images))
    ratio = stages["predict_three_heads"]["sec_per_call"] / stages["predict"]["sec_per_call"]
    report["three_heads_ratio"] = ratio
    log(f"  three heads / normals alone: {report['three_heads_ratio']:.2f}x")

    # (4) one created sample, `--steps` DDIM steps; extrapolated to `--full-steps`
    ccfg = CreateConfig(steps=args.steps, mixed_precision=args.dtype if amp is not None else "no")
    m_create = measure(
        lambda i: create_samples(
            backbone,
            head,
            images,
            captions,
            [mix_seed(SEED, 7, i, j) for j in range(bsz)],
            ccfg.t_start,
            ccfg.steps,
            ccfg.guidance,
            autocast=amp,
        ),
        args.repeat,
        args.warmup,
        device,
        timer,
    )
    unet_pass = statistics.median(m_create.passes["unet"]) if m_create.passes["unet"] else 0.0
    measured = statistics.median(m_create.seconds)
    full = extrapolate(measured, unet_pass, args.steps, args.full_steps)
    note = (
        f"{args.full_steps} steps extrapolated from a measured {args.steps}-step run "
        f"({measured:.3f} s) + {args.full_steps - args.steps} x the median UNet pass ({unet_pass:.3f} s)"
        if args.steps < args.full_steps
        else f"{args.steps} DDIM steps measured"
    )
    stages["create_sample"] = stage_record(m_create, bsz, per_call_s=full, note=note)
    stages["create_sample"].update(
        steps_measured=args.steps,
        steps_full=args.full_steps,
        extrapolated=args.steps < args.full_steps,
        measured_sec_per_call=measured,
    )
    log(f"  create_sample: {stages['create_sample']['sec_per_image']:.3f} s/image ({note})")

    # (5) self-improving step: exploitation = a copy of the head, creation = another (no grad)
    def self_improve_stage() -> None:  # the copies and their optimizer are freed on return
        exploitation = copy.deepcopy(head)
        creation = copy.deepcopy(head).requires_grad_(False)
        e_call, c_call = Autocast(exploitation, dev, amp), Autocast(creation, dev, amp)
        e_opt = torch.optim.Adam(exploitation.parameters(), lr=wcfg.lr)

        def step(i: int) -> None:
            with torch.no_grad(), autocast():
                feats = backbone.perceive(images, seeds=[mix_seed(SEED, i, j) for j in range(bsz)])
            feats = feats.to(torch.float32)
            target, mask, _ = mixed_targets(c_call, feats, size, batch)
            out = e_call.train()(feats, image_size=size, gt_mask=mask, point_seeds=points(i))
            head_loss(out, target, mask).backward()
            e_opt.step()
            e_opt.zero_grad(set_to_none=True)

        run("self_improve_step", step)

    self_improve_stage()

    # head only, on the taps' features
    feats = kept["feats"].to(torch.float32)

    def head_warm(i: int) -> None:
        out = head_call.train()(feats, image_size=size, gt_mask=batch["mask"], point_seeds=points(i))
        head_loss(out, batch["normal"], batch["mask"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def head_pred(i: int) -> None:
        with torch.no_grad():  # as NormalPredictor
            head_call.eval()(feats, image_size=size)

    run("head_warmup_step", head_warm)
    run("head_predict", head_pred)

    # baseline (research choices, fp32), same parameters
    baseline: dict[str, dict] = {}
    # The baseline is fp32 throughout: under bf16 it gets its own fp32 copy of the same weights.
    fp32_backbone = backbone if amp is None else None
    if amp is not None and (args.baseline or args.check):
        fp32_backbone = load_backbone(args.backbone, device=device, seed=0)
    if args.baseline:
        bhead = BaselineHead(head, tap_splits(fp32_backbone))
        b_opt = torch.optim.Adam(head.parameters(), lr=wcfg.lr)

        def b_warm(i: int) -> None:
            baseline_warmup_loss(fp32_backbone, bhead, batch, SEED, i).backward()
            b_opt.step()
            b_opt.zero_grad(set_to_none=True)

        def b_head_warm(i: int) -> None:
            out = bhead.train()(feats, image_size=size, gt_mask=batch["mask"], point_seeds=points(i))
            baseline_loss(out, batch["normal"], batch["mask"]).backward()
            b_opt.step()
            b_opt.zero_grad(set_to_none=True)

        def b_head_pred(i: int) -> None:
            with torch.no_grad():
                bhead.eval()(feats, image_size=size)

        for name, fn in (
            ("warmup_step", b_warm),
            ("predict", lambda i: baseline_predict(fp32_backbone, bhead, images)),
            ("head_warmup_step", b_head_warm),
            ("head_predict", b_head_pred),
        ):
            log(f"  baseline {name} ...")
            baseline[name] = stage_record(measure(fn, args.repeat, args.warmup, device, timer), bsz)
        report["speedup"] = {k: baseline[k]["sec_per_call"] / stages[k]["sec_per_call"] for k in baseline}
    timer.remove()
    report["stages"] = stages
    report["baseline"] = baseline

    # FLOP rates
    unet_taps = statistics.median(m_taps.passes["unet"]) if m_taps.passes["unet"] else float("nan")
    rate = flops["unet_forward"] / unet_taps
    peak_key = "bf16" if amp is not None else "fp32"
    report["flops"] = {
        "method": "torch.utils.flop_counter.FlopCounterMode, one forward on meta-device copies "
        "(+ CPU flash-attention formula); 1 multiply-add = 2 FLOPs",
        "per_call": flops,
        "unet_pass_seconds": unet_taps,
        "unet_flops_per_s": rate,
        "matmul_flops_per_s": peaks,
        "matmul": f"torch.mm {2048}x{2048}, best of several rounds, same run",
        "peak_dtype": peak_key,
        "unet_fraction_of_matmul_peak": rate / peaks[peak_key],
    }
    stage_flops = {
        "taps": flops["vae_encode"] + flops["unet_forward"],
        "warmup_step": flops["vae_encode"] + flops["unet_forward"] + flops["head_train_fwd_bwd"],
        "warmup_step_cached": flops["unet_forward"] + flops["head_train_fwd_bwd"],
        "predict": flops["vae_encode"] + flops["unet_forward"] + flops["head_eval"],
        "predict_ensemble4": 2 * flops["vae_encode"] + 4 * (flops["unet_forward"] + flops["head_eval"]),
        "predict_three_heads": flops["vae_encode"]
        + flops["unet_forward"]
        + flops["head_eval"]
        + flops["dense_heads_eval"],
        "create_sample": flops["vae_encode"]
        + args.full_steps * flops["unet_forward"]
        + flops["vae_decode"]
        + flops["head_eval"],
        "self_improve_step": flops["vae_encode"]
        + flops["unet_forward"]
        + flops["head_eval"]
        + flops["head_train_fwd_bwd"],
        "head_warmup_step": flops["head_train_fwd_bwd"],
        "head_predict": flops["head_eval"],
    }
    for k, f in stage_flops.items():
        stages[k]["flops_per_call"] = f
        stages[k]["achieved_flops_per_s"] = f / stages[k]["sec_per_call"]

    if args.check:
        log("  equivalence check (baseline vs ours) ...")
        report["equivalence"] = check_equivalence(fp32_backbone, head, make_batch(max(bsz, 2), res, device))
    report["memory_method"] = m_taps.memory_method
    report["config"]["loadavg_end"] = loadavg()
    report["wall_seconds"] = time.perf_counter() - wall0
    return report


# ------------------------------------------------------------------ equivalence (smoke / --check)
def _max_rel(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-12))


def check_equivalence(backbone, head, batch: dict, seed: int = SEED) -> dict[str, float]:
    """Max relative differences, baseline vs ours, with the same parameters and seeds: the prediction
    (normal, kappa) and one warm-up step (loss, every parameter's gradient, the buffers the step
    updates). Refinement samples every pixel here (sampling_ratio 1), so the result does not hinge
    on the order of near-tied uncertainties, which float rounding may swap. Give it >= 2 images: with
    one image and a 1x1 coarsest map (64x64 input), batch norm would normalise rounding noise."""
    from bench_baseline import BaselineHead, baseline_predict, baseline_warmup_loss, tap_splits
    from diff2in1.config import WarmupConfig
    from diff2in1.inference.predictor import NormalPredictor
    from diff2in1.stages.warmup import StepCaches, perception_step

    head = copy.deepcopy(head).float()
    head.decoder.sampling_ratio = 1.0
    bhead = BaselineHead(head, tap_splits(backbone))
    images = batch["image"]
    out: dict[str, float] = {}
    ours = NormalPredictor(backbone, head, tuple(images.shape[-2:]), seed=0)(images)
    ref_n, ref_k = baseline_predict(backbone, bhead, images, seed=0)
    out["predict_normal"] = _max_rel(ours.normal, ref_n)
    out["predict_kappa"] = _max_rel(ours.kappa, ref_k)

    state = copy.deepcopy(head.state_dict())

    def grads_and_buffers(loss: Tensor) -> tuple[float, dict[str, Tensor]]:
        loss.backward()
        value = float(loss.detach())
        g = {n: p.grad.detach().clone() for n, p in head.named_parameters() if p.grad is not None}
        g.update({f"buffer:{n}": b.detach().clone() for n, b in head.named_buffers()})
        head.zero_grad(set_to_none=True)
        return value, g

    nullctx = contextlib.nullcontext
    head.train()
    loss_a, ga = grads_and_buffers(
        perception_step(backbone, head, batch, WarmupConfig(seed=seed), 3, nullctx, StepCaches())
    )
    head.load_state_dict(state)
    loss_b, gb = grads_and_buffers(baseline_warmup_loss(backbone, bhead, batch, seed, 3))
    out["warmup_loss"] = abs(loss_a - loss_b) / max(abs(loss_b), 1e-12)
    # Gradients relative to the largest gradient: a bias followed by batch norm has a true gradient of
    # zero, so its computed gradient is rounding noise, and a per-tensor ratio would be meaningless.
    grads = [k for k in gb if k in ga and not k.startswith("buffer:")]
    scale = max(float(gb[k].abs().max()) for k in grads)
    out["warmup_grads"] = max(float((ga[k] - gb[k]).abs().max()) for k in grads) / max(scale, 1e-12)
    out["warmup_buffers"] = max(_max_rel(ga[k], gb[k]) for k in gb if k.startswith("buffer:"))
    out["grad_keys_matched"] = float(len(set(ga) & set(gb)) == len(ga) == len(gb))
    return out


# ------------------------------------------------------------------ output
def _fmt_s(v: float) -> str:
    return f"{v:.3f}" if v < 100 else f"{v:.1f}"


def format_table(report: dict) -> str:
    c = report["config"]
    st, base, sp = report["stages"], report.get("baseline", {}), report.get("speedup", {})
    lines = [
        f"diff2in1 bench  {c['backbone']} / {c['head']} head, {c['resolution']}x{c['resolution']}, batch "
        f"{c['batch']}, {c['dtype']}, {speed_knobs.describe(c.get('speed', {}))}, {c['device']} "
        f"({c['device_name']}, {c.get('cpu_capability', '?')}), threads {c['threads']}, "
        f"repeat {c['repeat']} (+{c['warmup']} untimed)",
        f"load average at start {c['loadavg_start']}, at end {c['loadavg_end']}; "
        f"wall {report['wall_seconds']:.0f} s",
        "",
        f"{'stage':34} {'s/image':>9} {'images/s':>9} {'GFLOP/s':>8} {'peak MB':>9} {'+MB':>8} "
        f"{'baseline s/img':>14} {'speed-up':>8}",
    ]
    for k in (*STAGES, *HEAD_STAGES):
        r = st[k]
        label = LABELS[k] + (
            f" ({c['steps_full']} st.)*" if k == "create_sample" and r.get("extrapolated") else ""
        )
        if k == "create_sample" and not r.get("extrapolated"):
            label += f" ({c['steps_measured']} st.)"
        b = f"{_fmt_s(base[k]['sec_per_image']):>14} {sp[k]:>7.2f}x" if k in base else ""
        lines.append(
            f"{label:34} {_fmt_s(r['sec_per_image']):>9} {r['images_per_s']:>9.4f} "
            f"{r['achieved_flops_per_s'] / 1e9:>8.1f} {r['peak_mb']:>9.0f} {r['peak_delta_mb']:>8.0f} {b}"
        )
    if st["create_sample"].get("extrapolated"):
        lines.append(f"* {st['create_sample']['note']}")
    if "three_heads_ratio" in report:
        lines.append(
            f"one backbone pass with normal + depth + segmentation heads / normals alone: "
            f"{report['three_heads_ratio']:.2f}x the prediction time"
        )
    f = report["flops"]
    pk = f["matmul_flops_per_s"]
    lines += [
        "",
        f"UNet pass: {f['per_call']['unet_forward'] / 1e9:.1f} GFLOP (batch {c['batch']}), "
        f"{f['unet_pass_seconds']:.3f} s -> {f['unet_flops_per_s'] / 1e9:.1f} GFLOP/s = "
        f"{f['unet_fraction_of_matmul_peak']:.2f} of the measured {f['peak_dtype']} matmul rate"
        + (" (emulated on this CPU: not a figure of a CPU with bf16)" if c.get("precision_emulated") else ""),
        "matmul (2048x2048 torch.mm): " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in pk.items()),
        "other forward FLOPs per call: "
        + ", ".join(f"{k} {v / 1e9:.1f} G" for k, v in f["per_call"].items() if k != "unet_forward"),
        "time in modules per call (s): "
        + "; ".join(
            f"{k}: " + ", ".join(f"{m} {v:.2f}" for m, v in st[k]["module_seconds_per_call"].items())
            for k in STAGES
        ),
        f"memory: {report['memory_method']}; 'peak MB' absolute, '+MB' above the stage's start",
        "baseline = benchmarks/bench_baseline.py (fp32, research choices, same weights); "
        "speed-up = baseline / ours",
    ]
    if "equivalence" in report:
        lines.append(
            "baseline vs ours, max relative difference: "
            + ", ".join(f"{k} {v:.1e}" for k, v in report["equivalence"].items() if k != "grad_keys_matched")
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/bench.py",
        description="Time and memory of each stage at real scale (random SD v1.5 weights, no download).",
    )
    p.add_argument("--backbone", default="sd15", help="preset, diffusers folder or checkpoint (default sd15)")
    p.add_argument("--resolution", type=int, default=512, help="square input size, multiple of 64")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps measured for the created sample")
    p.add_argument("--full-steps", type=int, default=50, help="steps the created sample is reported for")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast")
    speed_knobs.add_arguments(p)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (0 = torch's default)")
    p.add_argument("--repeat", type=int, help="timed calls per stage, median reported (default 3; smoke 1)")
    p.add_argument(
        "--warmup",
        type=int,
        help="untimed calls per stage before timing (default 1; smoke 0); with --compile >= 1",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the baseline column")
    p.add_argument("--check", action="store_true", help="also compare baseline and ours numerically")
    p.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    p.add_argument(
        "--batched",
        metavar="SIZES",
        type=_sizes,
        help="instead of the stage table: images/s (perception) and samples/s (creation) of the "
        "pipeline's batched calls at these batch sizes, e.g. 1,8,32",
    )
    p.add_argument(
        "--head",
        choices=("small", "reference"),
        help="head widths (default: reference; small with --smoke)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds: tiny backbone, 64x64, small head, 1 repeat, 3 DDIM steps, with --check",
    )
    return p


def _sizes(text: str) -> list[int]:
    """argparse type: comma-separated batch sizes >= 1, e.g. "1,8,32"."""
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be integers >= 1, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.backbone, args.resolution = "tiny", 64
        args.steps, args.check = min(args.steps, 3), True  # 2 steps below t=600: no DDIM stride
    args.repeat = args.repeat if args.repeat is not None else (1 if args.smoke else 3)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.smoke else 1)
    if args.resolution % 64 or args.resolution <= 0:
        raise SystemExit(f"bench: --resolution {args.resolution} must be a positive multiple of 64")
    if not 0 < args.steps <= args.full_steps <= 600 or args.batch < 1 or args.repeat < 1 or args.warmup < 0:
        raise SystemExit("bench: need 0 < --steps <= --full-steps <= 600, --batch >= 1, --repeat >= 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.batched:
        from bench_batched import format_batched, run_batched

        report = run_batched(args, log=log)
        print(format_batched(report))
    else:
        report = run_benchmark(args, log=log)
        print(format_table(report))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    return 0


def _json_default(o) -> str:
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
