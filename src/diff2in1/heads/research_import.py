"""Import the released research checkpoints into a `NormalHead` (docs/method.md section 3).

Per epoch the research code saves two plain state_dict files: `checkpoint_<epoch>.pth` (the
`SNmodule` fusion, 121 keys) and `checkpoint_bae_<epoch>.pth` (the Bae `Decoder`, 60 keys).
Keys are renamed by the prefix tables below (first match wins; the rest of the key is kept, so the
research buffer names u0, sv0, stored_mean1, ... survive). The fusion's transformer decoder, MLP
and two linears are never used in its forward and are dropped; any other key, missing key or
shape mismatch is an InputError naming the file. The widths are inferred from the shapes.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..errors import InputError
from ..memory_alignment import realign_
from .normal_head import HeadConfig, NormalHead, check_state_dict, short_list

# research prefix -> our prefix
FUSION_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("low_feature_conv.0.", "fusion.low_proj."),
    ("mid_feature_conv.0.", "fusion.mid_proj."),
    ("mid_feature_mix_conv.", "fusion.mid_block."),
    ("high_feature_conv.0.", "fusion.high_proj."),
    ("high_feature_mix_conv.", "fusion.high_block."),
    ("highest_feature_conv.0.", "fusion.highest_proj."),
    ("highest_feature_mix_conv.", "fusion.highest_block."),
    ("bn_up0.", "fusion.bn0."),
    ("conv_up1.", "fusion.up1."),
    ("bn_up1.", "fusion.bn1."),
    ("conv_up2.", "fusion.up2."),
    ("bn_up2.", "fusion.bn2."),
)
DECODER_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("conv2.", "decoder.d0."),
    ("up1._net.0.", "decoder.up1.conv1."),
    ("up1._net.1.", "decoder.up1.norm1."),
    ("up1._net.3.", "decoder.up1.conv2."),
    ("up1._net.4.", "decoder.up1.norm2."),
    ("up2._net.0.", "decoder.up2.conv1."),
    ("up2._net.1.", "decoder.up2.norm1."),
    ("up2._net.3.", "decoder.up2.conv2."),
    ("up2._net.4.", "decoder.up2.norm2."),
    ("up3._net.0.", "decoder.up3.conv1."),
    ("up3._net.1.", "decoder.up3.norm1."),
    ("up3._net.3.", "decoder.up3.conv2."),
    ("up3._net.4.", "decoder.up3.norm2."),
    ("up4._net.0.", "decoder.up4.conv1."),
    ("up4._net.1.", "decoder.up4.norm1."),
    ("up4._net.3.", "decoder.up4.conv2."),
    ("up4._net.4.", "decoder.up4.norm2."),
    ("out_conv_res8.", "decoder.out8."),
    ("out_conv_res4.", "decoder.refine4."),  # Sequential indices 0/2/4/6 kept as they are
    ("out_conv_res2.", "decoder.refine2."),
    ("out_conv_res1.", "decoder.refine1."),
)
# Modules of the research SNmodule that its forward never uses.
FUSION_UNUSED_PREFIXES: tuple[str, ...] = ("transfromer_decoder.", "mlp.", "to_k.", "to_q.")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """torch.load(weights_only=True) of a plain state_dict; InputError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            f"{path}: refused: loading it would need pickle code execution (torch.load weights_only=True "
            "rejected it); only plain state_dict files are accepted"
        ) from None
    except Exception as e:  # zip/format errors come as RuntimeError and friends
        detail = " ".join(str(e).split())  # one line for the CLI
        raise InputError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {detail})") from None
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise InputError(f"{path}: not a state_dict (expected a mapping of names to tensors)")
    state = dict(obj)
    # A model saved from inside DataParallel/DDP carries a "module." prefix on every key.
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def rename_keys(
    state: Mapping[str, Tensor],
    key_map: tuple[tuple[str, str], ...],
    source: str | Path,
    drop_prefixes: tuple[str, ...] = (),
) -> dict[str, Tensor]:
    """Research keys -> our keys by the first matching prefix; unknown keys are an InputError."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key.startswith(drop_prefixes):
            continue
        for old, new in key_map:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise InputError(f"{source}: unexpected keys {short_list(sorted(unknown))}")
    return out


def _dim(state: Mapping[str, Tensor], key: str, axis: int, source: str | Path) -> int:
    if key not in state:
        raise InputError(f"{source}: missing key {key!r}")
    shape = state[key].shape
    if len(shape) <= axis:
        raise InputError(f"{source}: {key} has shape {tuple(shape)}, expected at least {axis + 1} dims")
    return int(shape[axis])


def infer_config(
    fusion: Mapping[str, Tensor],
    decoder: Mapping[str, Tensor],
    fusion_path: str | Path,
    decoder_path: str | Path,
) -> HeadConfig:
    """HeadConfig from the research tensor shapes (research key names)."""
    f, d = fusion_path, decoder_path
    try:
        return HeadConfig(
            in_channels=tuple(
                _dim(fusion, f"{g}_feature_conv.0.weight", 1, f) for g in ("low", "mid", "high", "highest")
            ),
            f4=_dim(fusion, "low_feature_conv.0.weight", 0, f),
            f3=_dim(fusion, "mid_feature_mix_conv.conv1.weight", 0, f),
            f2=_dim(fusion, "high_feature_mix_conv.conv1.weight", 0, f),
            g=_dim(fusion, "highest_feature_mix_conv.conv1.weight", 0, f),
            f1=_dim(fusion, "conv_up1.weight", 1, f),  # ConvTranspose2d weight is (in, out, k, k)
            f0=_dim(fusion, "conv_up2.weight", 1, f),
            decoder_widths=(
                _dim(decoder, "conv2.weight", 0, d),
                *(_dim(decoder, f"up{i}._net.0.weight", 0, d) for i in range(1, 5)),
            ),
            refine_hidden=_dim(decoder, "out_conv_res4.0.weight", 0, d),
        )
    except InputError:  # a missing or misshapen tensor, already named (an InputError is a ValueError)
        raise
    except ValueError as e:
        raise InputError(f"{fusion_path} + {decoder_path}: widths do not form a valid head ({e})") from None


def _cast_like(
    state: dict[str, Tensor], expected: Mapping[str, Tensor], source: str | Path
) -> dict[str, Tensor]:
    out = {}
    for k, v in state.items():
        want = expected[k].dtype
        if v.dtype != want and not (v.is_floating_point() and want.is_floating_point):
            raise InputError(f"{source}: {k} has dtype {v.dtype}, expected {want}")
        out[k] = v.to(want)
    return out


def load_research_checkpoint(fusion_path: str | Path, decoder_path: str | Path) -> NormalHead:
    """Build a NormalHead (in eval mode) from `checkpoint_<epoch>.pth` + `checkpoint_bae_<epoch>.pth`."""
    fusion_raw = read_state_dict(fusion_path)
    decoder_raw = read_state_dict(decoder_path)
    parts = (
        (
            rename_keys(fusion_raw, FUSION_KEY_MAP, fusion_path, FUSION_UNUSED_PREFIXES),
            fusion_path,
            "fusion.",
        ),
        (rename_keys(decoder_raw, DECODER_KEY_MAP, decoder_path), decoder_path, "decoder."),
    )
    config = infer_config(fusion_raw, decoder_raw, fusion_path, decoder_path)
    with torch.device("meta"):  # every tensor comes from the files: skip the random init
        model = NormalHead.from_head_config(config)
    expected = model.state_dict()
    loaded: dict[str, Tensor] = {}
    for state, source, prefix in parts:
        part_expected = {k: v for k, v in expected.items() if k.startswith(prefix)}
        check_state_dict(part_expected, state, source)
        loaded.update(_cast_like(state, part_expected, source))
    model.load_state_dict(loaded, strict=True, assign=True)
    return realign_(model).eval()
