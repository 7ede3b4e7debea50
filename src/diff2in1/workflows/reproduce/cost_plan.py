"""`reproduce --plan`: each stage's passes, FLOPs, and the time and memory to expect per machine."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ...config import (
    ReproduceConfig,
)
from ...data.layout import list_ids
from .multitask_data import eval_split, is_nyudmt, nyudmt_ids
from .recipe import HEADS, complete, stage_configs, tasks_of

NYU_COUNTS = (795, 654)  # NYUv2's official train / test split
PASSES = ("unet_forward", "vae_encode", "vae_decode", "head_eval", "head_train")
PASS_LABELS = ("UNet", "VAE enc", "VAE dec", "head eval", "head train")
COLUMNS = (("cpu", "fp32"), ("cpu", "bf16"), ("h100", "bf16"), ("h100", "fp32"))


def measured() -> dict[str, Any]:
    """The measured costs shipped in `configs/measured.yaml` (FLOPs, seconds, memory, with sources)."""
    return yaml.safe_load((resources.files("diff2in1.configs") / "measured.yaml").read_text())


@dataclass
class StagePlan:
    """One stage of a plan: its passes and its expected seconds per (device, precision)."""

    name: str
    work: str
    passes: dict[str, int]
    seconds: dict[tuple[str, str], float]
    memory: str = "n/m"

    def flops(self, per_pass: dict[str, float], scale: float) -> float:
        return sum(self.passes[p] * per_pass[p] * 1e9 * scale for p in PASSES)


@dataclass
class MultiTask:
    """How more heads on one backbone pass scale a stage's time (measured.yaml `multitask`): each
    dense head adds `per_head` x the normals-only prediction time (half the measured three-head
    extra), so a per-image time is multiplied by `ratio` = 1 + dense heads x per_head."""

    tasks: tuple[str, ...]
    per_head: float
    dense: int

    @property
    def ratio(self) -> float:
        return 1.0 + self.dense * self.per_head

    @classmethod
    def of(cls, m: dict[str, Any], tasks: tuple[str, ...]) -> MultiTask:
        t = m["multitask"]["prediction_seconds"]
        return cls(tasks, (t["three_heads"] / t["normals"] - 1.0) / 2, len(tasks) - 1)


def batch_factor(m: dict[str, Any], device: str, precision: str, kind: str, batch: int) -> tuple[float, int]:
    """(per-image time at `batch` / per-image time at batch 1, the batch size measured) from the
    device's `batched` figures (`kind`: prediction or created_sample; the largest measured batch
    size not above `batch`); (1.0, 1) where that device and precision have none."""
    table = m["devices"][device].get("batched", {}).get(precision)
    if not table or batch <= 1:
        return 1.0, 1
    if kind == "prediction":  # images/s per run -> mean seconds per image
        runs = {b: [1 / v for v in r] for b, r in table["prediction_images_per_s"].items()}
    else:
        runs = table["created_sample_seconds"]
    per = {b: sum(r) / len(r) for b, r in runs.items()}
    used = max(b for b in per if b <= batch)
    return per[used] / per[1], used


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def plan_stages(cfg: ReproduceConfig, n_train: int, n_test: int) -> tuple[list[StagePlan], dict[str, Any]]:
    """Pass counts and expected times of every stage of `cfg` on n_train / n_test images."""
    cfg = complete(cfg)
    st = stage_configs(dataclasses.replace(cfg, out=cfg.out or "out"))
    m = measured()
    h, w = cfg.resolution
    scale = h * w / 512**2  # FLOPs and times grow about with the pixel count (estimate off 512x512)
    sec = {(d, p): m["devices"][d]["seconds_per_image"][p] for d, p in COLUMNS}
    mt = MultiTask.of(m, tasks_of(cfg))
    per_pass = dict(m["flops_g_per_pass"])  # a head pass: every task's head (the dense heads counted)
    for task in mt.tasks[1:]:
        for key in ("head_eval", "head_train"):
            per_pass[key] += m["multitask"]["flops_g_per_pass"][task][key]
    m["flops_g_per_pass"] = per_pass
    stages = []

    def steps_of(c: Any, n: int) -> int:  # image-steps of a training stage
        per_epoch = n // c.batch_size if c.drop_last else -(-n // c.batch_size)
        steps = c.epochs * per_epoch
        if c.max_steps:
            steps = min(steps, c.max_steps * c.grad_accum)
        return steps * c.batch_size

    def train_seconds(c: Any, images: int, encodes: int, key: str) -> dict[tuple[str, str], float]:
        out = {}
        for col, t in sec.items():
            step = (
                t[key] if key != "warmup_step" else (t["warmup_step_cached"] if c.posterior_cache else t[key])
            )
            extra = t["warmup_step"] - t["warmup_step_cached"]  # one VAE encoder pass
            if key == "warmup_step":
                out[col] = (images * step * mt.ratio + (encodes * extra if c.posterior_cache else 0)) * scale
            else:
                out[col] = (
                    images * step * mt.ratio + (0 if c.posterior_cache else (images - encodes) * extra)
                ) * scale
        return out

    def memory(key: str) -> str:
        mem = m["devices"]["h100"]["peak_memory_gb"]
        vals = [mem[p].get(key) for p in ("bf16", "fp32")]
        return " / ".join("n/m" if v is None else f"{v:.1f}" for v in vals) + " GB (b1)"

    wu = st.warmup
    s_w = steps_of(wu, n_train)
    enc_w = min(n_train, s_w) if wu.posterior_cache else s_w
    stages.append(
        StagePlan(
            "warm-up",
            f"{wu.epochs} ep x {s_w // max(1, wu.epochs * wu.batch_size)} steps x {wu.batch_size}",
            {"unet_forward": s_w, "vae_encode": enc_w, "vae_decode": 0, "head_eval": 0, "head_train": s_w},
            train_seconds(wu, s_w, enc_w, "warmup_step"),
            memory("training"),
        )
    )

    cr = st.create
    n_syn = n_train * cr.samples_per_image
    unet_per = cr.steps * (2 if cr.guidance > 1 else 1)  # classifier-free guidance runs the UNet twice

    def sample_flops(unet: int) -> float:
        return (
            per_pass["vae_encode"]
            + unet * per_pass["unet_forward"]
            + per_pass["vae_decode"]
            + per_pass["head_eval"]
        )

    ratio = sample_flops(unet_per) / sample_flops(50)  # the measured sample: 50 steps, no guidance
    stages.append(
        StagePlan(
            "creation",
            f"{n_syn} samples x {cr.steps} DDIM steps",
            {
                "unet_forward": n_syn * unet_per,
                "vae_encode": n_syn,
                "vae_decode": n_syn,
                "head_eval": n_syn,
                "head_train": 0,
            },
            {
                # The dense heads read the last step's taps once per sample: their prediction share.
                col: n_syn
                * (t["created_sample"] * ratio + (mt.ratio - 1) * t["prediction"])
                * batch_factor(m, *col, "created_sample", cr.batch_size)[0]
                * scale
                for col, t in sec.items()
            },
        )
    )

    si = st.self_improve
    s_s = steps_of(si, n_train + n_syn)
    enc_s = min(n_train + n_syn, s_s) if si.posterior_cache else s_s
    stages.append(
        StagePlan(
            "self-improve",
            f"{si.epochs} ep x {s_s // max(1, si.epochs * si.batch_size)} steps x {si.batch_size}",
            # The creation head labels each batch (all of it, then the synthetic samples are kept).
            {"unet_forward": s_s, "vae_encode": enc_s, "vae_decode": 0, "head_eval": s_s, "head_train": s_s},
            train_seconds(si, s_s, enc_s, "self_improve_step"),
            memory("self_improve"),
        )
    )

    ev = st.evaluate
    n_eval = len(HEADS) * (min(n_test, ev.limit) if ev.limit else n_test)
    stages.append(
        StagePlan(
            "evaluation",
            f"{len(HEADS)} head{'s' if mt.dense == 0 else ' sets'} x {n_eval // len(HEADS)} images",
            {
                "unet_forward": n_eval,
                "vae_encode": n_eval,
                "vae_decode": 0,
                "head_eval": n_eval,
                "head_train": 0,
            },
            {
                col: n_eval * t["prediction"] * mt.ratio * bf * scale
                for col, t in sec.items()
                for bf in [batch_factor(m, *col, "prediction", ev.batch_size)[0]]
            },
        )
    )
    return stages, m


def plan(cfg: ReproduceConfig) -> str:
    """The plan of a reproduction: per stage, the UNet / VAE / head passes, FLOPs, and the time and
    memory expected on this project's CPU and on an H100 (from `configs/measured.yaml`)."""
    counts, where = NYU_COUNTS, "NYUv2's official split"
    if cfg.data and Path(cfg.data).is_dir():
        st = stage_configs(dataclasses.replace(cfg, out=cfg.out or "out"))
        splits = (st.warmup.split, eval_split(cfg.data, st.evaluate.split))
        ids = nyudmt_ids if is_nyudmt(cfg.data) else list_ids
        counts = (len(ids(cfg.data, splits[0])), len(ids(cfg.data, splits[1])))
        where = f"`{cfg.data}`"
    n_train, n_test = counts
    stages, m = plan_stages(cfg, n_train, n_test)
    tasks = tasks_of(complete(cfg))
    st = stage_configs(dataclasses.replace(complete(cfg), out=cfg.out or "out"))
    h, w = cfg.resolution
    scale = h * w / 512**2
    per_pass = m["flops_g_per_pass"]
    head = ["stage", "work", *PASS_LABELS, "PFLOP"]
    head += [f"{'2-core CPU' if d == 'cpu' else 'H100'} {p}" for d, p in COLUMNS] + [
        "H100 memory bf16 / fp32"
    ]
    rows = []
    total_sec = {col: 0.0 for col in COLUMNS}
    total_flops = 0.0
    for s in stages:
        f = s.flops(per_pass, scale)
        total_flops += f
        for col in COLUMNS:
            total_sec[col] += s.seconds[col]
        rows.append(
            [s.name, s.work, *(f"{s.passes[p]:,}" for p in PASSES), f"{f / 1e15:.1f}"]
            + [_duration(s.seconds[col]) for col in COLUMNS]
            + [s.memory]
        )
    rows.append(
        ["total", "", *("" for _ in PASSES), f"{total_flops / 1e15:.1f}"]
        + [_duration(total_sec[col]) for col in COLUMNS]
        + [""]
    )
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    gpu, cpu = m["devices"]["h100"], m["devices"]["cpu"]
    fixed = {  # backbone weights + head weights, gradients and Adam moments (fp32)
        p: m["parameters"]["backbone"] * (2 if p == "bf16" else 4) / 1e9 + m["parameters"]["head"] * 16 / 1e9
        for p in ("bf16", "fp32")
    }
    batch = stage_configs(dataclasses.replace(cfg, out=cfg.out or "out")).warmup.batch_size
    cpu_mem = cpu["peak_memory_gb"]
    est = {p: fixed[p] + batch * (gpu["peak_memory_gb"][p]["training"] - fixed[p]) for p in ("bf16", "fp32")}
    notes = [
        f"Plan of `diff2in1 reproduce` for {n_train} train / {n_test} test images ({where}) at {h}x{w}, "
        "with the settings of reproduce.yaml (the research recipe unless --config changes it).",
        "",
        *table,
        "",
        "- Passes per image: warm-up step = UNet at t=0 + head forward and backward (the VAE encoder "
        "runs once per image: its posterior is cached); created sample = VAE encoder + one UNet pass per "
        "DDIM step + VAE decoder + head; self-improving step = UNet + the exploitation head trained + the "
        "creation head labelling the batch; evaluation = VAE encoder + UNet + head. The CLIP text encoder "
        "(once per caption) and captioning are left out.",
        f"- FLOPs per pass at 512x512, measured ({per_pass['measured']}): UNet {per_pass['unet_forward']} G, "
        f"VAE encoder {per_pass['vae_encode']} G, decoder {per_pass['vae_decode']} G, head "
        f"{per_pass['head_eval']:.1f} G, head forward + backward {per_pass['head_train']:.1f} G"
        + ("" if len(tasks) == 1 else " (a head pass: every task's head, the dense heads counted as below)")
        + ". The totals are these times the pass counts.",
        f"- Seconds per image, measured at batch 1: H100 = {gpu['name']} ({gpu['measured']}); 2-core CPU = "
        f"{cpu['name']} ({cpu['measured']}). Every time in the table is an estimate: the measured "
        "per-image time times the images of the stage"
        + ("" if scale == 1 else f", scaled by the pixel count ({scale:.2f}x of 512x512)")
        + ". With N GPUs (torchrun / accelerate launch) divide by about N.",
        *_batch_notes(m, st),
        *_multitask_notes(m, tasks),
        "- H100 memory: peak measured at batch 1 (b1; n/m = not measured)"
        + ("" if len(tasks) == 1 else ", with the normal head alone")
        + f". At batch {batch} (estimate, "
        f"linear in the batch beyond the weights and optimizer): about {est['bf16']:.0f} GB bf16 / "
        f"{est['fp32']:.0f} GB fp32 for the warm-up. The 2-core CPU's peak resident memory at batch 1 "
        f"(measured): {cpu_mem['fp32']['training']} GB fp32, {cpu_mem['bf16']['training']} GB bf16.",
    ]
    return "\n".join(notes)


