"""`diff2in1 reproduce`: the whole method in one command, its dry run, resume, plan and settings."""

from __future__ import annotations

import csv
import dataclasses
import shutil
from importlib import resources

import pytest
import yaml

from diff2in1.cli import main
from diff2in1.config import ReproduceConfig, default_yaml, load_config
from diff2in1.errors import InputError
from diff2in1.workflows import reproduce as rep
from test_captioning import blip_dir  # noqa: F401  (fixture)

WEIGHTS = "diffusion_pytorch_model.safetensors"


def _stages(out: str) -> dict[str, str]:
    """The `[reproduce] <stage>: <status> (...)` lines of a run's stdout."""
    found = {}
    for line in out.splitlines():
        if line.startswith("[reproduce] ") and ": " in line and line.endswith(" s)"):
            name, rest = line[len("[reproduce] ") :].split(": ", 1)
            found[name] = rest.split(" (")[0]
    return found


def test_dry_run_runs_every_stage_and_continues_after_a_crash(tmp_path, monkeypatch, capsys):
    import diff2in1.stages.self_improve as si_module

    out = tmp_path / "repro"
    args = ["--threads", "1", "reproduce", "--dry-run", "--out", str(out), "--no-progress"]
    real = si_module.train_self_improve

    def crash_after_one_step(cfg, resume=False, backbone=None):
        real(dataclasses.replace(cfg, max_steps=1), resume=resume, backbone=backbone)
        raise KeyboardInterrupt  # as if killed after the first saved step

    monkeypatch.setattr(si_module, "train_self_improve", crash_after_one_step)
    assert main(args) == 130
    first = _stages(capsys.readouterr().out)
    assert first == {"captions": "skipped", "warm-up": "ran", "creation": "ran"}
    root = out / "dry_run"
    head = root / "warmup" / "head" / WEIGHTS
    made = head.stat().st_mtime_ns, (root / "synthetic" / "manifest.jsonl").stat().st_mtime_ns

    monkeypatch.setattr(si_module, "train_self_improve", real)
    assert main(args) == 0
    second = _stages(capsys.readouterr().out)
    assert second["warm-up"] == "skipped" and second["creation"] == "skipped"
    assert second["self-improve"] == "resumed"
    assert [second[f"evaluate {h}"] for h in ("warmup", "exploitation", "creation")] == ["ran"] * 3
    assert (head.stat().st_mtime_ns, (root / "synthetic" / "manifest.jsonl").stat().st_mtime_ns) == made
    # The resumed stage continued: one log row per step, 4 + 4 samples at batch 2 -> 4 steps.
    rows = list(csv.DictReader((root / "self_improve" / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]

    # The folders of the single commands, the settings, the report.
    for sub in ("warmup/head", "self_improve/exploitation", "self_improve/creation"):
        assert (root / sub / WEIGHTS).exists(), sub
    assert len(list((root / "synthetic" / "train" / "img").glob("*.png"))) == 4
    for h in rep.HEADS:
        assert (root / f"eval_{h}" / "metrics.json").exists()
    saved = yaml.safe_load((root / "reproduce.yaml").read_text())
    assert saved["backbone"] == "tiny-scenes" and saved["resolution"] == [64, 64]
    assert saved["warmup"]["drop_last"] is True and saved["warmup"]["lr"] == 3.57e-4
    report = (root / "report.md").read_text()
    assert "Dry run" in report and "ours: self-improved, exploitation head" in report
    assert "StableNormal README" in report and "**unconfirmed**" in report

    # A third run finds everything done.
    assert main(args) == 0
    third = _stages(capsys.readouterr().out)
    assert set(third.values()) == {"skipped"} and len(third) == 7

    # Other settings in the same folder are refused, naming the setting.
    cfg = tmp_path / "c.yaml"
    cfg.write_text("warmup:\n  lr: 0.001\n")
    assert main([*args, "--config", str(cfg)]) == 2
    assert "warmup.lr: 0.000357 -> 0.001" in capsys.readouterr().err


def test_missing_captions_are_a_one_line_error(tmp_path, capsys):
    from diff2in1.data.scenes import make_scenes

    data = tmp_path / "data"
    make_scenes(data, 8, 1, size=32, seed=0, progress=False)
    shutil.rmtree(data / "train" / "caption")
    out = tmp_path / "out"
    rc = main(["reproduce", "--data", str(data), "--backbone", "tiny", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "--caption-model" in err and "8 of 8" in err
    assert not (out / "warmup").exists()


def test_dry_run_on_given_data_captions_a_copy(tmp_path, blip_dir, capsys):  # noqa: F811
    from diff2in1.data.scenes import make_scenes

    data = tmp_path / "data"
    make_scenes(data, 5, 2, size=32, seed=0, progress=False)
    shutil.rmtree(data / "train" / "caption")
    out = tmp_path / "out"
    args = ["reproduce", "--dry-run", "--data", str(data), "--out", str(out), "--no-progress"]
    rc = main(["--threads", "1", *args, "--caption-model", str(blip_dir)])
    assert rc == 0, capsys.readouterr().err
    assert _stages(capsys.readouterr().out)["captions"] == "ran"
    captions = sorted((out / "dry_run" / "data" / "train" / "caption").glob("*.txt"))
    assert len(captions) == 4 and all("cat" in c.read_text() for c in captions)
    assert not (data / "train" / "caption").exists()  # the given data are only read


def test_plan_follows_the_research_recipe(capsys):
    assert main(["reproduce", "--plan"]) == 0
    text = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "795 train / 654 test" in text
    # Warm-up: 50 epochs x 99 steps x batch 8 = 39,600 UNet passes, each image encoded once.
    assert "50 ep x 99 steps x 8 | 39,600 | 795 | 0 | 0 | 39,600" in rows["warm-up"]
    assert "795 samples x 50 DDIM steps | 39,750 | 795 | 795 | 795 | 0" in rows["creation"]
    assert "50 ep x 198 steps x 8 | 79,200 | 1,590 | 0 | 79,200 | 79,200" in rows["self-improve"]
    assert "3 heads x 654 images | 1,962 | 1,962 | 0 | 1,962 | 0" in rows["evaluation"]
    assert "2026-11-25" in text and "estimate" in text
    stages, m = rep.plan_stages(ReproduceConfig(), 795, 654)
    warm = stages[0]
    h100 = m["devices"]["h100"]["seconds_per_image"]["bf16"]
    assert warm.seconds[("h100", "bf16")] == pytest.approx(39600 * 0.081 + 795 * (0.103 - 0.081))
    assert stages[1].seconds[("h100", "bf16")] == pytest.approx(795 * h100["created_sample"])
    # Creation and evaluation run at batch 4: on the CPU, whose batched figures measured.yaml holds,
    # the per-image time is scaled by the measured batch-4 / batch-1 ratio; on the H100 (no batched
    # figures) it stays at batch 1, and the plan says so.
    created = (3.9 + 3.5) / (5.2 + 6.8)  # seconds per sample, two runs, batch 4 / batch 1
    predicted = (1 / 5.17 + 1 / 4.54) / (1 / 4.55 + 1 / 3.33)  # from images/s, two runs
    assert rep.cost_plan.batch_factor(m, "cpu", "fp32", "created_sample", 4) == (pytest.approx(created), 4)
    assert rep.cost_plan.batch_factor(m, "cpu", "fp32", "prediction", 6) == (pytest.approx(predicted), 4)
    assert rep.cost_plan.batch_factor(m, "cpu", "fp32", "prediction", 1) == (1.0, 1)
    for col in (("h100", "bf16"), ("cpu", "bf16")):
        assert rep.cost_plan.batch_factor(m, *col, "prediction", 32) == (1.0, 1)
    cpu = m["devices"]["cpu"]["seconds_per_image"]["fp32"]
    assert stages[1].seconds[("cpu", "fp32")] == pytest.approx(795 * cpu["created_sample"] * created)
    assert stages[3].seconds[("cpu", "fp32")] == pytest.approx(1962 * cpu["prediction"] * predicted)
    assert stages[3].seconds[("h100", "fp32")] == pytest.approx(1962 * 0.075)
    assert "creation at batch 4: 0.62x (measured at batch 4)" in text
    assert "creation and evaluation on 2-core CPU bf16, H100 bf16, H100 fp32" in text
    assert "none on a GPU" in text and "Tasks" not in text


def test_shipped_settings_are_the_research_recipe():
    path = resources.files("diff2in1.configs") / "reproduce.yaml"
    text = path.read_text()
    assert yaml.safe_load(text) == yaml.safe_load(default_yaml(ReproduceConfig))  # regenerate if not
    cfg = load_config(ReproduceConfig, str(path))
    assert cfg == ReproduceConfig()
    st = rep.stage_configs(dataclasses.replace(cfg, data="NYU", backbone="model.ckpt", out="runs/repro"))
    for c in (st.warmup, st.self_improve):
        assert (c.lr, c.batch_size, c.epochs, c.seed, c.drop_last) == (3.57e-4, 8, 50, 42, True)
        assert c.resize == "research" and c.resolution == (512, 512)
    assert st.warmup.head == "reference" and st.warmup.out == "runs/repro/warmup"
    assert (st.create.t_start, st.create.steps, st.create.guidance) == (600, 50, 1.0)
    assert st.create.head == st.self_improve.init == "runs/repro/warmup/head"
    assert st.self_improve.synthetic == ["runs/repro/synthetic"]
    assert (st.self_improve.ema_decay, st.self_improve.ema_every) == (0.998, 10)
    assert st.evaluate.split == "test"
    status = {r["method"]: r["status"] for r in rep.published_rows()}
    assert status["Bae et al. 2021"] == status["Diff-2-in-1 (paper)"] == "unconfirmed"
    with pytest.raises(InputError, match="resolution is set for every stage"):
        rep.stage_configs(dataclasses.replace(cfg, warmup={"lr": 1.0, "resolution": 64}))
    with pytest.raises(InputError, match="unknown setting.*learning_rate"):
        rep.stage_configs(dataclasses.replace(cfg, self_improve={"learning_rate": 1.0}))
