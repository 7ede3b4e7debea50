"""`diff2in1 info`: versions, compute device and a description of a backbone source."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from .errors import InputError


def best_device() -> str:
    """The fastest available device name: cuda, mps or cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _versions() -> list[str]:
    import diffusers
    import transformers

    from . import __version__

    lines = [
        f"diff2in1      {__version__}",
        f"python        {platform.python_version()}",
        f"torch         {torch.__version__}",
        f"diffusers     {diffusers.__version__}",
        f"transformers  {transformers.__version__}",
        f"device        {best_device()} (threads: {torch.get_num_threads()})",
    ]
    if torch.cuda.is_available():
        lines.append(f"gpu           {torch.cuda.get_device_name(0)}")
    return lines


def _describe_source(source: str) -> list[str]:
    from .backbone import PRESETS, SINGLE_FILE_SUFFIXES

    path = Path(source).expanduser()
    if source in PRESETS:
        kind = f"preset: {PRESETS[source]}"
    elif path.is_dir():
        kind = "diffusers folder"
    elif path.suffix.lower() in SINGLE_FILE_SUFFIXES and path.is_file():
        from .checkpoint import detect_layout, read_state_dict

        sd = read_state_dict(path)
        n = sum(v.numel() for v in sd.values())
        return [
            f"source        {source}",
            f"kind          {detect_layout(sd, path)} single file, {len(sd)} tensors, {n / 1e6:.1f}M values",
        ]
    else:
        raise InputError(f"{source}: no such file, folder or preset (presets: {', '.join(PRESETS)})")
    from .backbone import load_backbone

    bb = load_backbone(source, device="meta") if source == "sd15" else load_backbone(source)
    count = {
        k: sum(p.numel() for p in getattr(bb, k).parameters()) / 1e6 for k in ("unet", "vae", "text_encoder")
    }
    ch = bb.tap_channels
    return [
        f"source        {source}",
        f"kind          {kind}",
        "parameters    " + ", ".join(f"{k} {v:.1f}M" for k, v in count.items()),
        "tap channels  " + ", ".join(f"{g} {c}" for g, c in ch.items()),
    ]


def describe(source: str | None = None) -> str:
    """Human-readable report of the environment and, if given, a backbone source."""
    lines = _versions()
    if source:
        lines += [""] + _describe_source(source)
    return "\n".join(lines)
