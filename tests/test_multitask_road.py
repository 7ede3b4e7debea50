"""The whole multi-task road on procedural scenes through the CLI: train-warmup --tasks ... ->
evaluate (three tables) -> predict --point-cloud (pictures, arrays, PLY) -> export-pipeline."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from diff2in1.cli import main
from diff2in1.inference.point_cloud import Intrinsics, read_ply


def test_train_evaluate_predict_point_cloud(scenes_root, tmp_path, capsys):
    run = tmp_path / "run"
    train = ["train-warmup", "--data", str(scenes_root), "--backbone", "tiny", "--head", "small",
             "--out", str(run), "--resolution", "64", "--batch-size", "4", "--epochs", "2",
             "--num-workers", "0", "--no-progress", "--tasks", "normals,depth,segmentation",
             "--depth-weight", "2"]  # fmt: skip
    assert main(["--threads", "1", *train]) == 0
    printed = capsys.readouterr().out
    assert "samples with labels: normals 8, depth 8, segmentation 8" in printed
    heads = [str(run / n) for n in ("head", "head_depth", "head_segmentation")]
    assert all((run / n / "config.json").is_file() for n in ("head", "head_depth", "head_segmentation"))

    head_flags = [x for h in heads for x in ("--head", h)]
    evaluate = ["evaluate", "--data", str(scenes_root), "--backbone", "tiny", *head_flags,
                "--out", str(tmp_path / "eval"), "--no-progress"]  # fmt: skip
    assert main(["--threads", "1", *evaluate]) == 0
    printed = capsys.readouterr().out
    for title in ("normals (angular error", "depth (metres", "segmentation (one confusion matrix"):
        assert title in printed
    assert printed.count("\n|---") == 3  # three tables
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"mean", "depth", "segmentation"} <= set(metrics)
    assert "| head |" in (tmp_path / "eval" / "tables.md").read_text()

    out = tmp_path / "pred"
    predict = ["predict", str(scenes_root / "test" / "img"), "--out", str(out), "--backbone", "tiny",
               *head_flags, "--point-cloud", "--no-progress"]  # fmt: skip
    assert main(["--threads", "1", *predict]) == 0
    stem = "scene_000000"
    for suffix in ("_normal.png", "_depth.png", "_depth16.png", "_depth.npy", "_classes.png",
                   "_segmentation.png", ".ply"):  # fmt: skip
        assert (out / f"{stem}{suffix}").is_file(), suffix
    depth = np.load(out / f"{stem}_depth.npy")
    assert depth.shape == (64, 64) and (depth > 0).all()
    mm = np.asarray(Image.open(out / f"{stem}_depth16.png"))
    assert np.abs(mm.astype(np.float64) - depth * 1000).max() <= 0.5
    classes = np.asarray(Image.open(out / f"{stem}_classes.png"))
    n_classes = len(json.loads((scenes_root / "classes.json").read_text())["classes"])
    assert classes.shape == (64, 64) and classes.max() < n_classes
    cloud = read_ply(out / f"{stem}.ply")
    assert len(cloud) == 64 * 64  # one point per valid pixel (every predicted depth is > 0)
    assert cloud.normals is not None and cloud.colors is not None
    k = Intrinsics.nyu(64, 64)  # the default camera: each point projects back to its pixel's depth
    assert np.allclose(np.sort(cloud.points[:, 2]), np.sort(depth.ravel()), rtol=1e-5)
    u = cloud.points[:, 0] / cloud.points[:, 2] * k.fx + k.cx - 0.5
    assert u.min() > -0.01 and u.max() < 63.01

    exported = tmp_path / "pipe"
    assert main(["export-pipeline", "--backbone", "tiny", *head_flags, "--out", str(exported)]) == 0
    index = json.loads((exported / "model_index.json").read_text())
    assert index["depth_head"][1] == "DenseHead" and index["segmentation_head"][1] == "DenseHead"


def test_point_cloud_flags_are_checked_before_any_model_loads(scenes_root, small_head_dir, tmp_path, capsys):
    base = ["predict", str(scenes_root / "test" / "img"), "--out", str(tmp_path / "p"), "--backbone", "tiny"]
    h = ["--head", str(small_head_dir)]
    cases = [
        ([*h, "--point-cloud"], "--point-cloud: needs a depth head"),
        ([*h, "--point-cloud", "--fov", "200"], "--fov: must be between 0 and 180"),
        ([*h, "--point-cloud", "--intrinsics", "1,2,3"], "--intrinsics: expected fx,fy"),
        ([*h, "--fov", "60"], "only used with --point-cloud"),
        ([*h, *h], "a second normals head"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
