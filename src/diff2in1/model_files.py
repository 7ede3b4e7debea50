"""Checks of model folders before anything loads them: a diffusers / pipeline folder whose
component holds its weights only as a pickle (`pytorch_model.bin`, `*.ckpt`, ...) that would need
code execution is refused with one line of ours, not torch's or diffusers' multi-line messages.
Plain tensor files (loadable with `weights_only=True`) stay accepted."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from .errors import InputError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def _needs_code(path: Path) -> bool:
    """Whether torch's safe loader refuses `path` (memory-mapped onto no device: nothing is read
    beyond what the refusal needs)."""
    import torch

    try:
        torch.load(path, map_location="meta", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        return True
    except Exception as e:  # other failures are the loaders' to report (truncated files, ...)
        return "weights_only" in str(e) or "Weights only load failed" in str(e)
    return False


def refuse_pickled_components(folder: str | os.PathLike | None) -> None:
    """InputError naming the component of `folder` (a diffusers or pipeline folder; anything else
    is left alone) whose only weights are a pickle that would run code when loaded."""
    if not folder or not Path(folder).is_dir():
        return
    root = Path(folder)
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = [p for p in sub.iterdir() if p.is_file()]
        if any(p.suffix == ".safetensors" for p in files):
            continue  # the loaders take safetensors first
        for f in sorted(p for p in files if p.suffix.lower() in PICKLE_SUFFIXES):
            if _needs_code(f):
                raise InputError(
                    f"{sub}: refused: {f.name} is a pickle that would run code to load (only safetensors "
                    "or plain tensor files are loaded); convert it to safetensors"
                )
