"""Pipeline folders from a backbone + a head: a trained head, or the released research checkpoints."""

from __future__ import annotations

from pathlib import Path

from ..atomic import TMP_MARKER, is_our_temp, umask_mode
from ..errors import InputError
from ..fingerprint import backbone_fingerprint
from ..heads import NormalHead, load_research_checkpoint
from ..path_overlap import refuse_overlap
from .pipeline import Diff2in1Pipeline


def _fresh_out(out: str | Path, *inputs: str | Path) -> Path:
    """`out` must be new (or an empty folder) and not inside/equal to any input."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out}: exists and is not an empty folder: choose a new one")
    refuse_overlap(out, inputs=list(inputs))
    return out


def _save(pipe: Diff2in1Pipeline, out: Path) -> Path:
    """Write into a temporary sibling folder, then rename: a crash leaves no half pipeline. Only a
    temp folder of ours (tagged name and marker, atomic.py) is ever removed; files get the umask's
    permissions."""
    tmp = out.with_name(f".{out.name}.diff2in1-tmp")
    if is_our_temp(tmp):
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir()  # fails (one line, main's OSError) on a user's folder of that name: nothing deleted
    (tmp / TMP_MARKER).touch()
    pipe.save_pretrained(tmp)
    (tmp / TMP_MARKER).unlink()
    umask_mode(tmp)
    if out.exists():
        out.rmdir()  # empty, checked by _fresh_out
    tmp.rename(out)
    return out


def export_pipeline(backbone: str | Path, head: str | Path | list, out: str | Path) -> Path:
    """Write a pipeline folder from a backbone source and a trained head folder, or a list of head
    folders of different tasks (normals, depth, segmentation)."""
    heads = list(head) if isinstance(head, (list, tuple)) else [head]
    out = _fresh_out(out, backbone, *heads)
    return _save(Diff2in1Pipeline.from_backbone(backbone, heads if len(heads) > 1 else heads[0]), out)


def convert_research(
    fusion: str | Path, decoder: str | Path, backbone: str | Path, out: str | Path, resolution: int = 512
) -> Path:
    """The research code's `checkpoint_<epoch>.pth` + `checkpoint_bae_<epoch>.pth` (plain state_dicts,
    loaded without pickle code) and its SD v1.5 backbone -> a pipeline folder. The head records
    `resolution` (the research code trained at 512, squashed) and the backbone's fingerprint."""
    out = _fresh_out(out, fusion, decoder, backbone)
    head = research_head(fusion, decoder, resolution)  # before the backbone: bad files fail fast
    from ..backbone import load_backbone

    bb = load_backbone(backbone)
    head.set_usage(backbone=backbone_fingerprint(bb.unet, bb.vae, bb.tap_channels))
    return _save(Diff2in1Pipeline.from_backbone(bb, head), out)


def research_head(fusion: str | Path, decoder: str | Path, resolution: int = 512) -> NormalHead:
    """The research checkpoints as a head that records how the research code used it (squash to
    `resolution`); its backbone fingerprint is set by whoever knows the backbone."""
    head = load_research_checkpoint(fusion, decoder)
    head.set_usage(processing_resolution=int(resolution), resize_mode="squash")
    return head
