"""Run folders: the copied config, atomic files, resumable training state, CSV logs.

A run folder holds:
  config.yaml          every hyper-parameter of the run (written once, checked on resume)
  state/               the latest resumable state (head(s), optimizer, counters, RNG)
  checkpoints/         kept head checkpoints, one folder per epoch (`epoch_0005/...`)
  log.csv              one row per optimizer step
  .diff2in1.lock       held while a command runs in the folder (see run_lock.py)

A folder that exists and holds anything else is not taken as a run folder: nothing of the
user's is overwritten or deleted.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from ..atomic import TMP_MARKER, atomic_path, clean_stale_tmp, disk_error, is_our_temp, save_text, umask_mode
from ..config_reader import read_config_file
from ..errors import InputError
from ..run_lock import LOCK_NAME, RunLock
from ..run_settings import TRAINING_FREE, check_settings, defaults_of, read_settings


def _set_aside_names(path: Path) -> tuple[Path, Path]:
    """The temp folder and the set-aside old folder of `atomic_dir(path)` (tagged: see atomic.py)."""
    return path.with_name(f".{path.name}.diff2in1-tmp"), path.with_name(f".{path.name}.diff2in1-old")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path`.

    The old folder is moved aside first and deleted after, so a crash leaves either the old
    or the new folder complete (plus a stray tagged folder that the next call removes). Only
    folders holding our marker file are ever removed: a user's folder of the same name stays.
    Files get the umask's permissions.
    """
    path = Path(path)
    tmp, old = _set_aside_names(path)
    made = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in (tmp, old):
            if is_our_temp(stale):
                shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        made = True
        (tmp / TMP_MARKER).touch()
        yield tmp
        (tmp / TMP_MARKER).unlink()
        umask_mode(tmp)
        if path.exists():
            (path / TMP_MARKER).touch()  # marks the set-aside copy as ours to delete
            path.rename(old)
        tmp.rename(path)
        made = False
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:  # a full disk or a read-only folder: one line, the old folder kept
        if made and old.is_dir() and not path.exists():  # set aside, but the new one not in place
            (old / TMP_MARKER).unlink(missing_ok=True)
            old.rename(path)
        raise disk_error(path, e) from None
    finally:
        if made:
            shutil.rmtree(tmp, ignore_errors=True)


def to_plain(obj: Any) -> Any:
    """Dataclasses / tuples / paths -> YAML- and JSON-friendly values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


class RunDir:
    """One training run's folder (see the module docstring for the layout)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def has_state(self) -> bool:
        for old in (_set_aside_names(self.state_dir)[1], self.state_dir.with_name(".state.old")):
            if not self.state_dir.exists() and (old / "state.json").exists():
                # Killed between the two renames of a state save: that was the last state.
                (old / TMP_MARKER).unlink(missing_ok=True)
                old.rename(self.state_dir)
        return (self.state_dir / "state.json").exists()

    def _looks_like_run(self) -> bool:
        """A config.yaml of ours: a mapping with the settings every run records."""
        try:
            saved = read_config_file(self.config_path)
        except InputError:
            return False
        return {"data", "backbone", "out", "seed"} <= set(saved)

    def check_folder(self) -> None:
        """Refuse, before anything is written, an --out that is a file, or an existing folder
        holding things that are not a run of ours (the user's files stay untouched)."""
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{self.root}: exists and is not a folder; choose another --out")
        if not self.root.is_dir() or self._looks_like_run():
            return
        others = sorted(
            (p.name for p in self.root.iterdir() if p.name != LOCK_NAME and not is_our_temp(p)),
            key=lambda n: (n.startswith("."), n),  # visible names first: what the user will recognise
        )
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise InputError(
                f"--out {self.root}: an existing folder that is not a diff2in1 run (holds {shown}); "
                "choose a new or empty folder"
            )

    def lock(self) -> RunLock:
        """`with run.lock():` the folder checked (`check_folder`) and locked for this command."""
        self.check_folder()
        return RunLock(self.root)

    def _is_empty_run(self) -> bool:
        """A config.yaml but nothing trained and saved: a run that failed before its first save."""
        return self.config_path.exists() and not self.has_state() and not any(self.root.glob("checkpoints/*"))

    def check(self, config: Any, resume: bool) -> None:
        """Refuse, before any work: a new run in a folder that holds one (nothing is overwritten),
        or a resume with nothing to resume or with changed settings. Paths are compared resolved
        (`./data` = `data`), and the run folder's own path is not compared (a moved run resumes)."""
        self.check_folder()
        plain = to_plain(config)
        if resume:
            if not self.config_path.exists():
                raise InputError(f"{self.root}: nothing to resume (no config.yaml); run without --resume")
            if not self.has_state():
                raise InputError(
                    f"{self.root}: nothing to resume yet (the run stopped before its first saved state); "
                    "run the same command without --resume to start it again"
                )
            saved = read_settings(self.config_path) or {}
            check_settings(
                saved,
                plain,
                f"{self.config_path}: --resume with different settings",
                free=TRAINING_FREE,
                defaults=to_plain(defaults_of(config)) if dataclasses.is_dataclass(config) else None,
            )
        elif self.config_path.exists() and not self._is_empty_run():
            raise InputError(f"{self.root}: already holds a run; use --resume or another --out")

    def start(self, config: Any, resume: bool) -> None:
        """`check`, then write config.yaml for a new run (an earlier run that saved nothing is
        replaced: its log rows go too, so no step is logged twice); stale temp files are removed."""
        self.check(config, resume)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            clean_stale_tmp(self.root)
            if not resume:
                (self.root / "log.csv").unlink(missing_ok=True)
                save_text(self.config_path, yaml.safe_dump(to_plain(config), sort_keys=False))
        except OSError as e:
            raise disk_error(self.root, e) from None

    # ------------------------------------------------------------- training state
    def save_state(self, tensors: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]) -> None:
        """Atomically write named tensor groups (safetensors) + JSON meta as the resume state.
        A full disk is an InputError; the previous state then stays as it was."""
        try:
            with atomic_dir(self.state_dir) as tmp:
                for name, sd in tensors.items():
                    save_file(
                        {k: v.detach().contiguous().cpu() for k, v in sd.items()}, tmp / f"{name}.safetensors"
                    )
                (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        except OSError as e:
            raise disk_error(self.state_dir, e) from None

    def load_state(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        meta = json.loads((self.state_dir / "state.json").read_text())
        tensors = {p.stem: load_file(p) for p in self.state_dir.glob("*.safetensors")}
        return tensors, meta

    def checkpoint_dir(self, epoch: int, name: str = "head") -> Path:
        return self.root / "checkpoints" / f"epoch_{epoch:04d}" / name

    def log(self, row: dict[str, Any]) -> None:
        """Append one row to log.csv (header written with the first row)."""
        path = self.root / "log.csv"
        new = not path.exists()
        try:
            with path.open("a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    w.writeheader()
                w.writerow(row)
        except OSError as e:
            raise disk_error(path, e) from None

    def truncate_log(self, global_step: int) -> None:
        """Drop log rows past `global_step` (written after the state a resume restarts from)."""
        path = self.root / "log.csv"
        if not path.exists():
            return
        with path.open() as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if int(r["step"]) <= global_step]
        with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
            if keep:
                w = csv.DictWriter(f, fieldnames=list(keep[0]))
                w.writeheader()
                w.writerows(keep)


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten an optimizer state dict into tensors (safetensors) + JSON-able meta."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
