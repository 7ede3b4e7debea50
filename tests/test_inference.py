"""Evaluate and predict: metrics by hand, files, sizes, errors; the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diff2in1.cli import main
from diff2in1.heads import NormalHead
from diff2in1.inference.pipeline import Diff2in1Pipeline
from diff2in1.inference.predict_files import predict_files
from diff2in1.inference.predictor import NormalPredictor
from diff2in1.metrics import MetricAccumulator, angular_error_deg
from diff2in1.stages.evaluate import evaluate
from diff2in1.viz import expected_angular_error


@pytest.fixture(scope="module")
def predictor(tiny_backbone, small_head_dir):
    return NormalPredictor(tiny_backbone, NormalHead.from_pretrained(small_head_dir), resolution=(64, 64))


def test_constant_90_degree_error_metrics():
    gt = np.zeros((4, 5, 3), np.float32)
    gt[..., 2] = 1
    pred = np.zeros_like(gt)
    pred[..., 0] = 1
    acc = MetricAccumulator()
    acc.add_errors(angular_error_deg(pred, gt, dim=-1)[np.ones((4, 5), bool)])
    m = acc.compute()
    assert m["mean"] == pytest.approx(90) and m["median"] == pytest.approx(90)
    assert m["a11"] == m["a22"] == m["a30"] == 0


def test_evaluate_matches_hand_computation(predictor, scenes_root, tmp_path):
    result = evaluate(predictor, scenes_root, "test", out=tmp_path, progress=False)
    # By hand: predict each test image, resize to its size, pool errors over valid pixels.
    from diff2in1.data import NormalsDataset

    errs = []
    for i, item in enumerate(NormalsDataset(scenes_root, "test", size=None)):
        pred = predictor(item["image"][None], ids=[i])
        e = angular_error_deg(pred.normal[0], item["normal"])
        errs.append(e[item["mask"][0]].numpy())
    errs = np.concatenate(errs)
    assert result.metrics["mean"] == pytest.approx(errs.mean(), rel=1e-5)
    assert result.metrics["median"] == pytest.approx(np.median(errs), rel=1e-4)
    assert result.metrics["a30"] == pytest.approx((errs < 30).mean() * 100, abs=1e-3)
    assert result.metrics["pixels"] == errs.size
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["mean"] == pytest.approx(result.metrics["mean"])
    assert len((tmp_path / "per_image.csv").read_text().strip().splitlines()) == 4
    w, h = Image.open(tmp_path / "grid.png").size
    assert w > 5 * 64 and h > 3 * 64
    calib = json.loads((tmp_path / "calibration.json").read_text())
    assert sum(b["pixels"] for b in calib["bins"]) == errs.size
    assert calib["mean_observed"] == pytest.approx(errs.mean(), rel=1e-4)
    assert result.metrics["calibration_gap"] == pytest.approx(calib["gap"]) and calib["gap"] >= 0
    assert Image.open(tmp_path / "calibration.png").size[0] > 200


def test_predict_keeps_sizes_and_writes_files(tiny_backbone, small_head_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    sizes = {"a": (50, 70), "b": (64, 64), "c": (120, 90)}
    rng = np.random.default_rng(0)
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(src / f"{name}.png")
    out = tmp_path / "out"
    pipe = Diff2in1Pipeline.from_backbone(tiny_backbone, small_head_dir)
    predict_files(pipe, [src], out, batch_size=2, progress=False)
    for name, (h, w) in sizes.items():
        n = np.load(out / f"{name}_normal.npy")
        assert n.shape == (h, w, 3)
        assert np.allclose(np.linalg.norm(n, axis=-1), 1, atol=1e-4)
        assert Image.open(out / f"{name}_normal.png").size == (w, h)
        uw, uh = Image.open(out / f"{name}_uncertainty.png").size
        assert uh == h and uw > w  # the map and its colour bar
        assert np.load(out / f"{name}_kappa.npy").min() > 0.01


def test_prediction_does_not_depend_on_batching(predictor):
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    together = predictor(x, ids=[0, 1, 2]).normal
    alone = predictor(x[2:], ids=[2]).normal
    assert torch.allclose(together[2:], alone, atol=1e-4)


def test_expected_angular_error_limits():
    assert expected_angular_error(np.array(1e-6)) == pytest.approx(np.pi / 2, rel=1e-4)
    assert expected_angular_error(np.array(200.0)) == pytest.approx(2 / 200, rel=1e-3)
    k = np.array([0.5, 2.0, 10.0])
    theta = np.linspace(0, np.pi, 200001)
    for kk, e in zip(k, expected_angular_error(k), strict=True):
        w = np.exp(-kk * theta) * np.sin(theta)
        assert e == pytest.approx((theta * w).sum() / w.sum(), rel=1e-4)


def test_cli_evaluate_and_predict(scenes_root, small_head_dir, tmp_path, capsys):
    rc = main(
        [
            "evaluate",
            "--data",
            str(scenes_root),
            "--backbone",
            "tiny",
            "--head",
            str(small_head_dir),
            "--resolution",
            "64",
            "--out",
            str(tmp_path / "ev"),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "| mean | median |" in capsys.readouterr().out
    rc = main(
        [
            "predict",
            str(scenes_root / "test" / "img"),
            "--backbone",
            "tiny",
            "--head",
            str(small_head_dir),
            "--resolution",
            "64",
            "--out",
            str(tmp_path / "pr"),
            "--no-progress",
        ]
    )
    assert rc == 0 and len(list((tmp_path / "pr").glob("*_normal.png"))) == 3


def test_cli_bad_input_gives_one_line(tmp_path, capsys, small_head_dir):
    (tmp_path / "notes.txt").write_text("hi")
    rc = main(
        [
            "predict",
            str(tmp_path / "notes.txt"),
            "--backbone",
            "tiny",
            "--head",
            str(small_head_dir),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "notes.txt: not an image" in err
    rc = main(
        ["evaluate", "--data", str(tmp_path / "none"), "--backbone", "tiny", "--head", str(small_head_dir)]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no images in" in err and err.count("\n") == 0
    rc = main(
        [
            "predict",
            str(tmp_path / "notes.txt"),
            "--backbone",
            "tiny",
            "--head",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2


def test_bf16_prediction_stores_the_backbone_in_bf16_and_stays_close(predictor, tiny_folder, small_head_dir):
    """--mixed-precision bf16: the frozen backbone is cast once (bf16 weights), the head runs under
    autocast, and the outputs are float32 unit normals close to the fp32 prediction."""
    bf16 = NormalPredictor.from_paths(
        str(tiny_folder),
        str(small_head_dir),
        device="cpu",
        resolution=(64, 64),
        autocast_dtype=torch.bfloat16,
    )
    assert bf16.backbone.dtype == torch.bfloat16 and bf16.backbone.vae.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bf16.head.parameters())  # fp32 master weights
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ref, out = predictor(x, ids=[0, 1]), bf16(x, ids=[0, 1])
    assert out.normal.dtype == out.kappa.dtype == torch.float32
    assert torch.allclose(out.normal.norm(dim=1), torch.ones(2, 64, 64), atol=1e-5)
    err = angular_error_deg(out.normal, ref.normal)
    assert 0 < err.mean() < 5, err.mean()


@pytest.mark.parametrize("native", [False, True])
def test_emulated_bf16_on_cpu_warns_once_in_one_line(
    native, tiny_folder, small_head_dir, tmp_path, capsys, monkeypatch
):
    """A CPU without bf16 instructions runs bf16 emulated, far slower than fp32: predict says so once,
    on one line, and names the way out; a CPU with them (or fp32) says nothing."""
    from diff2in1.devices import emulated_precision

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    assert emulated_precision("cpu", torch.float32) is None
    assert emulated_precision("cuda", torch.bfloat16) is None  # only the CPU's instructions are asked
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    argv = ["predict", str(tmp_path / "a.png"), "--backbone", str(tiny_folder), "--head", str(small_head_dir)]
    argv += ["--resolution", "64", "--no-progress", "--mixed-precision", "bf16", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    if native:
        assert emulated_precision("cpu", torch.bfloat16) is None and warned == []
    else:
        assert len(warned) == 1 and warned[0].startswith("diff2in1: warning: this CPU (")
        assert "bf16 is emulated" in warned[0] and "--mixed-precision no" in warned[0]

    def unknown():
        raise RuntimeError("no such op in this build")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", unknown)
    assert emulated_precision("cpu", torch.bfloat16) is None  # a build that cannot tell says nothing
