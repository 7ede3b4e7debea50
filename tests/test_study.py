"""scripts/self_improvement_study.py end to end on the random `tiny` preset at 64x64: cells train,
resume, gain arms without redoing the others, and the report's tables and figures come out."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _study():
    spec = importlib.util.spec_from_file_location("study", REPO / "scripts" / "self_improvement_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["study"] = module  # the cells' worker processes unpickle run_cell by module name
    spec.loader.exec_module(module)
    return module


study = _study()
FAST = ["--size", "64", "--backbone", "tiny", "--batch", "2", "--warmup-steps", "2", "--extra-steps", "2"]


def test_mean_ci_is_a_t_interval():
    m, lo, hi = study.mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and hi - m == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-6) and m - lo == hi - m
    assert math.isnan(study.mean_ci([5.0])[1])


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    arms = "warmup,control,si_spi1,synthetic_only,pseudo_real,synthetic_gt"
    argv = ["--out", str(out), "--sizes", "4", "--seeds", "0,1", "--arms", arms, *FAST]
    assert study.main(argv) == 0
    return out, argv


def test_cells_hold_every_arm_and_the_label_errors(ran):
    out, _ = ran
    for seed in (0, 1):
        r = json.loads((out / f"n004_seed{seed}" / "results.json").read_text())
        assert set(r["arms"]) == {
            "warmup",
            "control",
            "si_spi1",
            "synthetic_only",
            "pseudo_real",
            "synthetic_gt",
        }
        for arm in r["arms"].values():
            assert 0 <= arm["mean"] <= 180 and math.isfinite(arm["calibration_gap"])
        # True normals linked to the synthetic images: no label error; the models' labels have one.
        assert r["arms"]["synthetic_gt"]["label_error"] < 1e-3
        assert r["arms"]["pseudo_real"]["label_error"] > 1.0
        assert r["arms"]["synthetic_only"]["label_error"] > 1.0
    # synthetic_gt pairs each synthetic image with its source scene's true normals.
    gt = out / "n004_seed0" / "synthetic_gt_data" / "train"
    ids = sorted(p.stem for p in (gt / "img").iterdir())
    assert len(ids) == 4 and all(i.endswith("_syn0") for i in ids)
    src = np.load(out / "data" / "train" / "norm_npy" / f"{ids[0].split('_syn')[0]}.npy")
    assert np.array_equal(np.load(gt / "norm_npy" / f"{ids[0]}.npy"), src)


def test_a_rerun_trains_nothing_and_a_new_arm_keeps_the_others(ran):
    out, argv = ran
    cell = out / "n004_seed0" / "results.json"
    before = json.loads(cell.read_text())
    stamp = (
        (out / "n004_seed0" / "control" / "head" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    )
    assert study.main(argv) == 0
    assert json.loads(cell.read_text()) == before  # finished cells are not touched
    i = argv.index("--arms")
    more = [*argv[:i], "--arms", argv[i + 1] + ",si_recreate", *argv[i + 2 :], "--seeds", "0"]
    assert study.main(more) == 0
    after = json.loads(cell.read_text())
    assert set(after["arms"]) == set(before["arms"]) | {"si_recreate"}
    assert {k: after["arms"][k] for k in before["arms"]} == before["arms"]
    assert (
        out / "n004_seed0" / "control" / "head" / "diffusion_pytorch_model.safetensors"
    ).stat().st_mtime_ns == stamp


def test_report_writes_tables_and_figures(ran, tmp_path):
    out, _ = ran
    md = tmp_path / "report.md"
    assert study.main(["--out", str(out), "--size", "64", "--report", str(md)]) == 0
    text = md.with_suffix(".results.md").read_text()
    assert "| 4 | si_spi1 | 2 |" in text and "| synthetic_gt | synthetic images |" in text
    assert "extra 2 steps" in text  # the settings the cells ran with, not the report command's defaults
    assert "Cost of model labels instead of true ones, on the real images: pseudo_real - warmup = " in text
    table = json.loads(md.with_suffix(".json").read_text())
    assert set(table["4/control"]) >= {"mean", "median", "diff_mean"}
    for suffix in (".png", ".samples.png"):
        from PIL import Image

        with Image.open(md.with_suffix(suffix)) as im:
            assert im.width > 300 and im.height > 100


def test_bad_arm_and_wrong_size_are_refused(ran, capsys):
    out, _ = ran
    with pytest.raises(SystemExit):
        study.main(["--out", str(out), *FAST, "--arms", "warmup,nonsense"])
    assert "nonsense" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the pool holds 160 training scenes
        study.main(["--out", str(out), *FAST, "--sizes", "500"])
    assert "sizes must be 1..160" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main(["--out", str(out), *FAST, "--images-of", str(out / "nowhere")])
    assert "not a study folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main(["--out", str(out), "--size", "128", "--sizes", "4"])
    assert "64x64, not --size 128" in capsys.readouterr().err
    # Resuming with other settings would mix incomparable cells into one table.
    with pytest.raises(SystemExit):
        study.main(["--out", str(out), "--sizes", "4", *FAST[:-1], "3"])
    assert "other settings (extra_steps: 2 -> 3); use another --out" in capsys.readouterr().err
