"""Outputs never touch inputs: an output folder may not be, contain, or lie inside an input."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError


def _resolved(p: str | Path) -> Path:
    return Path(p).expanduser().resolve()


def refuse_overlap(out: str | Path, flag: str = "--out", **inputs: str | Path | list | None) -> None:
    """InputError if `out` equals, lies inside, or contains any existing input path (given by flag
    name, e.g. data=..., synthetic=[...]). Presets and missing paths are not paths: skipped."""
    o = _resolved(out)
    for name, value in inputs.items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not v or not Path(v).expanduser().exists():
                continue
            i = _resolved(v)
            what = f"{v}" if name == "inputs" else f"--{name.replace('_', '-')} {v}"  # positional inputs
            if o == i:
                raise InputError(f"{flag} {out}: is the input {what}; write outputs elsewhere")
            if i in o.parents:
                raise InputError(f"{flag} {out}: lies inside the input {what}; write outputs elsewhere")
            if o in i.parents:
                raise InputError(f"{flag} {out}: contains the input {what}; write outputs elsewhere")
