"""`diff2in1 demo --quick` end to end on all three tasks (one run shared by the tests of this file):
every stage runs, the report has a table per task and every figure, a re-run does nothing, a folder
made with other tasks is refused, a NaN head does not exit 0; the statistics, the verdict per task
and the report's two-seed parts on made-up numbers."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
from PIL import Image

from diff2in1.backbone import PRESETS
from diff2in1.cli import main
from diff2in1.errors import InputError
from diff2in1.workflows.demo import ARMS, CONTROL, CREATION, EXPLOIT, WARMUP, StageTimes, run_demo
from diff2in1.workflows.demo_report import _verdict, report, summarize, summarize_all
from diff2in1.workflows.demo_settings import DEFAULT_PSEUDO_LABELS, DemoConfig

TASKS = ("normals", "depth", "segmentation")


def _backbone() -> str:
    return "tiny-scenes" if _shipped() else "tiny"


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One quick demo of the three tasks: (folder, its command line, what it printed)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    # One thread: two threads on a machine whose cores other jobs hold wait on each other.
    args = ["--threads", "1", "demo", "--quick", "--out", str(out), "--backbone", _backbone()]
    args.append("--no-progress")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0
    return out, args, printed.getvalue()


def test_demo_quick_shows_every_task(quick_demo):
    out, _, stdout = quick_demo
    assert "smoke run (--quick)" in stdout and "report written to" in stdout
    # One header per stage even with --no-progress: position, time so far, estimate of what is left.
    headers = [line for line in stdout.splitlines() if line.startswith("[demo] ") and " so far; " in line]
    assert len(headers) == 1 + 5 + 1, headers
    assert headers[0].startswith("[demo] make scenes (0 s so far; estimate after the first stage)")
    assert "[demo] seed 0 (1/1) - stage 2/5: create data (" in stdout
    assert all("left)" in h for h in headers[1:]) and "[demo] 1 CPU thread(s) (--threads)" in stdout
    report_text = (out / "report.md").read_text()
    for part in (
        "Smoke run (`--quick`)",
        "Tasks: normals, depth, segmentation",
        f"Synthetic labels (`--pseudo-labels`): **{DEFAULT_PSEUDO_LABELS}**",
        "### normals",
        "| arm | mean error | median error | <11.25 (%) | calib. gap |",
        "### depth",
        "| arm | AbsRel | RMSE (m) | delta1 (<1.25) |",
        "### segmentation",
        "| arm | mIoU | pixel accuracy |",
        "| self-improved (exploitation) |",
        "Per seed: self-improved minus control (AbsRel)",
        "no interval with one seed",
        "fig_samples.png",
        "fig_depth.png",
        "fig_segmentation.png",
        "fig_synthetic.png",
        "fig_losses.png",
        "fig_calibration.png",
        "| seed 0 | all |",
    ):
        assert part in report_text, part
    assert "## Verdict" not in report_text and "beat" not in report_text  # a smoke run gives none
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tasks"] == list(TASKS) and metrics["pseudo_labels"] == DEFAULT_PSEUDO_LABELS
    for task, key in (("normals", "mean"), ("depth", "abs_rel"), ("segmentation", "miou")):
        per_seed = metrics[task]["per_seed"]["0"]
        assert set(per_seed) == set(ARMS)
        d = per_seed[EXPLOIT][key] - per_seed[CONTROL][key]
        assert metrics[task]["difference"]["per_seed"]["0"] == pytest.approx(d)
    m = metrics["normals"]["per_seed"]["0"][WARMUP]
    assert 0 <= m["mean"] <= 180 and m["calibration_gap"] >= 0
    m = metrics["depth"]["per_seed"]["0"][WARMUP]
    assert m["abs_rel"] > 0 and 0 <= m["delta1"] <= 1
    m = metrics["segmentation"]["per_seed"]["0"][WARMUP]
    assert 0 <= m["miou"] <= m["pixel_acc"] + 1 and 0 <= m["pixel_acc"] <= 1
    # Every arm's heads differ: the creation heads follow, the control trains on without synthetic data.
    assert metrics["depth"]["per_seed"]["0"][EXPLOIT] != metrics["depth"]["per_seed"]["0"][CONTROL]
    assert metrics["segmentation"]["per_seed"]["0"][CREATION] != {}
    for fig in ("fig_samples.png", "fig_depth.png", "fig_segmentation.png", "fig_synthetic.png"):
        w, h = Image.open(out / fig).size
        assert w > 4 * 128 and h > 128, fig  # 4 columns of 128-px cells at least, a row or more
    for fig in ("fig_losses.png", "fig_calibration.png"):
        assert Image.open(out / fig).size[0] > 200
    sd = out / "seed_0"
    # The synthetic set holds every task's label; each stage trained every task's head.
    for folder in ("img", "norm", "depth", "seg"):
        assert len(list((sd / "synthetic" / "train" / folder).iterdir())) == 8, folder
    for head in ("head", "head_depth", "head_segmentation"):
        assert (sd / "warmup" / head).is_dir() and (sd / "control" / head).is_dir()
    for head in ("exploitation_depth", "creation_segmentation"):
        assert (sd / "self_improve" / head).is_dir()
    # The control ran exactly as many steps as the self-improving stage.
    si = (sd / "self_improve" / "log.csv").read_text().strip().splitlines()
    control = (sd / "control" / "log.csv").read_text().strip().splitlines()
    assert len(si) == len(control) > 1
    recorded = json.loads((out / "demo_config.json").read_text())
    assert recorded["tasks"] == ",".join(TASKS) and recorded["pseudo_labels"] == DEFAULT_PSEUDO_LABELS
    times = json.loads((out / "stage_times.json").read_text())
    assert all(r["done"] and r["seconds"] > 0 for r in times.values()), times


def test_demo_run_again_does_nothing(quick_demo, capsys):
    out, args, _ = quick_demo
    logs = {p: p.read_text() for p in out.glob("seed_*/*/log.csv")}
    assert len(logs) == 3  # warm-up, self-improvement and control
    times = json.loads((out / "stage_times.json").read_text())
    before = (out / "report.md").read_text()
    # Running again resumes: nothing is re-trained, the stage times and the report come back the same.
    assert main(args[:-1]) == 0  # with progress bars: none for stages that have nothing left to do
    assert {p: p.read_text() for p in out.glob("seed_*/*/log.csv")} == logs
    assert json.loads((out / "stage_times.json").read_text()) == times
    assert (out / "report.md").read_text() == before
    resumed = capsys.readouterr()
    assert "report written to" in resumed.out and "seed 0 (1/1) - stage 5/5: evaluate" in resumed.out
    assert "create:" not in resumed.err  # no bar for a stage with nothing left to do


def test_demo_refuses_a_folder_made_with_other_tasks(quick_demo, capsys):
    out, args, _ = quick_demo
    recorded = (out / "demo_config.json").read_text()
    assert main([*args, "--tasks", "normals"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"diff2in1: error: {out}: a demo made with other settings")
    assert "--tasks: 'normals,depth,segmentation' -> 'normals'" in err
    other = "filtered" if DEFAULT_PSEUDO_LABELS != "filtered" else "research"
    assert main([*args, "--pseudo-labels", other]) == 2
    assert f"--pseudo-labels: '{DEFAULT_PSEUDO_LABELS}' -> '{other}'" in capsys.readouterr().err
    assert (out / "demo_config.json").read_text() == recorded


def test_demo_with_a_nan_head_does_not_exit_0(quick_demo, capsys):
    out, args, _ = quick_demo
    sd = out / "seed_0"
    head = sd / "self_improve" / "exploitation_depth"
    weights = next(p for p in head.iterdir() if p.suffix == ".safetensors")
    saved_weights, saved_eval = weights.read_bytes(), sd / "eval_saved"
    shutil.copytree(sd / "eval", saved_eval)
    try:
        from safetensors.torch import load_file, save_file

        tensors = {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v
                   for k, v in load_file(weights).items()}  # fmt: skip
        save_file(tensors, weights)
        shutil.rmtree(sd / "eval" / "exploitation")
        assert main(args) == 2
        assert "the depth predictions are not finite (NaN)" in capsys.readouterr().err
    finally:
        weights.write_bytes(saved_weights)
        shutil.rmtree(sd / "eval")
        saved_eval.rename(sd / "eval")


def test_demo_with_a_self_improving_stage_that_logged_nothing_does_not_exit_0(quick_demo, capsys):
    """The control trains as many steps as the self-improving stage logged: none is an error, not
    a control without end."""
    out, args, _ = quick_demo
    log = out / "seed_0" / "self_improve" / "log.csv"
    kept = log.read_bytes()
    log.unlink()
    try:
        assert main(args) == 2
        assert "self_improve: its log.csv records no step" in capsys.readouterr().err
    finally:
        log.write_bytes(kept)


def test_demo_that_would_train_nothing_is_refused(tmp_path):
    out = str(tmp_path / "d")
    cfg = DemoConfig.quick(out=out, backbone=_backbone(), train=2, batch_size=4, progress=False)
    with pytest.raises(InputError, match="give no batch"):
        run_demo(cfg)


def test_demo_settings_are_checked():
    with pytest.raises(InputError, match="needs normals"):
        DemoConfig(tasks="depth")
    with pytest.raises(InputError, match="unknown task 'colour'"):
        DemoConfig(tasks="normals,colour")
    assert DemoConfig(tasks="segmentation,normals").tasks == "normals,segmentation"
    assert DemoConfig().tasks == ",".join(TASKS) and DemoConfig().pseudo_labels == "weighted"


def _metrics(mean: float) -> dict:
    shares = {"a11": 50.0, "a22": 70.0, "a30": 80.0, "calibration_gap": 1.0, "pixels": 100}
    return {"mean": mean, "median": mean / 2, "rmse": mean * 1.5, **shares}


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


def test_verdict_of_a_higher_is_better_metric():
    """mIoU: a positive difference is self-improvement better."""
    miou = {0: (0.52, 0.50), 1: (0.531, 0.51), 2: (0.529, 0.51)}
    per_seed = {
        s: {arm: {"miou": 0.4, "pixel_acc": 0.8} for arm in ARMS}
        | {EXPLOIT: {"miou": e, "pixel_acc": 0.8}, CONTROL: {"miou": c, "pixel_acc": 0.8}}
        for s, (e, c) in miou.items()
    }
    d = summarize(per_seed, "segmentation")["difference"]
    assert d["mean"] == pytest.approx(0.02) and d["ci95"][0] > 0
    assert _verdict(d, 3, "segmentation").startswith("Self-improvement beat training longer on these scenes")
    worse = {s: m | {EXPLOIT: m[CONTROL], CONTROL: m[EXPLOIT]} for s, m in per_seed.items()}
    text = _verdict(summarize(worse, "segmentation")["difference"], 3, "segmentation")
    assert text.startswith("Self-improvement did not beat") and "The control" in text


def test_report_of_two_seeds_has_every_task_with_intervals(tmp_path):
    """The report's parts that need two seeds (spread, interval, verdict per task), on made-up
    numbers: the control is worse by 1 deg, 0.01 AbsRel and 0.01 mIoU on both seeds."""
    cfg = DemoConfig(seeds=(0, 1))
    task_metrics = {
        "normals": _metrics,
        "depth": lambda v: {k: v / 100 for k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10")}
        | {"delta1": 0.9, "delta2": 0.95, "delta3": 0.99},
        "segmentation": lambda v: {"miou": 1 - v / 100, "pixel_acc": 0.9, "mean_acc": 0.8},
    }
    per_seed = {
        s: {arm: {t: f(17.0 + s + (arm == CONTROL)) for t, f in task_metrics.items()} for arm in ARMS}
        for s in (0, 1)
    }
    summary = summarize_all(cfg, per_seed)
    assert summary["depth"]["difference"]["per_seed"] == pytest.approx({"0": -0.01, "1": -0.01})
    assert summary["segmentation"]["difference"]["mean"] == pytest.approx(0.01)
    run = {"warm": {"steps": 160}, "si": {"steps": 80}, "control": {"steps": 80}}
    figures = {k: f"fig_{k}.png" for k in ("samples", "depth", "segmentation", "calibration", "losses")}
    text = report(cfg, {0: run, 1: run}, summary, StageTimes(tmp_path / "times.json"), figures)
    for part in (
        "## Verdict",
        "**normals**: Self-improvement beat training longer on these scenes: difference -1.00 deg",
        "**depth**: Self-improvement beat training longer on these scenes: difference -0.0100,",
        "**segmentation**: Self-improvement beat training longer on these scenes: difference +0.0100,",
        "positive = self-improvement better",
        "2 training seed(s) (0, 1)",
        "18.50 ± 0.71",  # the control's mean error over the two seeds
        "95 % interval [-0.0100, -0.0100]",
        "| 1 | 18.00 | 18.00 | 19.00 | -1.00 |",
        "![depth](fig_depth.png)",
        "| seed 0 | seed 1 | all |",
    ):
        assert part in text, part


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
