"""Fault injection: every bad input is a one-line `diff2in1: error: ...` (exit 2) or a listed skip,
no run mixes or overwrites data, and kill -9 / Ctrl-C then resume is exact.

The table below runs each case through the real command line (in process, so it is fast); the
kill/interrupt cases run the command as a subprocess and signal it mid-run.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from diff2in1.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _quiet_progress():
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()


# --------------------------------------------------------------------------------------- helpers
def copy_scenes(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("diff2in1: error: "), err
    assert len(lines) == 1, err  # nothing but the one line
    for w in words:
        assert w in lines[-1], (w, lines[-1])


def tree_state(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes (to prove a command changed nothing)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def warm_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train-warmup",
        "--data",
        data,
        "--backbone",
        "tiny",
        "--out",
        out,
        "--head",
        "small",
        "--resolution",
        "64",
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--num-workers",
        "0",
        "--no-progress",
        *extra,
    ]


def predict_args(images: Path, head: Path, out: Path, *extra: str, backbone: str = "tiny") -> list:
    return ["predict", images, "--backbone", backbone, "--head", head, "--out", out, *extra]


def eval_args(data: Path, head: Path, out: Path) -> list:
    return ["evaluate", "--data", data, "--backbone", "tiny", "--head", head, "--out", out, "--no-progress"]


def create_args(data: Path, head: Path, out: Path, *extra: str) -> list[str]:
    return [
        "create-data",
        "--data",
        data,
        "--backbone",
        "tiny",
        "--head",
        head,
        "--out",
        out,
        "--resolution",
        "64",
        "--t-start",
        "60",
        "--steps",
        "5",
        "--batch-size",
        "2",
        "--no-progress",
        *extra,
    ]


# ------------------------------------------------------------------------------ the case table
@dataclass
class Case:
    name: str
    make: Callable[[Path, Path, Path], list]  # (tmp, scenes copy, head) -> argv
    words: tuple[str, ...]


def _nan_head(tmp: Path, head: Path) -> Path:
    bad = tmp / "nan_head"
    shutil.copytree(head, bad)
    w = bad / "diffusion_pytorch_model.safetensors"
    state = load_file(w)
    state = {k: (v * float("nan") if v.is_floating_point() else v) for k, v in state.items()}
    save_file(state, w)
    return bad


def _head_config_edit(tmp: Path, head: Path, **changes) -> Path:
    bad = tmp / "edited_head"
    shutil.copytree(head, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg.update(changes)
    (bad / "config.json").write_text(json.dumps(cfg))
    return bad


def _yaml(tmp: Path, text: str) -> Path:
    p = tmp / "cfg.yaml"
    p.write_text(text)
    return p


def _folder_backbone(tmp: Path, tiny_folder: Path, damage: Callable[[Path], None]) -> Path:
    bb = tmp / "bb"
    shutil.copytree(tiny_folder, bb)
    damage(bb)
    return bb


def _without(argv: list, flag: str) -> list:
    i = argv.index(flag)
    return argv[:i] + argv[i + 2 :]


def _damaged_backbone(tmp: Path, how: str) -> Path:
    """The tiny backbone as a diffusers folder, with one part broken."""
    from diff2in1.backbone import load_backbone
    from diff2in1.diffusers_folder import save_diffusers_folder

    bb = save_diffusers_folder(load_backbone("tiny"), tmp / f"bb_{how}")
    te = bb / "text_encoder" / "model.safetensors"
    if how == "scheduler":
        (bb / "scheduler" / "scheduler_config.json").write_text('{"beta_start": "x", "beta_end": [1]}')
    elif how == "truncated":
        te.write_bytes(te.read_bytes()[:1000])
    elif how == "pickle":

        class Evil:
            def __reduce__(self):
                return (os.system, ("touch " + str(tmp / "PWNED"),))

        torch.save({**load_file(te), "evil": Evil()}, bb / "text_encoder" / "pytorch_model.bin")
        te.unlink()
    return bb


def _all_invalid(data: Path) -> None:
    for p in (data / "train" / "norm").glob("*.png"):
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(p)
    shutil.rmtree(data / "train" / "norm_npy", ignore_errors=True)


CASES = [
    Case("create-data --out equal to --data", lambda t, d, h: create_args(d, h, d), ("is the input",)),
    Case(
        "create-data --out inside --data",
        lambda t, d, h: create_args(d, h, d / "train" / "syn"),
        ("lies inside the input",),
    ),
    Case(
        "merge --out equal to --data",
        lambda t, d, h: ["merge", "--data", d, "--synthetic", d, "--out", d],
        ("is the input",),
    ),
    Case(
        "evaluate --out inside the data",
        lambda t, d, h: eval_args(d, h, d / "test" / "img"),
        ("lies inside the input",),
    ),
    Case(
        "predict --out equal to its input folder",
        lambda t, d, h: predict_args(d / "test" / "img", h, d / "test" / "img"),
        ("is the input",),
    ),
    Case("--epochs -1", lambda t, d, h: warm_args(d, t / "r", "--epochs", "-1"), ("--epochs",)),
    Case("--batch-size -3", lambda t, d, h: warm_args(d, t / "r", "--batch-size", "-3"), ("--batch-size",)),
    Case("--resolution 60", lambda t, d, h: warm_args(d, t / "r", "--resolution", "60"), ("multiple of 64",)),
    Case("--threads -1", lambda t, d, h: ["--threads", "-1", *warm_args(d, t / "r")], ("--threads",)),
    Case(
        "yaml batch_size: eight",
        lambda t, d, h: [
            *_without(warm_args(d, t / "r"), "--batch-size"),
            "--config",
            _yaml(t, "batch_size: eight\n"),
        ],
        ("batch_size", "integer"),
    ),
    Case(
        "yaml lr: fast",
        lambda t, d, h: [*warm_args(d, t / "r"), "--config", _yaml(t, "lr: fast\n")],
        ("lr", "number"),
    ),
    Case(
        "yaml resolution: abc",
        lambda t, d, h: [
            "train-warmup",
            "--data",
            d,
            "--backbone",
            "tiny",
            "--out",
            t / "r",
            "--config",
            _yaml(t, "resolution: abc\n"),
        ],
        ("resolution",),
    ),
    Case(
        "yaml grad_accum: 0",
        lambda t, d, h: [*warm_args(d, t / "r"), "--config", _yaml(t, "grad_accum: 0\n")],
        ("grad_accum",),
    ),
    Case(
        "yaml mixed_precision: fp8",
        lambda t, d, h: [*warm_args(d, t / "r"), "--config", _yaml(t, "mixed_precision: fp8\n")],
        ("fp8",),
    ),
    Case(
        "yaml not a mapping",
        lambda t, d, h: [*warm_args(d, t / "r"), "--config", _yaml(t, "- 1\n- 2\n")],
        ("cfg.yaml",),
    ),
    Case(
        "--out is an existing file",
        lambda t, d, h: warm_args(d, (t / "f").touch() or t / "f"),
        ("not a folder",),
    ),
    Case(
        "--out below a file", lambda t, d, h: warm_args(d, ((t / "f").touch() or t / "f") / "run"), ("f/run",)
    ),
    Case("all normals invalid", lambda t, d, h: _all_invalid(d) or warm_args(d, t / "r"), ("no valid",)),
    Case(
        "head with NaN weights: predict",
        lambda t, d, h: predict_args(d / "test" / "img", _nan_head(t, h), t / "p", "--no-progress"),
        ("not finite",),
    ),
    Case(
        "head with NaN weights: evaluate",
        lambda t, d, h: eval_args(d, _nan_head(t, h), t / "e"),
        ("not finite",),
    ),
    Case(
        "head config gn_groups: 0",
        lambda t, d, h: predict_args(d / "test" / "img", _head_config_edit(t, h, gn_groups=0), t / "p"),
        ("gn_groups",),
    ),
    Case(
        "head trained on another backbone: predict",
        lambda t, d, h: predict_args(d / "test" / "img", h, t / "p", backbone="tiny-scenes"),
        ("tap widths",),
    ),
    Case(
        "head trained on another backbone: evaluate",
        lambda t, d, h: ["evaluate", "--data", d, "--backbone", "tiny-scenes", "--head", h, "--out", t / "e"],
        ("tap widths",),
    ),
    Case(
        "head trained on another backbone: create-data",
        lambda t, d, h: [*create_args(d, h, t / "syn")[:4], "tiny-scenes", *create_args(d, h, t / "syn")[5:]],
        ("tap widths",),
    ),
    Case(
        "garbage scheduler_config.json",
        lambda t, d, h: ["info", _damaged_backbone(t, "scheduler")],
        ("bad scheduler config",),
    ),
    Case(
        "truncated text_encoder safetensors",
        lambda t, d, h: ["info", _damaged_backbone(t, "truncated")],
        ("text_encoder", "cannot load"),
    ),
    Case(
        "pickle text_encoder/pytorch_model.bin",
        lambda t, d, h: ["info", _damaged_backbone(t, "pickle")],
        ("refused", "pickle"),
    ),
    Case(
        "resume with nothing saved",
        lambda t, d, h: [*warm_args(d, t / "r"), "--resume"],
        ("nothing to resume",),
    ),
    Case("missing data folder", lambda t, d, h: warm_args(t / "nope", t / "r"), ("no images",)),
    Case(
        "a normal map with no image",
        lambda t, d, h: (
            shutil.copy(d / "train" / "norm" / "scene_000000.png", d / "train" / "norm" / "zz_orphan.png")
            and warm_args(d, t / "r")
        ),
        ("zz_orphan",),
    ),
    Case(
        "a folder named like an image",
        lambda t, d, h: (d / "train" / "img" / "zz.png").mkdir() or warm_args(d, t / "r"),
        ("zz.png", "folder"),
    ),
    Case(
        "a broken link named like an image",
        lambda t, d, h: (d / "train" / "img" / "zz.png").symlink_to(t / "gone.png") or warm_args(d, t / "r"),
        ("zz.png", "broken link"),
    ),
    Case(
        "a truncated image",
        lambda t, d, h: _truncate(d / "train" / "img" / "scene_000001.png") or warm_args(d, t / "r"),
        ("scene_000001.png",),
    ),
    Case(
        "an undecodable caption (create-data)",
        lambda t, d, h: (
            (d / "train" / "caption" / "scene_000001.txt").write_bytes("caf\xe9".encode("latin-1"))
            and create_args(d, h, t / "syn")
        ),
        ("scene_000001.txt",),
    ),
]


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line(case: Case, scenes_root, small_head_dir, tmp_path, capsys):
    data = copy_scenes(scenes_root, tmp_path / "data")
    argv = case.make(tmp_path, data, small_head_dir)
    before = tree_state(data)
    try:
        code, _, err = run_cli(argv, capsys)
    except SystemExit as e:  # argparse's own usage errors: usage line + one error line, exit 2
        err = capsys.readouterr().err
        assert e.code == 2 and "Traceback" not in err
        assert all(w in err.strip().splitlines()[-1] for w in case.words), err
        return
    assert_one_line_error(code, err, *case.words)
    assert "weights_only=False" not in err
    assert not (tmp_path / "PWNED").exists()  # no pickle code ran
    assert tree_state(data) == before  # the refused command wrote nothing into the data


def test_help_of_every_command(capsys):
    assert main([]) == 0
    assert "<command>" in capsys.readouterr().out
    for argv in (["-h"], ["--help"], *([name, "--help"] for name in COMMANDS)):
        with pytest.raises(SystemExit) as e:
            main(argv)
        out = capsys.readouterr()
        assert e.value.code == 0 and "usage:" in out.out and "Traceback" not in out.err, argv


# ------------------------------------------------------------------------------- mixing and merge
def test_create_data_refuses_other_settings_in_the_same_folder(scenes_root, small_head_dir, tmp_path, capsys):
    out = tmp_path / "syn"
    code, _, err = run_cli(create_args(scenes_root, small_head_dir, out), capsys)
    assert code == 0, err
    before = tree_state(out)
    for extra, word in (
        (["--seed", "7"], "seed"),
        (["--steps", "12"], "steps"),
        (["--t-start", "120"], "t_start"),
    ):
        code, _, err = run_cli(create_args(scenes_root, small_head_dir, out, *extra), capsys)
        assert_one_line_error(code, err, word)
    assert tree_state(out) == before  # nothing mixed in, the settings file untouched
    code, out_text, err = run_cli(create_args(scenes_root, small_head_dir, out), capsys)
    assert code == 0 and "0 sample(s), 8 already there" in out_text  # the same settings: resumes


def test_merge_checks_collisions_before_writing(scenes_root, tmp_path, capsys):
    twin = copy_scenes(scenes_root, tmp_path / "twin")  # same ids: every train id collides
    code, _, err = run_cli(
        ["merge", "--data", scenes_root, "--synthetic", twin, "--out", tmp_path / "m"], capsys
    )
    assert_one_line_error(code, err, "cannot merge")
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").rglob("*.png"))


# --------------------------------------------------------------------------- data that must be read
def test_skip_bad_samples_skips_and_lists(scenes_root, tmp_path, capsys):
    data = copy_scenes(scenes_root, tmp_path / "data")
    _truncate(data / "train" / "img" / "scene_000001.png")
    (data / "train" / "img" / "zz.png").mkdir()
    code, out, err = run_cli(
        [*warm_args(data, tmp_path / "r", "--max-steps", "1"), "--skip-bad-samples"], capsys
    )
    assert code == 0, err
    assert "scene_000001" in err + out and "zz" in err + out


def test_upper_case_jpg_and_comma_names(scenes_root, small_head_dir, tmp_path, capsys):
    data = copy_scenes(scenes_root, tmp_path / "data")
    img = data / "test" / "img"
    Image.open(img / "scene_000000.png").convert("RGB").save(img / "scene_000000.JPG", quality=95)
    (img / "scene_000000.png").unlink()
    for sub in ("img", "norm", "caption", "norm_npy"):
        for p in (data / "test" / sub).glob("scene_000001.*"):
            p.rename(p.with_name("a,b" + p.suffix))
    code, out, err = run_cli(eval_args(data, small_head_dir, tmp_path / "e"), capsys)
    assert code == 0, err
    import csv

    rows = list(csv.DictReader((tmp_path / "e" / "per_image.csv").open()))
    assert {r["id"] for r in rows} == {"scene_000000", "a,b", "scene_000002"}


def test_latin1_caption_does_not_stop_evaluation(scenes_root, small_head_dir, tmp_path, capsys):
    data = copy_scenes(scenes_root, tmp_path / "data")
    (data / "test" / "caption" / "scene_000000.txt").write_bytes("caf\xe9".encode("latin-1"))
    code, _, err = run_cli(eval_args(data, small_head_dir, tmp_path / "e"), capsys)
    assert code == 0, err


def test_16_bit_grey_training_image_is_not_white(scenes_root, tmp_path):
    from diff2in1.data import NormalsDataset

    data = copy_scenes(scenes_root, tmp_path / "data")
    p = data / "train" / "img" / "scene_000000.png"
    grey = np.asarray(Image.open(p).convert("L"), np.uint16) * 257
    Image.fromarray(grey).save(p)
    x = NormalsDataset(data, "train", size=None)[0]["image"]
    assert x.min() < 0.5 and abs(float(x[0].mean()) - (grey.mean() / 65535 * 2 - 1)) < 0.01


# ------------------------------------------------------------------------------- disks and files
def test_full_disk_is_one_line_and_the_state_stays_usable(scenes_root, tmp_path, capsys, monkeypatch):
    from diff2in1.training import run_folder as runs

    code, _, err = run_cli(warm_args(scenes_root, tmp_path / "r", "--epochs", "2"), capsys)
    assert code == 0, err
    good = load_file(tmp_path / "r" / "state" / "head.safetensors")

    real = runs.save_file

    def full(tensors, path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(runs, "save_file", full)
    code, _, err = run_cli([*warm_args(scenes_root, tmp_path / "r", "--epochs", "3"), "--resume"], capsys)
    assert_one_line_error(code, err, "no space left")
    monkeypatch.setattr(runs, "save_file", real)
    assert not list((tmp_path / "r").rglob("*.tmp"))  # no partial file
    kept = load_file(tmp_path / "r" / "state" / "head.safetensors")
    assert all(torch.equal(good[k], kept[k]) for k in good)  # the last good state, whole
    code, _, err = run_cli([*warm_args(scenes_root, tmp_path / "r", "--epochs", "3"), "--resume"], capsys)
    assert code == 0, err
    steps = [ln.split(",")[0] for ln in (tmp_path / "r" / "log.csv").read_text().splitlines()[1:]]
    assert steps == [str(i) for i in range(1, len(steps) + 1)]  # no step logged twice


def test_read_only_writer_is_one_line(tmp_path, monkeypatch):
    from diff2in1 import atomic
    from diff2in1.errors import InputError

    def ro(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", ro)
    with pytest.raises(InputError, match="not writable"):
        atomic.save_text(tmp_path / "x.txt", "hi")


def test_files_get_the_umask_permissions_and_only_our_stale_temps_go(tmp_path):
    from diff2in1.atomic import clean_stale_tmp, save_text

    old = os.umask(0o022)
    try:
        save_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    hour_ago = (time.time() - 3600, time.time() - 3600)
    stale = tmp_path / ".b.txt.diff2in1-abc12345.tmp"  # what a killed writer of ours leaves
    stale.write_text("half")
    fresh = tmp_path / ".c.txt.diff2in1-abc12345.tmp"  # a live writer's
    fresh.write_text("being written")
    users = [tmp_path / ".letter.tmp", tmp_path / ".b.txt.abc12345.tmp", tmp_path / ".x.diff2in1-tmp"]
    users[0].write_text("mine")
    users[1].write_text("mine too")
    users[2].mkdir()  # named like our temp folder, but without our marker inside
    (users[2] / "keep.txt").write_text("mine")
    backup = tmp_path / ".backup.old"
    backup.mkdir()
    (backup / "f.txt").write_text("mine")
    for p in [stale, *users, backup]:
        os.utime(p, hour_ago)
    assert clean_stale_tmp(tmp_path) == 1 and not stale.exists() and fresh.exists()
    assert all(p.exists() for p in users) and (backup / "f.txt").exists()


# ------------------------------------------------------------------------------------ resume rules
def test_resume_compares_resolved_paths_and_survives_a_move(scenes_root, tmp_path, capsys, monkeypatch):
    data = copy_scenes(scenes_root, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(warm_args(Path("data"), Path("run"), "--epochs", "1"), capsys)
    assert code == 0, err
    code, _, err = run_cli([*warm_args(Path("./data/"), Path("run/"), "--epochs", "2"), "--resume"], capsys)
    assert code == 0, err
    (tmp_path / "run").rename(tmp_path / "moved")
    code, _, err = run_cli([*warm_args(data, tmp_path / "moved", "--epochs", "3"), "--resume"], capsys)
    assert code == 0, err


def test_a_run_that_saved_nothing_does_not_block_a_new_one(scenes_root, tmp_path, capsys):
    from diff2in1.config import WarmupConfig, default_yaml

    run = tmp_path / "r"
    run.mkdir()
    # What a run that failed before its first step leaves: its config.yaml and maybe a log row.
    (run / "config.yaml").write_text(default_yaml(WarmupConfig))
    (run / "log.csv").write_text("step,epoch,batch,loss,seconds\n1,1,1,3.0,0.1\n")
    code, _, err = run_cli(warm_args(scenes_root, run), capsys)
    assert code == 0, err
    rows = (run / "log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]


# ------------------------------------------------------------------------- kill -9 / Ctrl-C, resume
def _spawn(argv: list) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "diff2in1.cli", "--threads", "1", *map(str, argv)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(cond: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"finished before the signal: {proc.stderr.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def _log_rows(run: Path) -> int:
    p = run / "log.csv"
    return max(0, len(p.read_text().splitlines()) - 1) if p.exists() else 0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_warmup_killed_then_resumed_is_bit_exact(scenes_root, tmp_path, sig, capsys):
    args = warm_args(scenes_root, tmp_path / "cut", "--epochs", "3", "--checkpoint-every", "0")
    ref = warm_args(scenes_root, tmp_path / "full", "--epochs", "3", "--checkpoint-every", "0")
    assert main([str(a) for a in ref]) == 0
    proc = _spawn(args)
    stop_at = 6  # inside the second epoch (4 steps an epoch), after the first saved state
    _wait_for(lambda: _log_rows(tmp_path / "cut") >= stop_at and (tmp_path / "cut" / "state").exists(), proc)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    err = proc.stderr.read()
    if sig in (signal.SIGINT, signal.SIGTERM):  # saved at the step boundary, said how to go on
        assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
        assert "--resume" in err and "Traceback" not in err, err
        state = json.loads((tmp_path / "cut" / "state" / "state.json").read_text())
        assert state["step"] >= stop_at  # nothing lost before the signal's step
    code = main([str(a) for a in args] + ["--resume"])
    capsys.readouterr()
    assert code == 0
    a = load_file(tmp_path / "full" / "head" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "cut" / "head" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]


def test_create_data_killed_then_rerun_is_bit_exact(scenes_root, small_head_dir, tmp_path, capsys):
    assert (
        main(
            [str(a) for a in create_args(scenes_root, small_head_dir, tmp_path / "full", "--batch-size", "1")]
        )
        == 0
    )
    proc = _spawn(create_args(scenes_root, small_head_dir, tmp_path / "cut", "--batch-size", "1"))
    _wait_for(lambda: len(list((tmp_path / "cut" / "meta").glob("*.json"))) >= 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert (
        main(
            [str(a) for a in create_args(scenes_root, small_head_dir, tmp_path / "cut", "--batch-size", "1")]
        )
        == 0
    )
    capsys.readouterr()
    for p in sorted((tmp_path / "full" / "train").rglob("*.*")):
        q = tmp_path / "cut" / p.relative_to(tmp_path / "full")
        assert q.read_bytes() == p.read_bytes(), p


def test_self_improve_interrupted_then_resumed_is_bit_exact(scenes_root, small_head_dir, tmp_path, capsys):
    syn = tmp_path / "syn"
    assert main([str(a) for a in create_args(scenes_root, small_head_dir, syn)]) == 0

    def si(out: Path) -> list[str]:
        return [
            str(a)
            for a in (
                "train-self-improve",
                "--data",
                scenes_root,
                "--synthetic",
                syn,
                "--backbone",
                "tiny",
                "--init",
                small_head_dir,
                "--out",
                out,
                "--resolution",
                "64",
                "--batch-size",
                "2",
                "--epochs",
                "2",
                "--num-workers",
                "0",
                "--checkpoint-every",
                "0",
                "--no-progress",
            )
        ]

    assert main(si(tmp_path / "full")) == 0
    proc = _spawn(si(tmp_path / "cut"))
    _wait_for(lambda: _log_rows(tmp_path / "cut") >= 11, proc)  # 8 steps an epoch: inside epoch 2
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 130
    assert main([*si(tmp_path / "cut"), "--resume"]) == 0
    capsys.readouterr()
    for name in ("creation", "exploitation"):
        a = load_file(tmp_path / "full" / name / "diffusion_pytorch_model.safetensors")
        b = load_file(tmp_path / "cut" / name / "diffusion_pytorch_model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), name


# ============================================================================ families by rule
# Each family is a table; every case runs the real command line under a time limit (a hang fails
# the test) and every input folder, data and model folders alike, is compared byte for byte before
# and after.
LIMIT_S = 120  # per command


class _TimedOut(Exception):
    pass


def run_cli_limited(argv: list, capsys, seconds: int = LIMIT_S) -> tuple[int, str, str]:
    """`run_cli` in this process under an alarm: a blocked open() or read() is interrupted and the
    test fails instead of hanging (PEP 475 lets the handler's exception through)."""

    def expire(signum, frame):
        raise _TimedOut(f"{argv[0]} did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        try:
            return run_cli(argv, capsys)
        except SystemExit as e:  # argparse's usage errors: exit 2, the message is the last line
            err = capsys.readouterr().err
            return int(e.code or 0), "", err.strip().splitlines()[-1] + "\n"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_sub(argv: list, seconds: int = LIMIT_S, **kw) -> subprocess.CompletedProcess:
    """The command as its own process, killed and failed after `seconds`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    try:
        return subprocess.run(
            [sys.executable, "-m", "diff2in1.cli", "--threads", "1", *map(str, argv)],
            env=env,
            capture_output=True,
            text=True,
            timeout=seconds,
            **kw,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{argv[0]} hung: killed after {seconds} s")


@dataclass
class Inputs:
    """A case's inputs, each its own copy: data, a head, a backbone folder, a pipeline folder."""

    tmp: Path
    data: Path
    head: Path
    backbone: Path

    def folders(self) -> list[Path]:
        return [p for p in (self.data, self.head, self.backbone) if p.exists()]


@dataclass
class Family:
    name: str
    make: Callable[[Inputs], list]  # -> argv
    words: tuple[str, ...]  # in the one error line; () with ok=True
    ok: bool = False  # the command succeeds (a listed skip, a note), exit 0
    stderr: tuple[str, ...] = ()  # words that must also be on stderr (notes, skips)


@pytest.fixture
def inputs(scenes_root, small_head_dir, tiny_folder, tmp_path) -> Inputs:
    return Inputs(
        tmp_path,
        copy_scenes(scenes_root, tmp_path / "data"),
        Path(shutil.copytree(small_head_dir, tmp_path / "models" / "head")),
        Path(shutil.copytree(tiny_folder, tmp_path / "models" / "backbone")),
    )


def assert_error_line(code: int, err: str, *words: str) -> None:
    """`assert_one_line_error`, where argparse's own line (`diff2in1 <command>: error: ...`) counts."""
    if err.startswith("diff2in1 ") and ": error: " in err.splitlines()[-1]:
        err = "diff2in1: error: " + err.splitlines()[-1].split(": error: ", 1)[1]
    assert_one_line_error(code, err, *words)


def _run_family(case: Family, inputs: Inputs, capsys, argv: list | None = None) -> None:
    argv = case.make(inputs) if argv is None else argv
    before = {str(f): tree_state(f) for f in inputs.folders()}
    code, out, err = run_cli_limited(argv, capsys)
    if case.ok:
        assert code == 0, err
        assert "Traceback" not in err, err
    else:
        assert_error_line(code, err, *case.words)
    for w in case.stderr:
        assert w in err + out, (w, err)
    for f in inputs.folders():  # every input, data and model folders alike, unchanged
        assert tree_state(f) == before[str(f)], f"{f} changed"


def si_args(i: Inputs, out: Path, *extra) -> list:
    return [
        "train-self-improve",
        "--data",
        i.data,
        "--synthetic",
        i.data,
        "--backbone",
        "tiny",
        "--init",
        i.head,
        "--out",
        out,
        "--resolution",
        "64",
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--no-progress",
        *extra,
    ]


def _user_folder(i: Inputs) -> Path:
    """A user's folder: ordinary files and names that look like temp files of a program."""
    d = i.tmp / "mine"
    (d / ".backup.old").mkdir(parents=True)
    (d / ".backup.old" / "thesis.tex").write_text("years of work")
    (d / ".letter.tmp").write_text("dear ...")
    (d / ".x.diff2in1-tmp").mkdir()  # even our temp name, but not our folder (no marker)
    (d / ".x.diff2in1-tmp" / "keep").write_text("mine")
    (d / "notes.txt").write_text("notes")
    for p in d.rglob("*"):
        os.utime(p, (time.time() - 3600, time.time() - 3600))  # "stale" by any age rule
    return d


def _hidden_only_folder(i: Inputs) -> Path:
    d = i.tmp / "hidden"
    d.mkdir()
    (d / ".letter.tmp").write_text("dear ...")
    os.utime(d / ".letter.tmp", (time.time() - 3600, time.time() - 3600))
    return d


OUT_FOLDER_CASES = [
    Family(
        "train-warmup into a user's folder",
        lambda i: warm_args(i.data, _user_folder(i)),
        ("not a diff2in1 run", "notes.txt"),
    ),
    Family(
        "train-warmup into a folder of hidden user files",
        lambda i: warm_args(i.data, _hidden_only_folder(i)),
        ("not a diff2in1 run", ".letter.tmp"),
    ),
    Family(
        "train-self-improve into a user's folder",
        lambda i: si_args(i, _user_folder(i)),
        ("not a diff2in1 run",),
    ),
    Family(
        "train-warmup --resume in a user's folder",
        lambda i: [*warm_args(i.data, _user_folder(i)), "--resume"],
        ("not a diff2in1 run",),
    ),
    Family(
        "create-data into a user's folder",
        lambda i: create_args(i.data, i.head, _user_folder(i)),
        ("create-data did not write",),
    ),
    Family(
        "demo into a user's folder",
        lambda i: ["demo", "--quick", "--out", _user_folder(i), "--backbone", "tiny", "--no-progress"],
        ("mine", "demo did not write", "notes.txt"),
    ),
    Family(
        "reproduce into a user's folder",
        lambda i: ["reproduce", "--data", i.data, "--backbone", i.backbone, "--out", _user_folder(i),
                   "--no-progress"],  # fmt: skip
        ("mine", "reproduce did not write", "notes.txt"),
    ),
    Family(
        "make-scenes into a user's folder",
        lambda i: ["make-scenes", "--out", _user_folder(i), "--train", "2", "--test", "1", "--size", "16"],
        ("mine", "make-scenes did not write", "notes.txt"),
    ),
]


@pytest.mark.parametrize("case", OUT_FOLDER_CASES, ids=[c.name for c in OUT_FOLDER_CASES])
def test_a_users_folder_as_out_keeps_every_file(case: Family, inputs, capsys):
    argv = case.make(inputs)
    out = Path(argv[argv.index("--out") + 1])
    mine = tree_state(out)
    names = sorted(p.name for p in out.rglob("*"))
    _run_family(case, inputs, capsys, argv)
    assert tree_state(out) == mine and sorted(p.name for p in out.rglob("*")) == names


def test_create_data_beside_hidden_user_files_deletes_none(inputs, capsys):
    """create-data takes a folder holding only hidden files, and its stale-temp cleanup leaves them."""
    out = _hidden_only_folder(inputs)
    code, _, err = run_cli_limited(create_args(inputs.data, inputs.head, out), capsys)
    assert code == 0, err
    assert (out / ".letter.tmp").read_text() == "dear ..."


def _lookalike(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize(
    "argv,files",
    [
        (["demo", "--quick", "--backbone", "tiny"], {"report.md": "my report", "data/x.csv": "1"}),
        (["reproduce", "--backbone", "tiny"], {"warmup/plan.txt": "mine", "report.md": "mine"}),
        (["make-scenes", "--size", "16"], {"train/img/a.png": "x", "classes.json": '{"classes": []}'}),
    ],
    ids=["demo", "reproduce", "make-scenes"],
)
def test_a_folder_named_like_a_tree_commands_output_is_not_taken_for_one(argv, files, inputs, capsys):
    """Only the names a command writes, but not its earlier output (no mark, not the file it writes
    first, or another class list): refused in one line naming the folder, nothing written."""
    out = _lookalike(inputs.tmp / "lookalike", files)
    if argv[0] == "reproduce":
        argv = [*argv, "--data", inputs.data]
    before = tree_state(out)
    code, _, err = run_cli_limited([*argv, "--out", out], capsys)
    assert_one_line_error(code, err, str(out), f"not an earlier {argv[0]} output")
    assert tree_state(out) == before
    assert sorted(p.name for p in out.iterdir()) == sorted({f.split("/")[0] for f in files})


def test_make_scenes_continues_its_own_folder_marked_or_from_before_the_mark(scenes_root, tmp_path, capsys):
    from diff2in1.out_folder import MARK

    out = tmp_path / "scenes"
    args = ["make-scenes", "--out", out, "--train", "2", "--test", "1", "--size", "16", "--no-progress"]
    assert run_cli_limited(args, capsys)[0] == 0
    assert (out / MARK).read_text() == "make-scenes\n"
    made = tree_state(out)
    assert run_cli_limited([*args[:4], "3", *args[5:]], capsys)[0] == 0  # one more training scene
    assert {k: v for k, v in tree_state(out).items() if k in made} == made
    assert len(list((out / "train" / "img").glob("*.png"))) == 3
    old = Path(shutil.copytree(scenes_root, tmp_path / "old"))  # written by make_scenes, no mark
    before = tree_state(old)
    again = ["make-scenes", "--out", old, "--train", "8", "--test", "3", "--size", "64", "--no-progress"]
    code, _, err = run_cli_limited(again, capsys)
    assert code == 0, err
    assert {k: v for k, v in tree_state(old).items() if k != MARK} == before  # all there: nothing rewritten


def test_demo_and_reproduce_take_their_own_folders_from_before_the_mark(tmp_path):
    from diff2in1.errors import InputError
    from diff2in1.out_folder import MARK, claim_output_folder

    demo = _lookalike(tmp_path / "demo", {"demo_config.json": "{}", "seed_0/x.csv": "", "fig_a.png": ""})
    repro = _lookalike(tmp_path / "repro", {"dry_run/reproduce.yaml": "", "dry_run/warmup/log.csv": ""})
    claim_output_folder(demo, "demo")
    claim_output_folder(repro, "reproduce")
    assert (demo / MARK).read_text() == "demo\n" and (repro / MARK).read_text() == "reproduce\n"
    claim_output_folder(tmp_path / "new" / "demo", "demo")  # a new folder is made and marked
    assert (tmp_path / "new" / "demo" / MARK).is_file()
    with pytest.raises(InputError, match="demo did not write"):
        claim_output_folder(repro, "demo")  # marked by reproduce: not the demo's


def test_weight_files_get_the_umask_permissions(scenes_root, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        code, _, err = run_cli_limited(warm_args(scenes_root, tmp_path / "r"), capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    files = [p for p in (tmp_path / "r").rglob("*") if p.is_file() and p.name != ".diff2in1.lock"]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {p.relative_to(tmp_path): p.stat().st_mode & 0o777 for p in files} == {
        p.relative_to(tmp_path): 0o644 for p in files
    }


# ------------------------------------------------------------------------------ one run per folder
def test_two_runs_into_one_folder_end_with_one_refused(scenes_root, tmp_path, capsys):
    run = tmp_path / "r"
    first = _spawn(warm_args(scenes_root, run, "--epochs", "12", "--checkpoint-every", "0"))
    _wait_for(lambda: _log_rows(run) >= 1, first)
    for extra in ([], ["--resume"]):  # a second run, and a resume of the live one
        code, _, err = run_cli_limited(warm_args(scenes_root, run, "--epochs", "12", *extra), capsys)
        assert_one_line_error(code, err, "in use by another diff2in1 command", f"process {first.pid}")
    assert first.poll() is None  # refused while the first still ran
    assert first.wait(timeout=LIMIT_S) == 0, first.stderr.read()
    steps = [ln.split(",")[0] for ln in (run / "log.csv").read_text().splitlines()[1:]]
    assert steps == [str(i) for i in range(1, 49)]  # 12 epochs x 4 steps, each once
    # Released on exit: the next command in the folder runs.
    code, _, err = run_cli_limited([*warm_args(scenes_root, run, "--epochs", "13"), "--resume"], capsys)
    assert code == 0, err


def test_a_dead_process_lock_is_taken_over_with_a_note(scenes_root, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "r"
    run.mkdir()
    (run / ".diff2in1.lock").write_text(f"{dead.pid}\n")  # what kill -9 mid-run leaves
    code, _, err = run_cli_limited(warm_args(scenes_root, run), capsys)
    assert code == 0, err
    assert f"took over the lock of process {dead.pid}" in err


def test_a_refused_run_leaves_no_folder_and_no_lock(scenes_root, tmp_path, capsys):
    code, _, err = run_cli_limited([*warm_args(scenes_root, tmp_path / "new"), "--resume"], capsys)
    assert_one_line_error(code, err, "nothing to resume")
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------- model folders are inputs
def _link(i: Inputs, target: Path) -> Path:
    link = i.tmp / "linked_model"
    link.symlink_to(target, target_is_directory=True)
    return link


def _pipeline(i: Inputs) -> Path:
    from diff2in1.inference.convert import export_pipeline

    return export_pipeline(i.backbone, i.head, i.tmp / "models" / "pipeline")


def _set(argv: list, flag: str, value) -> list:
    """`argv` with `flag`'s value replaced (or the flag added)."""
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
        return argv
    return [*argv, flag, value]


MODEL_OVERLAP_CASES = [
    Family(
        "train-warmup --out inside --backbone",
        lambda i: _set(warm_args(i.data, i.backbone / "run"), "--backbone", i.backbone),
        ("lies inside the input --backbone",),
    ),
    Family(
        "train-warmup --out equal to --backbone",
        lambda i: _set(warm_args(i.data, i.backbone), "--backbone", i.backbone),
        ("is the input --backbone",),
    ),
    Family(
        "train-warmup --out inside the starting --head",
        lambda i: _set(warm_args(i.data, i.head / "run"), "--head", i.head),
        ("lies inside the input --head",),
    ),
    Family(
        "train-self-improve --out equal to --init",
        lambda i: si_args(i, i.head),
        ("is the input --init",),
    ),
    Family(
        "train-self-improve --out inside --backbone via a link",
        lambda i: _set(si_args(i, _link(i, i.backbone) / "run"), "--backbone", i.backbone),
        ("lies inside the input --backbone",),
    ),
    Family(
        "predict --out inside --head",
        lambda i: predict_args(i.data / "test" / "img", i.head, i.head / "pred"),
        ("lies inside the input --head",),
    ),
    Family(
        "predict --out inside --backbone (a link to it)",
        lambda i: predict_args(
            i.data / "test" / "img", i.head, _link(i, i.backbone) / "pred", backbone=str(i.backbone)
        ),
        ("lies inside the input --backbone",),
    ),
    Family(
        "predict --out equal to --pipeline",
        lambda i: [
            "predict",
            i.data / "test" / "img",
            "--pipeline",
            _pipeline(i),
            "--out",
            i.tmp / "models" / "pipeline",
        ],
        ("is the input --pipeline",),
    ),
    Family(
        "evaluate --out inside --backbone",
        lambda i: _set(eval_args(i.data, i.head, i.backbone / "eval"), "--backbone", i.backbone),
        ("lies inside the input --backbone",),
    ),
    Family(
        "create-data --out inside --head",
        lambda i: create_args(i.data, i.head, i.head / "syn"),
        ("lies inside the input --head",),
    ),
]


@pytest.mark.parametrize("case", MODEL_OVERLAP_CASES, ids=[c.name for c in MODEL_OVERLAP_CASES])
def test_model_folders_are_inputs(case: Family, inputs, capsys):
    _run_family(case, inputs, capsys)


# ------------------------------------------------------------------------------------------ devices
def _cfg(i: Inputs, text: str | bytes, name: str = "cfg.yaml") -> Path:
    p = i.tmp / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


DEVICE_CASES = [
    Family(
        "train-warmup --device cuda:99",
        lambda i: warm_args(i.data, i.tmp / "r", "--device", "cuda:99"),
        ("cuda:99", "available"),
    ),
    Family(
        "train-warmup --device tpu",
        lambda i: warm_args(i.data, i.tmp / "r", "--device", "tpu"),
        ("tpu", "not a device"),
    ),
    Family(
        "train-warmup device: cuda:99 in YAML",
        lambda i: [*warm_args(i.data, i.tmp / "r"), "--config", _cfg(i, "device: cuda:99\n")],
        ("device", "cuda:99", "available"),
    ),
    Family(
        "predict --device cuda:99",
        lambda i: predict_args(i.data / "test" / "img", i.head, i.tmp / "p", "--device", "cuda:99"),
        ("cuda:99",),
    ),
    Family(
        "evaluate --device gpu0",
        lambda i: [*eval_args(i.data, i.head, i.tmp / "e"), "--device", "gpu0"],
        ("gpu0", "not a device"),
    ),
    Family(
        "create-data --device cuda:99",
        lambda i: create_args(i.data, i.head, i.tmp / "s", "--device", "cuda:99"),
        ("cuda:99",),
    ),
    Family(
        "caption --device cuda:x",
        lambda i: ["caption", "--data", i.data, "--device", "cuda:x"],
        ("cuda:x", "not a device"),
    ),
    Family("app --device mps:0", lambda i: ["app", "--device", "mps:0"], ("mps:0", "not a device")),
]
if not torch.cuda.is_available():  # where the machine has none, plain cuda is the case users meet
    DEVICE_CASES.append(
        Family(
            "train-warmup --device cuda (no CUDA here)",
            lambda i: warm_args(i.data, i.tmp / "r", "--device", "cuda"),
            ("CUDA is not available", "cpu"),
        )
    )


@pytest.mark.parametrize("case", DEVICE_CASES, ids=[c.name for c in DEVICE_CASES])
def test_device_names_are_checked_before_models(case: Family, inputs, capsys):
    _run_family(case, inputs, capsys)
    assert not (inputs.tmp / "r").exists()


def test_device_parser():
    from diff2in1.devices import available_devices, check_device
    from diff2in1.errors import InputError

    assert check_device(None) == "auto" and check_device("CPU") == "cpu"
    assert "cpu" in available_devices()
    for bad in ("cpu:1", "cuda:-1", "mps:0", "xla", "cuda:"):
        with pytest.raises(InputError, match="not a device name"):
            check_device(bad)


# ------------------------------------------------------------------------------------------ bounds
def _huge_png(path: Path, w: int, h: int) -> None:
    """A PNG whose header says w x h (its pixel data are not there: only the header is read)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _huge_training_image(i: Inputs) -> Path:
    _huge_png(i.data / "train" / "img" / "scene_000003.png", 12000, 12000)
    return i.data


BOUND_CASES = [
    Family(
        "--seed 2^64 (train-warmup)",
        lambda i: warm_args(i.data, i.tmp / "r", "--seed", str(2**64)),
        ("--seed", "2^63"),
    ),
    Family(
        "--seed -1 (predict)",
        lambda i: predict_args(i.data / "test" / "img", i.head, i.tmp / "p", "--seed", "-1"),
        ("--seed",),
    ),
    Family(
        "--seed 2^63 (make-scenes)",
        lambda i: ["make-scenes", "--out", i.tmp / "s", "--seed", str(2**63)],
        ("--seed", "2^63"),
    ),
    Family(
        "seed: 2^64 in a create-data YAML",
        lambda i: [*create_args(i.data, i.head, i.tmp / "s"), "--config", _cfg(i, f"seed: {2**64}\n")],
        ("seed", "2^63"),
    ),
    Family(
        "seed: 2^64 in a train-self-improve YAML",
        lambda i: [*si_args(i, i.tmp / "r"), "--config", _cfg(i, f"seed: {2**64}\n")],
        ("seed", "2^63"),
    ),
    Family(
        "predict --resolution 65536",
        lambda i: predict_args(i.data / "test" / "img", i.head, i.tmp / "p", "--resolution", "65536"),
        ("--resolution", "at most 2048"),
    ),
    Family(
        "train-warmup --resolution 100000",
        lambda i: warm_args(i.data, i.tmp / "r", "--resolution", "100000"),
        ("--resolution", "at most 2048"),
    ),
    Family(
        "resolution: 8192 in a create-data YAML",
        lambda i: [
            *_without(create_args(i.data, i.head, i.tmp / "s"), "--resolution"),
            "--config",
            _cfg(i, "resolution: 8192\n"),
        ],
        ("resolution", "at most 2048"),
    ),
    Family(
        "make-scenes --size 100000",
        lambda i: ["make-scenes", "--out", i.tmp / "s", "--size", "100000"],
        ("--size", "at most 2048"),
    ),
    Family(
        "a 12000x12000 training image",
        lambda i: warm_args(_huge_training_image(i), i.tmp / "r"),
        ("scene_000003.png", "too large", "64000000"),
    ),
    Family(
        "a 12000x12000 training image, skipped and listed",
        lambda i: [
            *warm_args(_huge_training_image(i), i.tmp / "r", "--max-steps", "1"),
            "--skip-bad-samples",
        ],
        (),
        ok=True,
        stderr=("scene_000003", "too large"),
    ),
    Family(
        "a 12000x12000 image to predict",
        lambda i: (
            _huge_png(i.tmp / "big.png", 12000, 12000) or predict_args(i.tmp / "big.png", i.head, i.tmp / "p")
        ),
        ("big.png", "too large"),
    ),
]


@pytest.mark.parametrize("case", BOUND_CASES, ids=[c.name for c in BOUND_CASES])
def test_bounds_before_any_model(case: Family, inputs, capsys):
    _run_family(case, inputs, capsys)


# ------------------------------------------------------------------------------------ config files
CONFIG_CASES = [
    Family(
        "Latin-1 config",
        lambda i: [
            *warm_args(i.data, i.tmp / "r"),
            "--config",
            _cfg(i, "split: caf\xe9\n".encode("latin-1")),
        ],
        ("not UTF-8",),
    ),
    Family(
        "UTF-16 config",
        lambda i: [
            *create_args(i.data, i.head, i.tmp / "s"),
            "--config",
            _cfg(i, "seed: 1\n".encode("utf-16")),
        ],
        ("not UTF-8",),
    ),
    Family(
        "YAML alias bomb",
        lambda i: [
            *si_args(i, i.tmp / "r"),
            "--config",
            _cfg(i, 'a: &a ["x","x"]\nb: &b [*a,*a]\nc: [*b,*b]\n'),
        ],
        ("aliases",),
    ),
    Family(
        "a 2 MB config",
        lambda i: [*warm_args(i.data, i.tmp / "r"), "--config", _cfg(i, "x:\n" + "- 1\n" * 600_000)],
        ("too large for a settings file",),
    ),
    Family(
        "deeply nested config",
        lambda i: [*warm_args(i.data, i.tmp / "r"), "--config", _cfg(i, "a: " + "[" * 100_000)],
        ("nested too deeply",),
    ),
    Family(
        "create-data unknown key",
        lambda i: [*create_args(i.data, i.head, i.tmp / "s"), "--config", _cfg(i, "t_star: 500\n")],
        ("unknown setting", "t_star"),
    ),
    Family(
        "create-data wrong type",
        lambda i: [*create_args(i.data, i.head, i.tmp / "s"), "--config", _cfg(i, "guidance: strong\n")],
        ("guidance", "number"),
    ),
    Family(
        "create-data shard: 3",
        lambda i: [*create_args(i.data, i.head, i.tmp / "s"), "--config", _cfg(i, "shard: 3\n")],
        ("shard",),
    ),
    Family(
        "self-improve unknown key",
        lambda i: [*si_args(i, i.tmp / "r"), "--config", _cfg(i, "ema_decy: 0.9\n")],
        ("unknown setting", "ema_decy"),
    ),
    Family(
        "self-improve wrong type",
        lambda i: [*si_args(i, i.tmp / "r"), "--config", _cfg(i, "ema_every: often\n")],
        ("ema_every", "integer"),
    ),
    Family(
        "self-improve create: unknown key",
        lambda i: [*si_args(i, i.tmp / "r"), "--config", _cfg(i, "create:\n  stepz: 5\n")],
        ("create", "stepz"),
    ),
    Family(
        "self-improve create: wrong type",
        lambda i: [*si_args(i, i.tmp / "r"), "--config", _cfg(i, "create:\n  steps: many\n")],
        ("create", "steps", "integer"),
    ),
    Family(
        "self-improve synthetic: a string",
        lambda i: [
            *_without(si_args(i, i.tmp / "r"), "--synthetic"),
            "--config",
            _cfg(i, "synthetic: abc\n"),
        ],
        ("synthetic", "list"),
    ),
    Family(
        "a folder as config", lambda i: [*warm_args(i.data, i.tmp / "r"), "--config", i.data], ("folder",)
    ),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.name for c in CONFIG_CASES])
def test_config_files_are_read_one_way(case: Family, inputs, capsys):
    _run_family(case, inputs, capsys)


# ------------------------------------------------------------------------ special files, workers
def _fifo(path: Path) -> Path:
    if path.exists():
        path.unlink()
    os.mkfifo(path)
    return path


SPECIAL_FILE_CASES = [
    Family(
        "a FIFO named like a training image",
        lambda i: _fifo(i.data / "train" / "img" / "zz.png") and warm_args(i.data, i.tmp / "r"),
        ("zz.png", "FIFO", "not a regular file"),
    ),
    Family(
        "a FIFO named like an image, skipped and listed",
        lambda i: (
            _fifo(i.data / "train" / "img" / "zz.png")
            and [*warm_args(i.data, i.tmp / "r", "--max-steps", "1"), "--skip-bad-samples"]
        ),
        (),
        ok=True,
        stderr=("zz", "FIFO"),
    ),
    Family(
        "a FIFO as a normal map",
        lambda i: (
            _fifo(i.data / "train" / "norm" / "scene_000002.png")
            and _fifo(i.data / "train" / "norm_npy" / "scene_000002.npy")
            and warm_args(i.data, i.tmp / "r")
        ),
        ("scene_000002", "FIFO"),
    ),
    Family(
        "a FIFO as a caption (create-data)",
        lambda i: (
            _fifo(i.data / "train" / "caption" / "scene_000001.txt")
            and create_args(i.data, i.head, i.tmp / "s")
        ),
        ("scene_000001.txt", "FIFO"),
    ),
    Family(
        "a FIFO among the images to predict",
        lambda i: (
            _fifo(i.data / "test" / "img" / "zz.png")
            and predict_args(i.data / "test" / "img", i.head, i.tmp / "p", "--no-progress")
        ),
        ("zz.png", "FIFO"),
    ),
    Family(
        "a FIFO given to predict",
        lambda i: predict_args(_fifo(i.tmp / "in.png"), i.head, i.tmp / "p"),
        ("in.png", "FIFO"),
    ),
    Family(
        "a FIFO as --config",
        lambda i: [*warm_args(i.data, i.tmp / "r"), "--config", _fifo(i.tmp / "c.yaml")],
        ("c.yaml", "FIFO"),
    ),
]


@pytest.mark.parametrize("case", SPECIAL_FILE_CASES, ids=[c.name for c in SPECIAL_FILE_CASES])
def test_special_files_are_named_never_opened(case: Family, inputs):
    """Run as a separate process with a timeout: a FIFO that got opened would block it for good."""
    argv = case.make(inputs)
    before = {str(f): tree_state_no_fifo(f) for f in inputs.folders()}
    res = run_sub(argv)
    if case.ok:
        assert res.returncode == 0, res.stderr
    else:
        assert_error_line(res.returncode, _without_warnings(res.stderr), *case.words)
    for w in case.stderr:
        assert w in res.stderr + res.stdout, (w, res.stderr)
    for f in inputs.folders():
        assert tree_state_no_fifo(f) == before[str(f)], f"{f} changed"


def tree_state_no_fifo(folder: Path) -> dict[str, bytes]:
    """`tree_state`, with special files listed by name (reading a FIFO would block)."""
    import stat as st

    out = {}
    for p in sorted(folder.rglob("*")):
        mode = p.lstat().st_mode
        if st.S_ISFIFO(mode):
            out[str(p.relative_to(folder))] = b"<fifo>"
        elif p.is_file():
            out[str(p.relative_to(folder))] = p.read_bytes()
    return out


def _without_warnings(err: str) -> str:
    """stderr without Python warning lines (a subprocess prints the data set's skip warning)."""
    lines = err.splitlines()
    return "\n".join(
        ln for k, ln in enumerate(lines) if "Warning" not in ln and not (k and "Warning" in lines[k - 1])
    )


def test_worker_counts_are_capped_with_a_note(scenes_root, tmp_path, capsys):
    from diff2in1.limits import cpu_count

    args = _set(warm_args(scenes_root, tmp_path / "r", "--max-steps", "1"), "--num-workers", "100000")
    code, _, err = run_cli_limited(args, capsys)
    assert code == 0, err
    assert f"--num-workers 100000: capped at {cpu_count()}" in err


def test_a_file_unreadable_mid_run_is_one_line(scenes_root, tmp_path, capsys, monkeypatch):
    """A training image that breaks after the data check, read by a DataLoader worker process."""
    from diff2in1.data import NormalsDataset
    from diff2in1.stages import warmup

    data = copy_scenes(scenes_root, tmp_path / "data")

    class BreaksAfterTheCheck(NormalsDataset):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            for p in (data / "train" / "img").glob("*.png"):
                p.write_bytes(b"not a png any more")

    monkeypatch.setattr(warmup, "NormalsDataset", BreaksAfterTheCheck)
    args = _set(warm_args(data, tmp_path / "r"), "--num-workers", "1")
    code, _, err = run_cli_limited(args, capsys)
    assert_one_line_error(code, err, "scene_0000", "cannot decode image")


# ----------------------------------------------------------------------------------- model files
def _int_header_head(i: Inputs) -> Path:
    """The head with its float tensors declared I32 in the safetensors header (same bytes)."""
    w = i.head / "diffusion_pytorch_model.safetensors"
    state = load_file(w)
    save_file({k: (v.view(torch.int32) if v.dtype == torch.float32 else v) for k, v in state.items()}, w)
    return i.head


def _head_without_fingerprint(i: Inputs) -> Path:
    cfg = json.loads((i.head / "config.json").read_text())
    assert cfg.pop("backbone", None)
    (i.head / "config.json").write_text(json.dumps(cfg))
    return i.head


def _pickled_component(i: Inputs, sub: str, name: str) -> Path:
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(i.tmp / "PWNED"),))

    weights = next((i.backbone / sub).glob("*.safetensors"))
    torch.save({**load_file(weights), "evil": Evil()}, i.backbone / sub / name)
    weights.unlink()
    return i.backbone


MODEL_FILE_CASES = [
    Family(
        "I32 header over float data (predict)",
        lambda i: predict_args(i.data / "test" / "img", _int_header_head(i), i.tmp / "p"),
        ("stored dtype mismatches", "int32"),
    ),
    Family(
        "I32 header over float data (evaluate)",
        lambda i: eval_args(i.data, _int_header_head(i), i.tmp / "e"),
        ("stored dtype mismatches",),
    ),
    Family(
        "head config without its backbone fingerprint",
        lambda i: predict_args(
            i.data / "test" / "img", _head_without_fingerprint(i), i.tmp / "p", "--no-progress"
        ),
        (),
        ok=True,
        stderr=("no backbone fingerprint",),
    ),
    Family(
        "pickled unet in a diffusers folder (predict)",
        lambda i: predict_args(
            i.data / "test" / "img",
            i.head,
            i.tmp / "p",
            backbone=str(_pickled_component(i, "unet", "diffusion_pytorch_model.bin")),
        ),
        ("unet", "refused", "pickle"),
    ),
    Family(
        "pickled vae in a diffusers folder (train-warmup)",
        lambda i: _set(
            warm_args(i.data, i.tmp / "r"),
            "--backbone",
            _pickled_component(i, "vae", "diffusion_pytorch_model.bin"),
        ),
        ("vae", "refused", "pickle"),
    ),
    Family(
        "pickled text encoder in a diffusers folder (create-data)",
        lambda i: _set(
            create_args(i.data, i.head, i.tmp / "s"),
            "--backbone",
            _pickled_component(i, "text_encoder", "pytorch_model.bin"),
        ),
        ("text_encoder", "refused", "pickle"),
    ),
]


@pytest.mark.parametrize("case", MODEL_FILE_CASES, ids=[c.name for c in MODEL_FILE_CASES])
def test_model_files_are_checked(case: Family, inputs, capsys):
    _run_family(case, inputs, capsys)
    assert not (inputs.tmp / "PWNED").exists()  # no pickle code ran


OUTPUT_FOLDER_CASES = [
    Family(
        "predict into a user's folder",
        lambda i: predict_args(i.data / "test" / "img", i.head, _user_folder(i), "--no-progress"),
        ("predict did not write", "notes.txt"),
    ),
    Family(
        "evaluate into a user's folder",
        lambda i: eval_args(i.data, i.head, _user_folder(i)),
        ("evaluate did not write", "notes.txt"),
    ),
]


@pytest.mark.parametrize("case", OUTPUT_FOLDER_CASES, ids=[c.name for c in OUTPUT_FOLDER_CASES])
def test_a_users_folder_as_output_keeps_every_file(case: Family, inputs, capsys):
    argv = case.make(inputs)
    out = Path(argv[argv.index("--out") + 1])
    mine = tree_state(out)
    _run_family(case, inputs, capsys, argv)
    assert tree_state(out) == mine


def test_predict_and_evaluate_run_again_into_their_own_folders(scenes_root, small_head_dir, tmp_path, capsys):
    for argv in (
        predict_args(scenes_root / "test" / "img", small_head_dir, tmp_path / "p", "--no-progress"),
        eval_args(scenes_root, small_head_dir, tmp_path / "e"),
    ):
        for _ in range(2):  # the second run finds the first's files: its own, so it goes on
            code, _, err = run_cli_limited(argv, capsys)
            assert code == 0, err


# ------------------------------------------------------------------------------- the web page
def test_web_page_sigterm_removes_its_work_folder(tmp_path):
    pytest.importorskip("gradio")
    import socket
    import threading

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TMPDIR": str(tmp_path), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    argv = ["--threads", "1", "app", "--demo-steps", "0", "--device", "cpu", "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "diff2in1.cli", *argv], env=env, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        _wait_for(lambda: any("page on" in ln for ln in lines), proc, timeout=LIMIT_S)
        work = [p for p in tmp_path.iterdir() if p.name.startswith("diff2in1-app-")]
        assert len(work) == 1 and work[0].is_dir()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not work[0].exists()  # removed on SIGTERM, as on Ctrl-C


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_to_the_process_group_with_workers_saves_and_says_so(scenes_root, tmp_path):
    """What a scheduler does: SIGTERM to every process of the job, DataLoader workers included."""
    run = tmp_path / "r"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    argv = _set(warm_args(scenes_root, run, "--epochs", "20"), "--num-workers", "2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "diff2in1.cli", "--threads", "1", *map(str, argv)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: _log_rows(run) >= 3, proc)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = proc.stderr.read().strip()
    assert proc.returncode == 143, err
    t0 = time.time()  # and the workers are gone with it
    while _group_alive(proc.pid) and time.time() - t0 < 20:
        time.sleep(0.1)
    assert not _group_alive(proc.pid)
    # the main process alone reports: the workers left quietly and torch has nothing to say
    assert len(err.splitlines()) == 1 and "DataLoader worker" not in err, err
    assert err.startswith("diff2in1: terminated (SIGTERM)") and "--resume" in err, err
    assert json.loads((run / "state" / "state.json").read_text())["step"] >= 3
