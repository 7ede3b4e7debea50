"""Where `Diff2in1Pipeline.from_pretrained(name)` loads from, decided before anything loads.

- a local pipeline folder: loaded from disk (an existing folder always wins);
- a name that ships in the package (`SHIPPED`, e.g. "tiny-scenes"): its backbone preset with its
  demo head, no files of the user's;
- a Hub id `owner/name`: from the Hugging Face cache, else downloaded, only if the Hub answers
  within `HUB_TIMEOUT_S` (and HF_HUB_OFFLINE is not set);
- anything else (a path or bare name that does not exist): a one-line `InputError` at once.

Imports no torch, so the command line can check a name before the models load.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

from ..errors import InputError

# name -> (backbone preset, head folder inside diff2in1/presets)
SHIPPED = {"tiny-scenes": ("tiny-scenes", "tiny-scenes-head")}
DEMO_NOTE = (
    "demo weights: the shipped tiny-scenes backbone and a small head trained on procedural "
    "scenes; not useful on real photos"
)
HUB_TIMEOUT_S = 3.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class Source:
    """kind "local" (path), "shipped" (backbone preset + head folder) or "hub" (path = the id;
    local_files_only: load only from the Hugging Face cache)."""

    kind: str
    path: str
    backbone: str = ""
    head: str = ""
    local_files_only: bool = False


def shipped_head_dir(name: str) -> Path:
    """The folder of a shipped pipeline's head."""
    return Path(str(resources.files("diff2in1") / "presets" / SHIPPED[name][1]))


def looks_like_hub_id(name: str) -> bool:
    """`owner/name` with no leading `.`, `/` or `~` and no `..`: what the Hub accepts as a repo id."""
    return bool(_HUB_ID.match(name)) and ".." not in name and not name.endswith(".git")


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether the Hub endpoint (HF_ENDPOINT, default huggingface.co) accepts a connection in time."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_pretrained(name: str | os.PathLike, local_files_only: bool = False) -> Source:
    """Decide where `name` loads from (see the module docstring); InputError in one line if nowhere."""
    text = os.fspath(name)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{text}: a file, not a pipeline folder (for a checkpoint: --backbone, --head)")
        return Source("local", str(path))
    if text in SHIPPED:
        backbone, _ = SHIPPED[text]
        return Source("shipped", text, backbone=backbone, head=str(shipped_head_dir(text)))
    if not looks_like_hub_id(text):
        raise InputError(
            f"{text}: no such pipeline folder (shipped pipelines: {', '.join(SHIPPED)}; "
            "a Hugging Face Hub id has the form owner/name)"
        )
    if local_files_only or _offline() or not hub_reachable():
        return Source("hub", text, local_files_only=True)
    return Source("hub", text)


def hub_failure(source: Source, error: BaseException) -> InputError:
    """A one-line InputError for a Hub id that could not be loaded."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if source.local_files_only:
        return InputError(
            f"{source.path}: no such local folder, and not in the Hugging Face cache "
            f"(the Hub is offline or unreachable; {first})"
        )
    return InputError(f"{source.path}: cannot load it from the Hugging Face Hub ({first})")
