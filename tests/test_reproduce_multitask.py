"""`diff2in1 reproduce --tasks`: the multi-task recipe on a NYUD-MT folder, its settings, its checks."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import yaml

from diff2in1.cli import main
from diff2in1.config import ReproduceConfig
from diff2in1.errors import InputError
from diff2in1.workflows import reproduce as rep
from test_captioning import blip_dir  # noqa: F401  (fixture)
from test_multitask_data import _nyudmt
from test_reproduce import _stages

TASKS = "normals,depth,segmentation"


def _files(root) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_multitask_dry_run_on_a_nyudmt_folder(tmp_path, blip_dir, capsys):  # noqa: F811
    data = _nyudmt(tmp_path / "nyudmt", ("a1", "a2", "a3", "a4", "a5"), ("b1", "b2", "b3"), h=24, w=32)
    before = _files(data)
    out = tmp_path / "out"
    args = ["--threads", "1", "reproduce", "--dry-run", "--data", str(data), "--out", str(out)]
    args.append("--no-progress")
    rc = main([*args, "--tasks", "depth,segmentation,normals", "--caption-model", str(blip_dir)])
    assert rc == 0, capsys.readouterr().err
    stages = _stages(capsys.readouterr().out)
    assert stages["captions"] == "ran" and stages["warm-up"] == stages["creation"] == "ran"
    assert [stages[f"evaluate {h}"] for h in rep.HEADS] == ["ran"] * 3
    root = out / "dry_run"
    assert _files(data) == before  # the given folder is only read

    # The NYUD-MT copy of the dry run; the captioned training images creation reads.
    assert (root / "data" / "gt_sets" / "train.txt").read_text().split() == ["a1", "a2", "a3", "a4"]
    assert (root / "data" / "gt_sets" / "val.txt").read_text().split() == ["b1", "b2"]
    captions = sorted(p.stem for p in (root / "source" / "train" / "caption").glob("*.txt"))
    assert captions == ["a1", "a2", "a3", "a4"]
    # Multi-modal creation: every task's label for every created sample, the NYU 40 classes.
    syn = root / "synthetic"
    for sub, ext in (("img", "png"), ("norm", "png"), ("depth", "npy"), ("seg", "png"), ("seg_conf", "npy")):
        assert len(list((syn / "train" / sub).glob(f"*.{ext}"))) == 4, sub
    assert len(json.loads((syn / "classes.json").read_text())["classes"]) == 40
    for sub in ("head", "head_depth", "head_segmentation"):
        assert (root / "warmup" / sub / "config.json").exists(), sub
    for name in ("exploitation", "creation"):
        for task in ("", "_depth", "_segmentation"):
            assert (root / "self_improve" / f"{name}{task}" / "config.json").exists(), name + task
    si = yaml.safe_load((root / "self_improve" / "config.yaml").read_text())
    assert si["tasks"] == TASKS and si["pseudo_labels"] == "research"
    assert si["depth_init"] == str(root / "warmup" / "head_depth")

    # Every task's metrics per head, on NYUD-MT's val list, in metrics.json and the report.
    metrics = json.loads((root / "metrics.json").read_text())
    assert set(metrics) == set(rep.HEADS)
    for m in metrics.values():
        values = [m["mean"], m["depth"]["abs_rel"], m["depth"]["delta1"], m["segmentation"]["miou"]]
        assert all(math.isfinite(v) for v in values) and 0 <= m["segmentation"]["pixel_acc"] <= 1
    report = (root / "report.md").read_text()
    assert "## Depth on `val` (2 images)" in report and "## Segmentation on `val` (2 images)" in report
    assert "Tasks: normals, depth, segmentation" in report
    saved = yaml.safe_load((root / "reproduce.yaml").read_text())
    assert saved["warmup"]["tasks"] == saved["self_improve"]["tasks"] == TASKS

    # Continuing with other tasks is refused in one line; with the same ones everything is done.
    assert main([*args, "--tasks", "normals"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"warmup.tasks: '{TASKS}' -> 'normals'" in err
    assert main([*args, "--tasks", TASKS, "--pseudo-labels", "weighted"]) == 2
    assert "self_improve.pseudo_labels: 'research' -> 'weighted'" in capsys.readouterr().err
    assert main([*args, "--tasks", TASKS]) == 0
    assert set(_stages(capsys.readouterr().out).values()) == {"skipped"}


def test_a_missing_label_folder_is_named_before_any_model_loads(tmp_path, capsys):
    data = _nyudmt(tmp_path / "nyudmt", ("a1", "a2"), ("b1",))
    shutil.rmtree(data / "segmentation")
    out = tmp_path / "out"
    base = ["reproduce", "--backbone", "no-such-backbone", "--out", str(out), "--no-progress"]
    assert main([*base, "--data", str(data)]) == 2  # normals alone: the NYUv2 layout only
    assert "a NYUD-MT folder, read with --tasks" in capsys.readouterr().err
    assert main(["reproduce", "--plan", "--data", str(data), "--tasks", TASKS]) == 0
    assert "for 2 train / 1 test images" in capsys.readouterr().out  # train.txt, val.txt
    assert main([*base, "--data", str(data), "--tasks", TASKS]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"diff2in1: error: {data / 'segmentation'}: no such folder "
        "(the segmentation labels that --tasks segmentation needs)"
    )
    assert not out.exists()

    from diff2in1.data.scenes import make_scenes

    scenes = tmp_path / "scenes"
    make_scenes(scenes, 2, 1, size=16, seed=0, progress=False)
    shutil.rmtree(scenes / "test" / "depth")
    assert main([*base, "--data", str(scenes), "--tasks", "normals,depth"]) == 2
    assert f"{scenes / 'test' / 'depth'}: no such folder" in capsys.readouterr().err
    assert not out.exists()


def test_tasks_wire_every_stage_and_normals_stay_the_recipe():
    base = ReproduceConfig(data="NYU", backbone="model.ckpt", out="runs/r")
    normals = rep.stage_configs(rep.complete(base))
    assert rep.tasks_of(base) == ("normals",)
    assert (normals.create.depth_head, normals.create.segmentation_head) == ("", "")
    assert normals.warmup.tasks == normals.self_improve.tasks == "normals"
    assert normals.self_improve.pseudo_labels == "research" and normals.self_improve.depth_init == ""

    cfg = rep.complete(rep.with_flags(base, tasks="segmentation,normals,depth", pseudo_labels="weighted"))
    assert cfg.warmup["tasks"] == cfg.self_improve["tasks"] == TASKS  # one spelling, recorded
    st = rep.stage_configs(cfg)
    assert st.create.head == "runs/r/warmup/head" and st.create.depth_head == "runs/r/warmup/head_depth"
    assert st.create.segmentation_head == "runs/r/warmup/head_segmentation"
    assert st.self_improve.segmentation_init == "runs/r/warmup/head_segmentation"
    assert st.self_improve.pseudo_labels == "weighted" and st.warmup.tasks == TASKS

    # The folder names agree with the ones the stages save.
    from diff2in1.stages.self_improve import pair_names
    from diff2in1.stages.warmup import HEAD_FOLDERS

    for task in ("normals", "depth", "segmentation"):
        assert rep.head_folder("warmup", task) == HEAD_FOLDERS[task]
        assert (rep.head_folder("creation", task), rep.head_folder("exploitation", task)) == pair_names(task)

    with pytest.raises(InputError, match="create: depth_head is set by reproduce itself"):
        rep.stage_configs(dataclasses.replace(cfg, create={**cfg.create, "depth_head": "mine"}))
    with pytest.raises(InputError, match=r"warmup.tasks \(normals,depth\) and self_improve.tasks"):
        rep.tasks_of(dataclasses.replace(cfg, warmup={"tasks": "normals,depth"}))
    with pytest.raises(InputError, match="--tasks: the recipe needs normals"):
        rep.tasks_of(rep.with_flags(base, tasks="depth"))
    with pytest.raises(InputError, match="unknown task 'edges'"):
        rep.tasks_of(rep.with_flags(base, tasks="normals,edges"))


@pytest.mark.parametrize("tasks", [TASKS, "normals,depth"])
def test_plan_scales_the_multitask_stages_by_the_measured_ratio(tasks, capsys):
    assert main(["reproduce", "--plan", "--tasks", tasks]) == 0
    text = capsys.readouterr().out
    m = rep.cost_plan.measured()
    alone = rep.plan_stages(ReproduceConfig(), 795, 654)[0]
    stages, _ = rep.plan_stages(rep.with_flags(ReproduceConfig(), tasks=tasks), 795, 654)
    dense = len(tasks.split(",")) - 1
    measured = m["multitask"]["prediction_seconds"]  # 24.7 s three heads, 21.8 s normals alone
    ratio = 1 + dense * (measured["three_heads"] / measured["normals"] - 1) / 2
    assert ratio == pytest.approx(24.7 / 21.8 if dense == 2 else 1 + (24.7 / 21.8 - 1) / 2)
    for col in (("h100", "bf16"), ("cpu", "fp32")):
        t = m["devices"][col[0]]["seconds_per_image"][col[1]]
        # Warm-up: the cached steps scaled, the one VAE encoder pass per image not.
        encode = 795 * (t["warmup_step"] - t["warmup_step_cached"])
        assert stages[0].seconds[col] == pytest.approx(39600 * t["warmup_step_cached"] * ratio + encode)
        assert stages[2].seconds[col] == pytest.approx(alone[2].seconds[col] * ratio)
        assert stages[3].seconds[col] == pytest.approx(alone[3].seconds[col] * ratio)
        # Creation: the same UNet passes, plus the dense heads' share of one prediction per sample.
        per_sample = alone[1].seconds[col] / 795
        factor = rep.cost_plan.batch_factor(m, *col, "created_sample", 4)[0]
        extra = (ratio - 1) * t["prediction"] * factor
        assert stages[1].seconds[col] == pytest.approx(795 * (per_sample + extra))
    # The FLOPs of a head pass count every task's head.
    per_pass = m["flops_g_per_pass"]
    flops = m["multitask"]["flops_g_per_pass"]
    added = sum(flops[t]["head_train"] for t in tasks.split(",")[1:])
    warm = stages[0].flops({**per_pass, "head_train": per_pass["head_train"] + added}, 1.0)
    assert warm == pytest.approx(alone[0].flops(per_pass, 1.0) + 39600 * added * 1e9)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert f"{warm / 1e15:.1f} |" in rows["warm-up"] and "3 head sets x 654 images" in rows["evaluation"]
    assert "took 24.7 s against 21.8 s with the normal head alone" in text
    assert f"Scaled by {ratio:.3f}x" in text and "The H100 columns use this CPU ratio" in text
    assert "with the normal head alone. At batch 8" in text


def test_the_dry_run_copies_the_configured_evaluation_split(tmp_path):
    """A NYUD-MT folder with train, val and test lists: the dry run's copy holds the split the run
    evaluates (`evaluate.split`), not always `test`; without test.txt, `test` means val."""
    from diff2in1.workflows.reproduce.run import make_dry_run_data

    data = _nyudmt(tmp_path / "nyudmt", ("a1", "a2", "a3", "a4", "a5"), ("b1", "b2", "b3"), h=6, w=8)
    make_dry_run_data(str(data), tmp_path / "no_test", False, ("depth",), test_split="test")
    assert (tmp_path / "no_test" / "gt_sets" / "val.txt").read_text().split() == ["b1", "b2"]
    (data / "gt_sets" / "test.txt").write_text("a5\nb3\n")
    for split, ids in (("val", ["b1", "b2"]), ("test", ["a5", "b3"])):
        out = tmp_path / split
        make_dry_run_data(str(data), out, False, ("depth",), test_split=split)
        lists = sorted(p.name for p in (out / "gt_sets").iterdir())
        assert lists == sorted({"train.txt", f"{split}.txt"}), lists
        assert (out / "gt_sets" / f"{split}.txt").read_text().split() == ids
        assert sorted(p.stem for p in (out / "depth").iterdir()) == sorted(["a1", "a2", "a3", "a4", *ids])