def _batch_notes(m: dict[str, Any], st: Any) -> list[str]:
    """Which times use a measured per-batch figure, by what ratio, and which stay at batch 1."""
    lines = []
    for d, p in COLUMNS:
        table = m["devices"][d].get("batched", {}).get(p)
        if not table:
            continue
        parts = []
        for stage, kind, b in (
            ("creation", "created_sample", st.create.batch_size),
            ("evaluation", "prediction", st.evaluate.batch_size),
        ):
            f, used = batch_factor(m, d, p, kind, b)
            if used > 1:
                parts.append(f"{stage} at batch {b}: {f:.2f}x (measured at batch {used})")
        name = "2-core CPU" if d == "cpu" else "H100"
        if parts:
            lines.append(
                f"- {name} {p}, batched: the per-image time is scaled by the measured ratio of batch B "
                f"to batch 1 per image ({'; '.join(parts)}), from {table['measured']} (a smaller model "
                "at 128x128: the full model's gain may differ)."
            )
    have = {(d, p) for d, p in COLUMNS if m["devices"][d].get("batched", {}).get(p)}
    rest = [f"{'2-core CPU' if d == 'cpu' else 'H100'} {p}" for d, p in COLUMNS if (d, p) not in have]
    lines.append(
        "- Batch-1 figures: the training steps everywhere, and creation and evaluation on "
        + ", ".join(rest)
        + " (no batched measurement there: none on a GPU). A GPU is usually faster per image at "
        "larger batches than at batch 1."
    )
    return lines


