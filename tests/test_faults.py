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
    from diff2in1.export import save_diffusers_folder

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
    from diff2in1 import runs

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


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
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
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "--resume" in err and "Traceback" not in err, err
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
