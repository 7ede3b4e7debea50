"""The one parser of device names, for every command's `--device` and `device:` setting.

Accepted: `auto` (the best device here), `cpu`, `cuda`, `cuda:N`, and `mps` where this torch build
has it. A device this machine does not have is a one-line error that names the ones it has,
checked before any model loads (torch itself would fail deep inside a model load, or not at all).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import torch

_FORM = re.compile(r"(auto|cpu|mps|cuda)(?::(\d+))?")


def _has_mps() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The device names this machine can run on: cpu, cuda:0..N-1, mps."""
    import torch

    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _has_mps():
        names.append("mps")
    return names


def check_device(name: str | None, flag: str = "--device") -> str:
    """`name` normalised ('auto' for None/''), or InputError naming what this machine has."""
    text = "auto" if name in (None, "") else str(name).strip().lower()
    if text in ("auto", "cpu"):  # every machine has them; no torch import (command-line checks)
        return text
    import torch

    m = _FORM.fullmatch(text)
    have = ", ".join(["auto", *available_devices()])
    if not m or (m.group(2) is not None and m.group(1) != "cuda"):
        raise InputError(f"{flag} {name}: not a device name (auto, cpu, cuda, cuda:N or mps; here: {have})")
    kind, index = m.group(1), m.group(2)
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"{flag} {name}: CUDA is not available on this machine (available: {have})")
        if index is not None and int(index) >= count:
            raise InputError(f"{flag} {name}: this machine has {count} CUDA device(s) (available: {have})")
    if kind == "mps" and not _has_mps():
        raise InputError(f"{flag} {name}: MPS is not available on this machine (available: {have})")
    return text


def resolve_device(name: str | None, flag: str = "--device") -> torch.device:
    """The torch device for `name` (checked; `auto` picks cuda, then mps, then cpu)."""
    import torch

    text = check_device(name, flag)
    if text == "auto":
        from .info import best_device

        return torch.device(best_device())
    return torch.device(text)
