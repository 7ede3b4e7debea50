"""The one reader of YAML settings files (every command's `--config`, a run's config.yaml).

A settings file must be a regular file of at most `MAX_CONFIG_BYTES`, UTF-8 (a byte-order mark
is allowed), and plain YAML: aliases (`*name`) are refused, so a few lines cannot expand to
gigabytes, and the size limit comes before any parsing. Every failure is one InputError line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError
from .regular_file import check_regular_file

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: a settings file is a few hundred bytes


class _NoAliasLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing aliases (the expansion bomb's tool)."""

    def compose_node(self, parent, index):  # noqa: ANN001 (yaml's signature)
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: YAML aliases (*name) are not accepted")
        return super().compose_node(parent, index)


def parse_yaml(text: str, name: str) -> Any:
    """Parse settings text; InputError naming `name` on any problem."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise InputError(f"{name}: nested too deeply to be a settings file") from None
    except yaml.YAMLError as e:
        raise InputError(f"{name}: not valid YAML ({' '.join(str(e).split())})") from None


def read_config_file(path: str | os.PathLike, limit: int = MAX_CONFIG_BYTES) -> dict[str, Any]:
    """The mapping of settings in a YAML file ({} for an empty file)."""
    path = Path(path)
    st = check_regular_file(path)
    if st.st_size > limit:
        raise InputError(f"{path}: {st.st_size} bytes, too large for a settings file (limit {limit})")
    try:
        raw = path.read_bytes()[: limit + 1]
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{path}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); save it as UTF-8"
        ) from None
    loaded = parse_yaml(text, str(path))
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise InputError(f"{path}: a config file must be a mapping of settings (key: value lines)")
    bad = [k for k in loaded if not isinstance(k, str)]
    if bad:
        raise InputError(f"{path}: setting names must be text, got {bad[0]!r}")
    return loaded
