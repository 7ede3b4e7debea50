"""Synthetic multi-modal data creation (docs/method.md section 7): new RGB + normal pairs from
training images.

For each (source image, k < samples_per_image): encode, noise to `t_start`, DDIM-denoise
with the image's caption, decode the new RGB; the head (creation parameters) reads the taps
of the last denoising step for the new normal map and kappa (`creation.create_samples`, the one
generation core). Sample k of source image i (its index in the sorted split) has the seed
`sample_seed(seed, i, k)`, recorded in its meta file; every random draw of the sample comes from
it, so the data do not depend on batching, sharding or resuming, and
`pipe.create(image, caption, seed=<that seed>, ...)` makes the same sample.

Output: a dataset in the data layout of docs/method.md section 5
(`<out>/train/{img,norm,norm_npy,kappa,caption}`), one
`<out>/meta/<id>.json` per sample (written last: a sample is done iff it exists), and
`<out>/manifest.jsonl` gathered from them at the end.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..atomic import clean_stale_tmp, save_text
from ..backbone import Backbone, autocast_dtype, load_backbone, weights_dtype
from ..config import CreateConfig
from ..creation import create_samples
from ..data import NormalsDataset, write_sample
from ..errors import InputError
from ..fingerprint import check_head
from ..heads import NormalHead
from ..path_overlap import refuse_overlap
from ..training.loop import mix_seed
from ..training.run_folder import to_plain
from ..viz import add_colorbar, grid, image_to_rgb, normal_to_rgb, save_png, uncertainty_to_rgb

SPLIT = "train"


def fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's tensors (strided sample of every tensor: cheap even for SD)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(flat[::step].to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def parse_shard(text: str) -> tuple[int, int]:
    """ "i/n" -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"--shard {text!r}: use i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise InputError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def sample_id(source_id: str, k: int) -> str:
    return f"{source_id}_syn{k}"


def sample_seed(seed: int, source_index: int, k: int) -> int:
    """The seed of sample k of source image `source_index` in a set created with `--seed seed`."""
    return mix_seed(seed, source_index, k)


@dataclass
class CreateResult:
    """Counts and where things are."""

    created: int
    skipped: int
    total: int
    out: str
    seconds: float


def _to_hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).cpu().numpy()


# Settings that decide what a sample is: a folder holds samples of one setting only.
DEFINING = (
    "data",
    "split",
    "resolution",
    "resize",
    "samples_per_image",
    "t_start",
    "steps",
    "guidance",
    "seed",
    "mixed_precision",
)


