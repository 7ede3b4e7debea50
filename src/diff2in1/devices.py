"""The one parser of device names, for every command's `--device` and `device:` setting.

Accepted: `auto` (the best device here), `cpu`, `cuda`, `cuda:N`, and `mps` where this torch build
has it. A device this machine does not have is a one-line error that names the ones it has,
checked before any model loads (torch itself would fail deep inside a model load, or not at all).
Also the one warning about a precision this machine can only emulate (`warn_if_emulated`).
"""

from __future__ import annotations

import re
import warnings
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


def emulated_precision(device: str | torch.device, dtype: torch.dtype) -> str | None:
    """Why `dtype` runs emulated (far slower than float32) on `device`, or None.

    A CPU without bf16 (AVX512-BF16 / AMX) or fp16 instructions computes those types by converting
    to float32 and back: on a 2-core AVX2 EPYC a bf16 2048x2048 matmul ran at 0.3 GFLOP/s against
    89 in float32, and a bf16 SD v1.5 UNet pass took minutes instead of seconds.
    """
    import torch

    if torch.device(device).type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = "bf16" if dtype == torch.bfloat16 else "fp16"
    try:  # oneDNN's own test of the CPU's instructions (a private op: absent from some builds)
        native = bool(getattr(torch.ops.mkldnn, f"_is_mkldnn_{name}_supported")())
    except (AttributeError, RuntimeError):
        return None  # cannot tell: say nothing rather than something wrong
    if native:
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    return (
        f"this CPU ({capability}) has no {name} instructions, so {name} is emulated and many times "
        "slower than float32: use --mixed-precision no here"
    )


def warn_if_emulated(device: str | torch.device, dtype: torch.dtype) -> None:
    """Warn (once per call site) when `dtype` would be emulated on `device`; see `emulated_precision`."""
    why = emulated_precision(device, dtype)
    if why is not None:
        warnings.warn(why, stacklevel=3)
