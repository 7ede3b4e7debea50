"""`diff2in1 demo --quick` end to end: every stage runs for every seed, the report has all its parts,
a smoke run gives no verdict, a re-run keeps the stage times; the statistics and the verdict."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from diff2in1.backbone import PRESETS
from diff2in1.cli import main
from diff2in1.workflows.demo import ARMS, CONTROL, EXPLOIT, StageTimes, _verdict, summarize


def test_demo_quick_writes_report_with_figures(tmp_path, capsys):
    backbone = "tiny-scenes" if _shipped() else "tiny"
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--out", str(out), "--backbone", backbone, "--no-progress"]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "smoke run (--quick)" in stdout and "report written to" in stdout
    # One header per stage even with --no-progress: position, time so far, estimate of what is left.
    headers = [line for line in stdout.splitlines() if line.startswith("[demo] ") and " so far; " in line]
    assert len(headers) == 1 + 2 * 5 + 1, headers
    assert headers[0].startswith("[demo] make scenes (0 s so far; estimate after the first stage)")
    assert "[demo] seed 1 (2/2) - stage 2/5: create data (" in stdout
    assert all("left)" in h for h in headers[1:]) and "CPU thread(s)" in stdout
    report = (out / "report.md").read_text()
    for part in (
        "Smoke run (`--quick`)",
        "Why these settings: they are the research defaults.",
        "2 training seed(s) (0, 1)",
        "| warm-up |",
        "| self-improved (exploitation) |",
        "| control",
        "calib. gap",
        " ± ",  # mean ± spread over the seeds
        "### Per seed: self-improved minus control",
        "| 0 | ",
        "| 1 | ",
        "95 % interval [",
        "fig_samples.png",
        "fig_losses.png",
        "fig_calibration.png",
        "seed_0/synthetic/preview_0_0.png",
        "| seed 0 | seed 1 | all |",
    ):
        assert part in report, part
    # A smoke run gives no verdict.
    assert "## Verdict" not in report and "beat" not in report
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seeds"] == [0, 1] and set(metrics["arms"]) == set(ARMS)
    for seed in ("0", "1"):
        for m in metrics["per_seed"][seed].values():
            assert 0 <= m["mean"] <= 180 and 0 <= m["a30"] <= 100 and m["calibration_gap"] >= 0
        d = metrics["per_seed"][seed][EXPLOIT]["mean"] - metrics["per_seed"][seed][CONTROL]["mean"]
        assert metrics["difference"]["per_seed"][seed] == pytest.approx(d)
    lo, hi = metrics["difference"]["ci95"]
    assert lo <= metrics["difference"]["mean"] <= hi
    figures = ("fig_samples.png", "fig_losses.png", "fig_calibration.png", "seed_0/synthetic/preview_0_0.png")
    for fig in figures:
        assert Image.open(out / fig).size[0] > 200
    # Colour bars: the error and uncertainty columns are wider than the 128-px maps, so the grid of
    # 8 columns (image, truth, 2 x (prediction, error, uncertainty)) is wider than 8 square cells.
    assert Image.open(out / "fig_samples.png").size[0] > 8 * (128 + 4) + 4 + 4 * 20
    for seed in (0, 1):
        # The control ran exactly as many steps as the self-improving stage, in the seed's folder.
        si = (out / f"seed_{seed}" / "self_improve" / "log.csv").read_text().strip().splitlines()
        control = (out / f"seed_{seed}" / "control" / "log.csv").read_text().strip().splitlines()
        assert len(si) == len(control) > 1
        assert (out / f"seed_{seed}" / "eval" / "warmup" / "calibration.json").exists()
    logs = {p: p.read_text() for p in out.glob("seed_*/*/log.csv")}
    assert len(logs) == 6  # warm-up, self-improvement and control of each seed
    times = json.loads((out / "stage_times.json").read_text())
    assert all(r["done"] and r["seconds"] > 0 for r in times.values()), times
    table = report[report.index("## Time per stage") :]
    # Running again resumes: nothing is re-trained, the stage times and the report come back the same.
    assert main(args[:-1]) == 0  # with progress bars: none for stages that have nothing left to do
    assert {p: p.read_text() for p in out.glob("seed_*/*/log.csv")} == logs
    assert json.loads((out / "stage_times.json").read_text()) == times
    again = (out / "report.md").read_text()
    assert again[again.index("## Time per stage") :] == table
    resumed = capsys.readouterr()
    assert "report written to" in resumed.out and "seed 0 (1/2) - stage 5/5: evaluate" in resumed.out
    assert "create:" not in resumed.err  # no bar for a stage with nothing left to do


def _metrics(mean: float) -> dict:
    return {"mean": mean, "median": mean / 2, "a11": 50.0, "calibration_gap": 1.0, "pixels": 100}


def test_summary_pairs_the_seeds_and_the_verdict_states_the_interval():
    per_seed = {
        s: {arm: _metrics(10.0) for arm in ARMS} | {EXPLOIT: _metrics(e), CONTROL: _metrics(c)}
        for s, e, c in ((0, 17.0, 18.0), (1, 16.0, 17.5), (2, 17.0, 18.1))
    }
    summary = summarize(per_seed)
    d = summary["difference"]
    assert d["per_seed"] == pytest.approx({"0": -1.0, "1": -1.5, "2": -1.1})
    assert d["mean"] == pytest.approx(-1.2) and d["std"] == pytest.approx(0.26457513)
    half = 4.303 * 0.26457513 / 3**0.5  # t(0.975, 2 df)
    assert d["ci95"] == pytest.approx([-1.2 - half, -1.2 + half])
    assert summary["arms"][EXPLOIT]["mean"]["mean"] == pytest.approx(50 / 3)
    text = _verdict(d, 3)
    assert text.startswith("Self-improvement beat training longer on these scenes: difference -1.20 deg")
    assert f"95 % interval [{-1.2 - half:+.2f}, {-1.2 + half:+.2f}]" in text
    # Two seeds that disagree: the interval includes 0 and the text says the interval is wide.
    two = summarize({0: per_seed[0], 1: per_seed[0] | {EXPLOIT: _metrics(19.0)}})["difference"]
    text = _verdict(two, 2)
    assert text.startswith("Self-improvement did not beat training longer")
    assert "includes 0" in text and "With 2 seeds the interval is wide" in text


def test_stage_times_add_the_runs_of_an_interrupted_stage(tmp_path):
    times = StageTimes(tmp_path / "t.json")

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        times.run("warm-up", interrupted)
    first = times.seconds("warm-up")
    assert first is not None and not times.records["warm-up"]["done"]
    assert times.run("warm-up", lambda: ("ok", True)) == "ok"
    resumed = StageTimes(tmp_path / "t.json")  # read back from the file
    assert resumed.records["warm-up"]["done"] and resumed.seconds("warm-up") >= first
    total = resumed.seconds("warm-up")
    resumed.run("warm-up", lambda: (None, False))  # already done: the time is kept
    assert StageTimes(tmp_path / "t.json").seconds("warm-up") == total


def _shipped() -> bool:
    from importlib import resources

    return (
        "tiny-scenes" in PRESETS
        and (
            resources.files("diff2in1.presets")
            / "tiny-scenes"
            / "unet"
            / "diffusion_pytorch_model.safetensors"
        ).is_file()
    )
