"""Multi-task warm-up: one backbone pass per step trains the normal, depth and segmentation heads."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from diff2in1.cli import main
from diff2in1.config import WarmupConfig, load_config
from diff2in1.errors import InputError
from diff2in1.heads import HeadConfig, NormalHead, folder_task, load_head
from diff2in1.stages.warmup import train_warmup

TASKS = "normals,depth,segmentation"


def _cfg(data, out, **kw) -> WarmupConfig:
    base = dict(
        data=str(data), backbone="tiny", out=str(out), head="small", resolution=(64, 64), batch_size=4,
        epochs=2, num_workers=0, progress=False, tasks=TASKS,
    )  # fmt: skip
    return WarmupConfig(**{**base, **kw})


def _losses(run) -> list[float]:
    return [float(r["loss"]) for r in csv.DictReader((run / "log.csv").open())]


def test_three_heads_train_save_and_resume(scenes_root, tmp_path, tiny_backbone):
    full = train_warmup(_cfg(scenes_root, tmp_path / "full"), backbone=tiny_backbone)
    assert full.label_counts == {"normals": 8, "depth": 8, "segmentation": 8}
    names = {"normals": "head", "depth": "head_depth", "segmentation": "head_segmentation"}
    folders = {t: tmp_path / "full" / n for t, n in names.items()}
    assert sorted(full.outputs.values()) == sorted(str(f) for f in folders.values())
    for task, folder in folders.items():
        assert folder_task(folder) == task
    seg = load_head(folders["segmentation"], "segmentation")
    classes = json.loads((scenes_root / "classes.json").read_text())["classes"]
    assert seg.config.class_names == [c["name"] for c in classes]
    assert load_head(folders["depth"]).config.likelihood == "laplace"
    assert all(torch.isfinite(torch.tensor(full.losses)))
    # Frozen backbone, separate heads, per-weight Adam: the normal head of the three-task run is the
    # one a normals-only run trains (same seed: same initial head, batches and noise).
    train_warmup(_cfg(scenes_root, tmp_path / "alone", tasks="normals"), backbone=tiny_backbone)
    a = load_file(tmp_path / "alone" / "head" / "diffusion_pytorch_model.safetensors")
    b = load_file(folders["normals"] / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Interrupted after 3 steps, resumed: the same losses and heads as the uninterrupted run.
    train_warmup(_cfg(scenes_root, tmp_path / "cut", max_steps=3), backbone=tiny_backbone)
    train_warmup(_cfg(scenes_root, tmp_path / "cut"), resume=True, backbone=tiny_backbone)
    assert _losses(tmp_path / "cut") == pytest.approx(_losses(tmp_path / "full"), rel=1e-6)
    rows = list(csv.DictReader((tmp_path / "full" / "log.csv").open()))
    for r in rows:  # each task's loss is logged; the loss is their sum (weights 1)
        parts = [float(r[f"loss_{t}"]) for t in ("normals", "depth", "segmentation")]
        assert float(r["loss"]) == pytest.approx(sum(parts), rel=1e-5)
    for name in ("head", "head_depth", "head_segmentation"):
        a = load_file(tmp_path / "full" / name / "diffusion_pytorch_model.safetensors")
        b = load_file(tmp_path / "cut" / name / "diffusion_pytorch_model.safetensors")
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name


def test_task_weights_change_the_loss_and_normals_stays_the_default(scenes_root, tmp_path, tiny_backbone):
    first = {}
    for w in (0.0, 1.0, 3.0):
        cfg = _cfg(scenes_root, tmp_path / f"w{w}", max_steps=1, depth_weight=w)
        first[w] = train_warmup(cfg, backbone=tiny_backbone).losses[0]
    # loss = normals + w * depth + segmentation, on the same first batch and initial heads.
    assert first[3.0] - first[1.0] == pytest.approx(2 * (first[1.0] - first[0.0]), rel=1e-4)
    assert first[1.0] - first[0.0] > 0.1
    depth_only = train_warmup(
        _cfg(scenes_root, tmp_path / "c", max_steps=1, tasks="depth"), backbone=tiny_backbone
    )
    assert list(depth_only.outputs) == ["head_depth"]
    assert WarmupConfig().tasks == "normals"


def test_bad_task_settings_are_one_line_errors(scenes_root, tmp_path, small_head_dir):
    cfg = _cfg(scenes_root, tmp_path / "r", depth_head=str(small_head_dir))
    with pytest.raises(InputError, match=r"head: a normals head, but a depth head is expected here$"):
        train_warmup(cfg)
    assert not (tmp_path / "r").exists()  # refused before the run folder or any model
    with pytest.raises(InputError, match="tasks: must be a comma-separated list"):
        load_config(WarmupConfig, tasks="normals,edges")
    with pytest.raises(InputError, match="depth_weight: must be a number >= 0"):
        load_config(WarmupConfig, depth_weight=-1.0)
    with pytest.raises(InputError, match="depth_loss: must be one of"):
        load_config(WarmupConfig, depth_loss="l1")


def torchrun(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "diff2in1.cli", "--threads", "1", *args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_processes_train_three_heads_like_one(scenes_root, tmp_path, tiny_backbone):
    # A normal head refining every pixel: no random or uncertainty-ranked points (whose near-ties
    # flip under float rounding of other batch splits; see test_distributed.py).
    ch = tiny_backbone.tap_channels
    cfg = HeadConfig.small(tuple(ch[g] for g in ("low", "mid", "high", "highest")))
    torch.manual_seed(0)
    dense = tmp_path / "dense"
    every_pixel = dataclasses.replace(cfg, sampling_ratio=1.0, importance_ratio=0.0)
    NormalHead.from_head_config(every_pixel).save_pretrained(dense)
    args = ["train-warmup", "--data", str(scenes_root), "--backbone", "tiny", "--head", str(dense),
            "--depth-head", "small", "--segmentation-head", "small", "--tasks", TASKS,
            "--resolution", "64", "--batch-size", "4", "--epochs", "2", "--no-progress",
            "--num-workers", "0"]  # fmt: skip
    assert main(["--threads", "1", *args, "--out", str(tmp_path / "one")]) == 0
    torchrun(*args, "--out", str(tmp_path / "two"))
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), rel=5e-4)
