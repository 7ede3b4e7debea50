"""Evaluation and the pipeline of a head set (normals, depth, segmentation) on one backbone pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from diff2in1.cli import main
from diff2in1.config import WarmupConfig
from diff2in1.errors import InputError
from diff2in1.inference.pipeline import Diff2in1Pipeline
from diff2in1.inference.predictor import NormalPredictor, TaskPredictor
from diff2in1.metrics import depth_metrics, segmentation_metrics
from diff2in1.stages.evaluate import evaluate
from diff2in1.stages.warmup import train_warmup


@pytest.fixture(scope="module")
def run(scenes_root, tmp_path_factory, tiny_backbone):
    out = tmp_path_factory.mktemp("mt") / "run"
    cfg = WarmupConfig(
        data=str(scenes_root), backbone="tiny", out=str(out), head="small", resolution=(64, 64),
        batch_size=4, epochs=2, num_workers=0, progress=False, tasks="normals,depth,segmentation",
    )  # fmt: skip
    train_warmup(cfg, backbone=tiny_backbone)
    return out


def heads(run) -> list[str]:
    return [str(run / n) for n in ("head", "head_depth", "head_segmentation")]


def test_head_set_evaluation_matches_independent_computations(run, scenes_root, tiny_backbone, tmp_path):
    predictor = TaskPredictor(tiny_backbone, heads(run))
    result = evaluate(predictor, scenes_root, "test", out=tmp_path / "ev", progress=False)
    alone = evaluate(NormalPredictor(tiny_backbone, predictor.pipe.head), scenes_root, "test", progress=False)
    assert result.metrics == alone.metrics  # the normals of a head set are the normal head's own
    # Depth: the per-image metrics averaged; segmentation: one pooled confusion matrix.
    from diff2in1.data.multitask import MultiTaskDataset

    data = MultiTaskDataset(scenes_root, "test", ("depth", "segmentation"), size=None, captions=False)
    per_image, preds, gts = [], [], []
    for item in data:
        pred = predictor(item["image"][None])
        per_image.append(depth_metrics(pred.log_depth[0, 0].double().exp(), item["depth"][0]))
        preds.append(pred.logits[0].argmax(0).numpy())
        gts.append(item["classes"].numpy())
    depth = result.task_metrics["depth"]
    for k in ("abs_rel", "rmse", "delta1"):
        assert depth[k] == pytest.approx(np.mean([m[k] for m in per_image]), rel=1e-6)
    seg = segmentation_metrics(np.stack(preds), np.stack(gts), len(data.classes))
    assert result.task_metrics["segmentation"]["miou"] == pytest.approx(seg["miou"], rel=1e-9)
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["mean"] == result.metrics["mean"] and saved["depth"]["n_images"] == 3
    reports = ("grid_depth.png", "grid_segmentation.png", "per_image_depth.csv", "segmentation_classes.csv")
    for name in reports:
        assert (tmp_path / "ev" / name).stat().st_size > 0
    cropped = evaluate(predictor, scenes_root, "test", progress=False, eigen_crop=True)
    assert cropped.task_metrics["depth"]["abs_rel"] != depth["abs_rel"]


def test_pipeline_fields_per_task_and_a_normals_only_folder_loads_as_before(run, tiny_backbone, tmp_path):
    pipe = Diff2in1Pipeline.from_backbone(tiny_backbone, heads(run))
    img = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    out = pipe(img, show_progress_bar=False)
    assert out.normals.shape == (1, 40, 56, 3)
    assert out.depth.shape == out.depth_uncertainty.shape == (1, 40, 56, 1)
    assert out.classes.shape == (1, 40, 56) and out.class_probabilities.shape[-1] == 6
    assert np.allclose(out.class_probabilities.sum(-1), 1, atol=1e-5) and (out.depth > 0).all()
    only = pipe(img, tasks="depth", show_progress_bar=False)
    assert only.normals is None and only.classes is None and np.array_equal(only.depth, out.depth)
    assert len(pipe(img, show_progress_bar=False, return_dict=False)) == 7
    pictures = pipe(img, output_type="pil", show_progress_bar=False)
    assert pictures.depth[0].width > 56 and pictures.classes[0].width > 56  # colour bar, legend
    # A normals-only pipeline: three fields, and a folder saved without the new components loads.
    normals = Diff2in1Pipeline.from_backbone(tiny_backbone, str(run / "head"))
    plain = normals(img, tasks=["normals", "depth"], show_progress_bar=False)
    assert plain.depth is None and len(plain.to_tuple()) == 3
    normals.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    for key in ("depth_head", "segmentation_head"):
        index.pop(key)
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    loaded = Diff2in1Pipeline.from_pretrained(tmp_path / "p")
    assert loaded.tasks == ("normals",) and loaded.depth_head is None
    with pytest.raises(InputError, match="a second depth head"):
        Diff2in1Pipeline.from_backbone(tiny_backbone, [str(run / "head_depth")] * 2)
    with pytest.raises(InputError, match="unknown task 'edges'"):
        pipe(img, tasks="edges")


def test_two_process_head_set_evaluation_equals_one(run, scenes_root, tmp_path):
    # One image per batch: the same batches in 1 and 2 processes, so the predictions are bit-equal
    # (other batch splits change the convolutions' float rounding) and the pooling is what is tested.
    args = ["evaluate", "--data", str(scenes_root), "--backbone", "tiny", "--no-progress"]
    args += ["--batch-size", "1"]
    for h in heads(run):
        args += ["--head", h]
    assert main(["--threads", "1", *args, "--out", str(tmp_path / "e1")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "diff2in1.cli", "--threads", "1", *args, "--out", str(tmp_path / "e2")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m1, m2 = (json.loads((tmp_path / e / "metrics.json").read_text()) for e in ("e1", "e2"))
    assert m1["segmentation"] == m2["segmentation"]
    # per-image means are gathered exactly; the float32 predictions themselves may differ in the
    # last bits with the batch a process runs (another convolution path), hence float32's tolerance
    assert m1["depth"] == pytest.approx(m2["depth"], rel=1e-6)
    assert m1["pixels"] == m2["pixels"]


def test_a_head_of_another_task_where_one_is_expected(run, scenes_root, capsys):
    torch.manual_seed(0)
    code = main(["create-data", "--data", str(scenes_root), "--backbone", "tiny", "--head",
                 str(run / "head_depth"), "--out", "/nonexistent/x", "--resolution", "64"])  # fmt: skip
    assert code == 2
    assert "head_depth: a depth head, but a normals head is expected here" in capsys.readouterr().err
