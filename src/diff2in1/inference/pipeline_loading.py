"""A pipeline from what a command is given: a pipeline folder or name, or a backbone and head folders;
and reading a pipeline folder's model_index.json."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..devices import warn_if_emulated
from ..errors import InputError
from .head_set import TASK_COMPONENTS
from .pipeline import Diff2in1Pipeline
from .sources import resolve_pretrained


def load_pipeline(
    pipeline: str | Path | None = None,
    backbone: str | Path | None = None,
    head: str | Path | list | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Diff2in1Pipeline:
    """A pipeline folder, or a backbone source + a head folder, on `device`; the frozen backbone in
    `dtype` (the head stays float32 and runs under autocast). InputError naming the file otherwise."""
    if pipeline is not None:
        if backbone is not None or head is not None:
            raise InputError("give either a pipeline folder or --backbone and --head, not both")
        source = resolve_pretrained(pipeline, local_files_only=True)
        if source.kind == "shipped":  # built on `device`: its backbone load sees where it will run
            return Diff2in1Pipeline.from_backbone(source.backbone, source.head, device=device, dtype=dtype)
        warn_if_emulated(device, dtype)  # (a shipped pipeline and a backbone source warn as they load)
        index = read_model_index(pipeline)
        missing = [c for c in ("vae", "unet", "text_encoder", "tokenizer", "scheduler") if c not in index]
        if not any(index.get(c) and index[c][0] for c in TASK_COMPONENTS.values()):
            missing.append("head")
        if missing:
            raise InputError(
                f"{pipeline}/model_index.json: not a diff2in1 pipeline (no {', '.join(missing)})"
            )
        try:
            pipe = Diff2in1Pipeline.from_pretrained(pipeline, local_files_only=True, dtype=dtype)
        except InputError:
            raise
        except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"{pipeline}: cannot load the pipeline ({msg})") from None
        pipe.to(device)
    elif backbone is None or not head:
        raise InputError("give a pipeline folder, or both --backbone and --head")
    else:
        return Diff2in1Pipeline.from_backbone(backbone, head, device=device, dtype=dtype)
    return pipe


def read_model_index(folder: str | Path) -> dict:
    """model_index.json of a pipeline folder, or InputError naming it."""
    path = Path(folder) / "model_index.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{folder}: not a pipeline folder (no model_index.json)") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable ({e})") from None