def _multitask_notes(m: dict[str, Any], tasks: tuple[str, ...]) -> list[str]:
    """How the per-image times and FLOPs of a multi-task plan are scaled, and from what."""
    if len(tasks) == 1:
        return []
    mt, rec = MultiTask.of(m, tasks), m["multitask"]
    t = rec["prediction_seconds"]
    dense = ", ".join(
        f"{task} {rec['flops_g_per_pass'][task]['head_eval']} G (forward + backward "
        f"{rec['flops_g_per_pass'][task]['head_train']} G)"
        for task in tasks[1:]
    )
    return [
        f"- Tasks {', '.join(tasks)}: one backbone pass feeds every head, so only the heads add time. "
        f"Measured: a prediction with the normal, depth and segmentation heads took {t['three_heads']} s "
        f"against {t['normals']} s with the normal head alone ({rec['measured']}), "
        f"{t['three_heads'] / t['normals']:.2f}x; each dense head counts for half the difference, "
        f"{mt.per_head:.3f}x of a prediction. Scaled by {mt.ratio:.3f}x: every column's warm-up and "
        "self-improving steps and evaluation (the training steps by the prediction's ratio: the heads' "
        "backward pass with more heads was not timed); a created sample adds "
        f"{mt.ratio - 1:.3f}x of that column's prediction time (the same UNet passes, plus the further "
        "heads once on the last step). The H100 columns use this CPU ratio (not measured on a GPU). "
        f"Dense heads' FLOPs per pass: {dense}.",
    ]