def check_or_record_settings(
    cfg: CreateConfig, backbone: Backbone, head: NormalHead, strict: bool = True
) -> None:
    """Before the first sample: write `create_config.json` (the settings and the two models'
    fingerprints) into a new `cfg.out`, or refuse an existing one made with other settings (named).
    `strict=False` (the self-improving stage completing its own re-created set after a resume)
    does not compare the creation head, which has moved on since."""
    from ..training.run_folder import _comparable

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    record = {
        **to_plain(cfg),
        "backbone_fingerprint": fingerprint(backbone),
        "head_fingerprint": fingerprint(head),
    }
    path = out / "create_config.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: unreadable ({e}); use another --out") from None
        keys = [*DEFINING, "backbone_fingerprint"] + (["head_fingerprint"] if strict else [])
        for k in keys:
            if _comparable(k, saved.get(k)) != _comparable(k, record[k]):
                what = {"backbone_fingerprint": "backbone weights", "head_fingerprint": "head weights"}.get(
                    k, k
                )
                raise InputError(
                    f"--out {out}: holds samples made with another {what} "
                    f"({saved.get(k)!r} -> {record[k]!r}); "
                    "finish it with the same settings or use another --out"
                )
        return
    if out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise InputError(
            f"--out {out}: exists and holds files that create-data did not write; use another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    save_text(path, json.dumps(record, indent=1))


def create_data(
    cfg: CreateConfig,
    backbone: Backbone,
    head: NormalHead,
    rank: int = 0,
    world: int = 1,
    progress: Callable | None = None,
    strict: bool = True,
) -> CreateResult:
    """Create the synthetic set of `cfg` into `cfg.out` (resumable; shard `cfg.shard` x processes).

    The folder records its settings before the first sample; continuing it with other settings is
    refused (see `check_or_record_settings`)."""
    refuse_overlap(cfg.out, data=cfg.data, head=cfg.head or None, backbone=cfg.backbone)
    source = NormalsDataset(cfg.data, cfg.split, size=cfg.resolution, labels=False, resize=cfg.resize)
    out = Path(cfg.out)
    check_head(head, backbone, cfg.head or "head", str(backbone.source))
    check_or_record_settings(cfg, backbone, head, strict)
    clean_stale_tmp(out)
    shard_i, shard_n = parse_shard(cfg.shard)
    # Work item j = (source index j // K, k = j % K); this process takes every (n * world)-th.
    k_per = cfg.samples_per_image
    total = len(source) * k_per
    mine = [j for j in range(total) if j % (shard_n * world) == shard_i * world + rank]
    todo = [
        j
        for j in mine
        if not (out / "meta" / f"{sample_id(source.ids[j // k_per], j % k_per)}.json").exists()
    ]
    common = {
        "t_start": cfg.t_start,
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "backbone": backbone.source,
        "backbone_fingerprint": fingerprint(backbone),
        "head_fingerprint": fingerprint(head),
        "resolution": list(cfg.resolution),
    }
    t0 = time.perf_counter()
    bar = tqdm(  # nothing to make (a resumed run): no bar, not a "create: 100%" line
        total=len(mine),
        initial=len(mine) - len(todo),
        desc="create",
        unit="sample",
        disable=not cfg.progress or not todo,
    )
    previews: list[list[np.ndarray]] = []
    for start in range(0, len(todo), cfg.batch_size):
        jobs = todo[start : start + cfg.batch_size]
        items = [source[j // k_per] for j in jobs]
        seeds = [sample_seed(cfg.seed, j // k_per, j % k_per) for j in jobs]
        made = create_samples(
            backbone,
            head,
            torch.stack([it["image"] for it in items]),
            [it["caption"] for it in items],
            seeds,
            cfg.t_start,
            cfg.steps,
            cfg.guidance,
            autocast=autocast_dtype(cfg.mixed_precision),
        )
        pred = made.prediction
        made_all = zip(jobs, items, seeds, made.rgb, pred.normal, pred.kappa, strict=True)
        for j, it, seed, rgb, nrm, kap in made_all:
            sid = sample_id(it["id"], j % k_per)
            write_sample(
                out, SPLIT, sid, _to_hwc(rgb), _to_hwc(nrm), it["caption"], kappa=kap[0].cpu().numpy()
            )
            meta = {
                "id": sid,
                "source_id": it["id"],
                "sample": j % k_per,
                "seed": seed,
                "caption": it["caption"],
                **common,
            }
            save_text(out / "meta" / f"{sid}.json", json.dumps(meta))
            if j < cfg.preview and len(previews) < cfg.preview:
                previews.append(
                    [
                        image_to_rgb(_to_hwc(it["image"])),
                        image_to_rgb(_to_hwc(rgb)),
                        normal_to_rgb(_to_hwc(nrm)),
                        np.asarray(add_colorbar(uncertainty_to_rgb(kap[0].cpu().numpy()), 45.0)),
                    ]
                )
        bar.update(len(jobs))
        bar.set_postfix(samples_per_s=f"{(start + len(jobs)) / (time.perf_counter() - t0):.2f}")
        if progress is not None:
            progress(start + len(jobs))
    bar.close()
    if previews:
        labels = ["source", "synthetic RGB", "synthetic normal", "uncertainty (0-45 deg)"]
        save_png(grid(previews, labels, cell=160), out / f"preview_{shard_i}_{rank}.png")
    write_manifest(out)
    return CreateResult(
        created=len(todo),
        skipped=len(mine) - len(todo),
        total=total,
        out=str(out),
        seconds=time.perf_counter() - t0,
    )


def write_manifest(out: str | Path) -> Path:
    """Gather `meta/*.json` into `manifest.jsonl`, sorted by id (idempotent, any shard may call it)."""
    out = Path(out)
    lines = [p.read_text().strip() for p in sorted((out / "meta").glob("*.json"))]
    save_text(out / "manifest.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    return out / "manifest.jsonl"


def run_create(cfg: CreateConfig) -> CreateResult:
    """`diff2in1 create-data`: load models, then create this process's share.

    Under `accelerate launch` / `torchrun` each process takes its own share of `cfg.shard`.
    """
    from accelerate import PartialState

    from ..info import best_device

    refuse_overlap(cfg.out, data=cfg.data, head=cfg.head, backbone=cfg.backbone)  # before any model
    NormalsDataset(cfg.data, cfg.split, size=cfg.resolution, labels=False, resize=cfg.resize)
    parse_shard(cfg.shard)
    state = PartialState(cpu=cfg.device == "cpu")
    device = state.device if cfg.device == "auto" else torch.device(cfg.device)
    if cfg.device == "auto" and state.num_processes == 1:
        device = torch.device(best_device())
    head = NormalHead.from_pretrained(cfg.head).to(device)  # small: a bad head fails before the backbone
    backbone = load_backbone(cfg.backbone, device=device, dtype=weights_dtype(cfg.mixed_precision))
    result = create_data(cfg, backbone, head, rank=state.process_index, world=state.num_processes)
    state.wait_for_everyone()
    if state.is_main_process:
        write_manifest(cfg.out)
    return result
