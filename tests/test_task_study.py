"""scripts/task_study.py end to end on the random `tiny` preset at 64x64: every arm of a cell trains
and is evaluated on every task along its curve, a re-run trains nothing, other settings are refused,
and the report's paired differences are the per-seed differences of the cells' numbers."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _study():
    spec = importlib.util.spec_from_file_location("task_study", REPO / "scripts" / "task_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


study = _study()
FAST = ["--backbone", "tiny", "--size", "64", "--pool", "4", "--test", "2", "--batch-size", "2",
        "--ddim-steps", "3", "--warmup-steps", "2", "--extra-steps", "4", "--eval-every", "2"]  # fmt: skip


def _main(argv: list[str]) -> None:
    old = sys.argv
    sys.argv = ["task_study.py", *argv]
    try:
        study.main()
    finally:
        sys.argv = old


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    out = tmp_path_factory.mktemp("task_study")
    _main(["--out", str(out), "--sizes", "2", "--seeds", "0,1", "--threads", "1", *FAST])
    return out


def test_every_arm_is_evaluated_on_every_task_along_its_curve(ran):
    r = json.loads((ran / "cells" / "n2_s0" / "results.json").read_text())
    assert set(r["final"]) == set(study.ARMS)
    for arm in study.ARMS:
        for task, cols in study.METRICS.items():
            assert all(math.isfinite(r["final"][arm][task][k]) for k, _, _ in cols), (arm, task)
    # 2 labelled scenes at batch 2: the control's epochs are 1 step, kept every 2 steps, and it ends
    # 4 steps after the warm-up's 2; the synthetic sets (1 sample per scene) double the epoch.
    assert sorted(map(int, r["curves"]["control"])) == [4, 6]
    assert sorted(map(int, r["curves"]["research"])) == [4, 6]
    assert r["losses"]["control"]["step"] == [3, 4, 5, 6]
    syn = ran / "cells" / "n2_s0" / "synthetic" / "train"
    assert {p.name for p in syn.iterdir()} >= {"img", "norm", "depth", "seg"}
    assert len(list((syn / "depth").iterdir())) == 2
    # The arms differ: the pseudo-label rules change what the heads learn.
    assert r["final"]["research"]["normals"]["mean"] != r["final"]["control"]["normals"]["mean"]


def test_a_rerun_trains_nothing_and_other_settings_are_refused(ran, capsys):
    done = ran / "cells" / "n2_s1" / "results.json"
    before = done.stat().st_mtime_ns
    _main(["--out", str(ran), "--sizes", "2", "--seeds", "1", *FAST])
    assert done.stat().st_mtime_ns == before
    with pytest.raises(SystemExit) as e:
        _main(["--out", str(ran), "--sizes", "2", "--seeds", "1", *FAST, "--warmup-steps", "3"])
    assert "warmup_steps: 2 -> 3" in str(e.value) and "settings.json" in str(e.value)


def test_more_extra_steps_continue_the_arms(ran):
    # In place (run folders record their paths); the other tests do not depend on it having run.
    cell = ran / "cells" / "n2_s1"
    before = json.loads((cell / "results.json").read_text())
    _main(["--out", str(ran), "--sizes", "2", "--seeds", "1", *FAST, "--extra-steps", "6"])
    after = json.loads((cell / "results.json").read_text())
    assert after["extra_steps"] == 6
    for arm in study.ARMS[1:]:  # the runs went on from step 6: the earlier steps are kept as they were
        assert after["losses"][arm]["step"] == [3, 4, 5, 6, 7, 8]
        assert after["losses"][arm]["loss"][:4] == before["losses"][arm]["loss"]
        assert after["curves"][arm]["6"] == before["curves"][arm]["6"] and "8" in after["curves"][arm]
    assert after["curves"]["warmup"] == before["curves"]["warmup"]


def test_report_gives_paired_differences_and_the_curves(ran, tmp_path):
    prefix = tmp_path / "study"
    _main(["--out", str(ran), "--sizes", "2", "--seeds", "0,1", *FAST, "--report", str(prefix)])
    text = (tmp_path / "study.results.md").read_text()
    cells = [json.loads((ran / "cells" / f"n2_s{s}" / "results.json").read_text()) for s in (0, 1)]
    d = [c["final"]["filtered"]["depth"]["abs_rel"] - c["final"]["control"]["depth"]["abs_rel"]
         for c in cells]
    mean, half = study.t_interval(d)
    assert half == pytest.approx(12.706 * abs(d[0] - d[1]) / 2, rel=1e-9)
    assert f"{mean:.3g} +- {half:.2g}" in text
    assert "**segmentation**" in text and "| weighted |" in text
    assert (tmp_path / "study_curves.png").stat().st_size > 1000
    assert json.loads((tmp_path / "study.json").read_text())["settings"]["eval_every"] == 2
