"""Recorded settings: the one guard for every folder a later command continues.

Such a folder records the settings it was made with before any work (a training run's
`config.yaml`, a create-data folder's `create_config.json`, a reproduction's `reproduce.yaml`, a
study's `settings.json`). Continuing it compares the new settings with the recorded ones and
refuses, in one line naming each differing setting, unless they agree. Paths are compared
resolved (`./data/` = `data`); nested sections are compared setting by setting (`create.steps`).
A command compares either every setting but those that may change (`free`), or only the
settings that define what it makes (`only`). A setting the record lacks (a folder made before the
setting existed) counts as its default, so such folders still continue when it is left at that.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml

from .atomic import save_text
from .errors import InputError

# Settings a resumed training run may change: they change no result (`out` is the run folder
# itself, so a moved run resumes).
TRAINING_FREE = frozenset(
    {"epochs", "max_steps", "num_workers", "progress", "checkpoint_every", "device", "out"}
)
# Settings a re-run of a reproduction may change (of the whole run or of any stage section).
REPRODUCE_FREE = frozenset({"device", "progress", "caption_model", "out"})


def comparable(value: Any) -> Any:
    """A setting as compared: a string naming an existing path resolved, a trailing `/` dropped."""
    if isinstance(value, (list, tuple)):
        return [comparable(v) for v in value]
    if isinstance(value, str) and value and not value.startswith("-"):
        p = Path(value).expanduser()
        if p.exists():
            return str(p.resolve())
        return value.rstrip("/") or value
    return value


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections -> one level with dotted names (`{"create": {"steps": 50}}` -> `create.steps`)."""
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def defaults_of(config: Any) -> dict[str, Any]:
    """The default of each field of a dataclass instance that has one (what a record written
    before the field existed stands for)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def changed_settings(
    recorded: Mapping[str, Any],
    current: Mapping[str, Any],
    only: Collection[str] | None = None,
    free: Collection[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> list[str]:
    """The (dotted) names of the settings that differ: those in `only`, else every current setting
    but the `free` ones (a name in `free` frees it in every section too). A setting the record
    lacks counts as its entry in `defaults`, else None; one missing from `current` as None."""
    old, new, dflt = flatten(recorded), flatten(current), flatten(defaults or {})
    names = only if only is not None else new
    return [
        k
        for k in names
        if k not in free
        and k.rsplit(".", 1)[-1] not in free
        and comparable(old[k] if k in old else dflt.get(k)) != comparable(new.get(k))
    ]


def check_settings(
    recorded: Mapping[str, Any],
    current: Mapping[str, Any],
    refusal: str,
    hint: str = "",
    only: Collection[str] | None = None,
    free: Collection[str] = (),
    labels: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """InputError `"<refusal> (<name>: <old> -> <new>, ...); <hint>"` if any setting differs
    (see `changed_settings`); `labels` gives some settings a name for the message."""
    changed = changed_settings(recorded, current, only, free, defaults)
    if not changed:
        return
    old, new, labels = flatten(recorded), flatten(current), labels or {}
    detail = ", ".join(f"{labels.get(k, k)}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:4])
    more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
    raise InputError(f"{refusal} ({detail}{more})" + (f"; {hint}" if hint else ""))


def check_recorded(
    path: str | Path, current: Mapping[str, Any], refusal: str, hint: str = "", **how: Any
) -> bool:
    """Whether `path` records settings, after `check_settings(recorded, current, refusal, hint,
    **how)` (`how`: only, free, labels). False: no such file, nothing to compare (the caller then
    records its settings)."""
    recorded = read_settings(path, hint)
    if recorded is None:
        return False
    check_settings(recorded, current, refusal, hint, **how)
    return True


def read_settings(path: str | Path, hint: str = "") -> dict[str, Any] | None:
    """The settings recorded in `path` (JSON for `.json`, else YAML); None if there is no such
    file; InputError naming it if it cannot be read."""
    path, tail = Path(path), f"; {hint}" if hint else ""
    if not path.exists():
        return None
    if path.suffix != ".json":  # YAML: the one config reader (UTF-8, size limit, no aliases)
        from .config_reader import read_config_file

        return read_config_file(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable ({' '.join(str(e).split())}){tail}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a settings file (expected a mapping){tail}")
    return data


def record_settings(path: str | Path, settings: Mapping[str, Any], header: str = "") -> None:
    """Write `settings` atomically to `path`: JSON for `.json`, else YAML after the `header` comment."""
    path = Path(path)
    if path.suffix == ".json":
        save_text(path, json.dumps(dict(settings), indent=1))
    else:
        save_text(path, header + yaml.safe_dump(dict(settings), sort_keys=False))
