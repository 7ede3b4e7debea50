"""Single-file Stable Diffusion v1 checkpoints (original LDM key layout) <-> diffusers components.

Reading: `read_state_dict` loads `.safetensors` or a PyTorch pickle *without executing pickle code*;
`ldm_to_diffusers` converts with diffusers' own converters; `load_components_from_single_file`
builds the three models without allocating random weights and loads them strictly.

Writing: `diffusers_to_ldm` is our own mapping, derived from the model configs (number of levels,
layers per block, which blocks have attention), so it works for any SD-v1-shaped model, tiny test
models included; `save_single_file` writes `.safetensors` or `.ckpt`.
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .atomic import umask_mode
from .errors import InputError
from .memory_alignment import realign_

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_TEXT_PREFIX = "cond_stage_model.transformer."
LDM_PREFIXES = (LDM_UNET_PREFIX, LDM_VAE_PREFIX, LDM_TEXT_PREFIX)

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin")

_POSITION_IDS = "embeddings.position_ids"


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    """The first sentence of an exception's message (torch appends paragraphs of advice)."""
    text = str(e).strip()
    if not text:
        return "unexpected end of file" if isinstance(e, EOFError) else type(e).__name__
    return text.splitlines()[0].split(". ")[0].rstrip(".")


def _torch_load_error(path: Path, e: BaseException) -> InputError:
    """Translate a torch.load failure into one line that says what is wrong with the file."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in text:
        glob = re.search(r"GLOBAL ([\w.]+)", text)
        if glob:
            return InputError(
                f"{path}: needs pickle code execution to load and was refused (it references "
                f"{glob.group(1)}); convert it to .safetensors with a tool you trust"
            )
        op = re.search(r"Unsupported operand (\d+)", text)
        why = f"unsupported pickle opcode {op.group(1)}" if op else _first_line(e)
        return InputError(
            f"{path}: is corrupt, or a pickle not written by torch.save ({why}); loading it would need "
            "pickle code execution and was refused; convert it to .safetensors with a tool you trust"
        )
    if isinstance(e, EOFError) or (
        isinstance(e, RuntimeError) and re.search(r"zip|PytorchStreamReader|corrupt", text, re.I)
    ):
        return InputError(f"{path}: is truncated or corrupt ({_first_line(e)})")
    return InputError(
        f"{path}: is truncated or corrupt, or not a PyTorch checkpoint ({type(e).__name__}: {_first_line(e)})"
    )


def _as_tensor_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    # LDM / Lightning checkpoints nest the weights under "state_dict" next to training state.
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise InputError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    if not obj:
        raise InputError(f"{path}: holds no tensors (empty state dict)")
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise InputError(
                f"{path}: not a dict of tensors (entry {k!r} holds a {type(v).__name__}, expected a tensor)"
            )
    return dict(obj)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a flat `{name: tensor}` dict from `.safetensors`, `.ckpt`, `.pth`, `.pt` or `.bin`.

    Pickle files are opened with `weights_only=True`: a file that would run code is refused,
    never executed. Every problem is raised as a one-line `InputError` naming the file.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if not p.is_file():
        raise InputError(f"{p}: not a file")
    suffix = p.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(p), device="cpu")
        except SafetensorError as e:
            raise InputError(f"{p}: is truncated or corrupt ({_first_line(e)})") from None
        except OSError as e:
            raise InputError(f"{p}: cannot be read ({_first_line(e)})") from None
    elif suffix in PICKLE_SUFFIXES:
        # mmap keeps multi-GB checkpoints (EMA + non-EMA copies) out of RAM until a tensor is used;
        # torch only supports it for the zip format, so legacy pickles are read normally.
        mmap = zipfile.is_zipfile(p)
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
        except OSError as e:
            raise InputError(f"{p}: cannot be read ({_first_line(e)})") from None
        except Exception as e:  # every failure of a user file becomes one line
            raise _torch_load_error(p, e) from None
    else:
        allowed = ", ".join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)
        raise InputError(
            f"{p}: unsupported checkpoint extension {p.suffix or '(none)'!r} (expected {allowed})"
        )
    return _as_tensor_dict(obj, p)


# --------------------------------------------------------------------------------------------------
# Layout detection
# --------------------------------------------------------------------------------------------------


def _key_sample(sd: Mapping[str, Any], n: int = 3) -> str:
    keys = sorted(sd)[:n]
    return ", ".join(keys) + (", ..." if len(sd) > n else "")


def detect_layout(sd: Mapping[str, Any], path: str | os.PathLike[str] | None = None) -> str:
    """Name the key layout of a state dict.

    Returns "ldm" (an SD v1 single file), or "diffusers-unet" / "diffusers-vae" /
    "diffusers-text-encoder" for one component's weights file. Anything else raises `InputError`.
    """
    where = str(path) if path is not None else "checkpoint"
    keys = list(sd)
    found = {p: any(k.startswith(p) for k in keys) for p in LDM_PREFIXES}
    if all(found.values()):
        return "ldm"
    if any(found.values()):
        parts = {LDM_UNET_PREFIX: "UNet", LDM_VAE_PREFIX: "VAE", LDM_TEXT_PREFIX: "CLIP text encoder"}
        missing = ", ".join(f"{parts[p]} ({p}*)" for p, ok in found.items() if not ok)
        hint = ""
        if not found[LDM_TEXT_PREFIX] and any(k.startswith("cond_stage_model.model.") for k in keys):
            hint = " (it has an OpenCLIP text encoder: Stable Diffusion v2, not v1)"
        raise InputError(f"{where}: incomplete Stable Diffusion v1 checkpoint: no {missing} keys{hint}")
    ks = set(keys)
    if (
        "conv_in.weight" in ks
        and any(k.startswith("down_blocks.") for k in keys)
        and any(k.startswith("time_embedding.") for k in keys)
    ):
        return "diffusers-unet"
    if any(k.startswith("encoder.down_blocks.") for k in keys) and any(
        k.startswith("decoder.") for k in keys
    ):
        return "diffusers-vae"
    if any(k.endswith("embeddings.token_embedding.weight") for k in keys) and any(
        ".encoder.layers." in k or k.startswith("encoder.layers.") for k in keys
    ):
        return "diffusers-text-encoder"
    raise InputError(
        f"{where}: not a Stable Diffusion v1 checkpoint (found keys like {_key_sample(sd)}; expected "
        f"{LDM_UNET_PREFIX}*, {LDM_VAE_PREFIX}*, {LDM_TEXT_PREFIX}*)"
    )


# --------------------------------------------------------------------------------------------------
# LDM -> diffusers (diffusers' converters, plus our text-encoder handling)
# --------------------------------------------------------------------------------------------------


@functools.cache
def _clip_layout() -> tuple[bool, bool]:
    """(keys carry a `text_model.` level, `position_ids` is a saved key) for the installed transformers.

    transformers 4 nests CLIPTextModel under `text_model.` and (in old versions) saves
    `position_ids`; transformers 5 has neither. A 1-layer model on the meta device tells which.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=8,
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        max_position_embeddings=4,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    with torch.device("meta"):
        keys = list(CLIPTextModel(cfg).state_dict())
    return keys[0].startswith("text_model."), any(k.endswith(_POSITION_IDS) for k in keys)


def _ldm_text_to_diffusers(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    nested, keep_pos = _clip_layout()
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if not k.startswith(LDM_TEXT_PREFIX):
            continue
        name = k[len(LDM_TEXT_PREFIX) :]
        # Files written with transformers >= 4.? have `text_model.`; very old ones do not.
        name = name.removeprefix("text_model.")
        if name.endswith(_POSITION_IDS) and not keep_pos:
            continue  # a constant arange the model rebuilds itself; some files even store it corrupted
        out[("text_model." if nested else "") + name] = v
    return out


def ldm_to_diffusers(
    sd: Mapping[str, Tensor],
    unet_config: Mapping[str, Any],
    vae_config: Mapping[str, Any],
    path: str | os.PathLike[str] | None = None,
    extract_ema: bool = False,
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """Split an SD v1 LDM state dict into diffusers-named (unet, vae, text_encoder) state dicts.

    `extract_ema` takes the UNet's EMA copy (`model_ema.*`) from files that have both.
    Keys the converters cannot place are left out; the strict loader reports them.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    layout = detect_layout(sd, path)
    if layout != "ldm":
        raise InputError(
            f"{path if path is not None else 'checkpoint'}: holds only a {layout} weights file, not a full "
            "Stable Diffusion v1 checkpoint; pass the diffusers folder it belongs to instead"
        )
    if extract_ema and sum(k.startswith("model_ema.") for k in sd) <= 100:
        raise InputError(f"{path if path is not None else 'checkpoint'}: has no EMA weights (model_ema.*)")
    # Both converters take the whole dict and select their prefix themselves. They fill a few
    # entries with `dict.get`, so a missing key becomes None: drop those, the loader names them.
    unet = convert_ldm_unet_checkpoint(dict(sd), dict(unet_config), extract_ema=extract_ema)
    vae = convert_ldm_vae_checkpoint(dict(sd), dict(vae_config))
    unet = {k: v for k, v in unet.items() if v is not None}
    vae = {k: v for k, v in vae.items() if v is not None}
    return unet, vae, _ldm_text_to_diffusers(sd)


# --------------------------------------------------------------------------------------------------
# diffusers -> LDM (our own mapping, derived from the configs)
# --------------------------------------------------------------------------------------------------

# Leaf renames inside a resnet; attention/transformer internals share their names in both layouts.
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

_UNET_DOWN = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}  # type -> has attention
_UNET_UP = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}
_UNET_MID = ("UNetMidBlock2DCrossAttn",)


def _per_level(value: int | Sequence[int], n: int, what: str) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    if len(value) != n:
        raise InputError(f"config: {what} has {len(value)} entries for {n} blocks")
    return list(value)


def _check_types(types: Sequence[str], allowed: Mapping[str, bool] | Sequence[str], where: str) -> None:
    for t in types:
        if t not in allowed:
            raise InputError(f"config: {where} type {t!r} has no Stable Diffusion v1 (LDM) equivalent")


def unet_module_map(config: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, str]]]:
    """diffusers UNet module path -> (LDM module path, leaf renames), derived from the config.

    LDM numbers the UNet as flat lists: `input_blocks` = stem conv, then per level its
    (resnet[, attention]) layers and a downsampler on all but the last level; `middle_block` =
    resnet, attention, resnet; `output_blocks` = per level (deepest first) layers_per_block + 1
    (resnet[, attention]) layers, the upsampler joining the last layer of all but the last level.
    """
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    _check_types(down, _UNET_DOWN, "down block")
    _check_types(up, _UNET_UP, "up block")
    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    _check_types([mid], _UNET_MID, "mid block")
    n = len(down)
    lpb = _per_level(config["layers_per_block"], n, "layers_per_block")
    none: dict[str, str] = {}
    m: dict[str, tuple[str, dict[str, str]]] = {
        "time_embedding.linear_1": ("time_embed.0", none),
        "time_embedding.linear_2": ("time_embed.2", none),
        "conv_in": ("input_blocks.0.0", none),
        "conv_norm_out": ("out.0", none),
        "conv_out": ("out.2", none),
    }
    idx = 1
    for i, t in enumerate(down):
        for j in range(lpb[i]):
            m[f"down_blocks.{i}.resnets.{j}"] = (f"input_blocks.{idx}.0", _UNET_RESNET)
            if _UNET_DOWN[t]:
                m[f"down_blocks.{i}.attentions.{j}"] = (f"input_blocks.{idx}.1", none)
            idx += 1
        if i < n - 1:  # diffusers, like LDM, does not downsample after the deepest level
            m[f"down_blocks.{i}.downsamplers.0.conv"] = (f"input_blocks.{idx}.0.op", none)
            idx += 1
    # UNetMidBlock2DCrossAttn: resnets[0], then (attention[k], resnet[k+1]) pairs.
    m["mid_block.resnets.0"] = ("middle_block.0", _UNET_RESNET)
    m["mid_block.attentions.0"] = ("middle_block.1", none)
    m["mid_block.resnets.1"] = ("middle_block.2", _UNET_RESNET)
    idx = 0
    for i, t in enumerate(up):
        layers = lpb[n - 1 - i] + 1  # up level i mirrors down level n-1-i, with one extra layer
        for j in range(layers):
            m[f"up_blocks.{i}.resnets.{j}"] = (f"output_blocks.{idx}.0", _UNET_RESNET)
            if _UNET_UP[t]:
                m[f"up_blocks.{i}.attentions.{j}"] = (f"output_blocks.{idx}.1", none)
            if j == layers - 1 and i < n - 1:
                slot = 2 if _UNET_UP[t] else 1
                m[f"up_blocks.{i}.upsamplers.0.conv"] = (f"output_blocks.{idx}.{slot}.conv", none)
            idx += 1
    return m


def vae_module_map(config: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, str]]]:
    """diffusers AutoencoderKL module path -> (LDM module path, leaf renames), derived from the config.

    LDM numbers decoder levels from full resolution up (`decoder.up.0` is the last one run),
    diffusers in execution order, so decoder levels are reversed.
    """
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    _check_types(down, ("DownEncoderBlock2D",), "VAE down block")
    _check_types(up, ("UpDecoderBlock2D",), "VAE up block")
    if len(up) != len(down):
        raise InputError("config: VAE has different numbers of encoder and decoder levels")
    n = len(down)
    lpb = config.get("layers_per_block", 2)
    if not isinstance(lpb, int):
        raise InputError("config: VAE layers_per_block must be one number")
    none: dict[str, str] = {}
    m: dict[str, tuple[str, dict[str, str]]] = {
        "quant_conv": ("quant_conv", none),
        "post_quant_conv": ("post_quant_conv", none),
    }
    for part in ("encoder", "decoder"):
        m[f"{part}.conv_in"] = (f"{part}.conv_in", none)
        m[f"{part}.conv_norm_out"] = (f"{part}.norm_out", none)
        m[f"{part}.conv_out"] = (f"{part}.conv_out", none)
        m[f"{part}.mid_block.resnets.0"] = (f"{part}.mid.block_1", _VAE_RESNET)
        m[f"{part}.mid_block.resnets.1"] = (f"{part}.mid.block_2", _VAE_RESNET)
        if config.get("mid_block_add_attention", True):
            m[f"{part}.mid_block.attentions.0"] = (f"{part}.mid.attn_1", _VAE_ATTN)
    for i in range(n):
        for j in range(lpb):
            m[f"encoder.down_blocks.{i}.resnets.{j}"] = (f"encoder.down.{i}.block.{j}", _VAE_RESNET)
        if i < n - 1:
            m[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = (f"encoder.down.{i}.downsample.conv", none)
        level = n - 1 - i
        for j in range(lpb + 1):
            m[f"decoder.up_blocks.{i}.resnets.{j}"] = (f"decoder.up.{level}.block.{j}", _VAE_RESNET)
        if i < n - 1:
            m[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = (f"decoder.up.{level}.upsample.conv", none)
    return m


def _rename(key: str, modules: Mapping[str, tuple[str, dict[str, str]]], what: str) -> str:
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # longest module prefix first
        hit = modules.get(".".join(parts[:cut]))
        if hit is None:
            continue
        target, leaves = hit
        rest = ".".join(parts[cut:])
        for old, new in leaves.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old) :]
                break
        return f"{target}.{rest}"
    raise InputError(f"{what}: parameter {key!r} has no place in the Stable Diffusion v1 (LDM) layout")


def _config_of(model: nn.Module) -> dict[str, Any]:
    return dict(model.config)  # diffusers FrozenDict


def diffusers_to_ldm(unet: nn.Module, vae: nn.Module, text_encoder: nn.Module) -> dict[str, Tensor]:
    """One LDM-layout state dict (`model.diffusion_model.*`, `first_stage_model.*`,
    `cond_stage_model.transformer.text_model.*`) holding the models' tensors (no copies)."""
    out: dict[str, Tensor] = {}
    umap = unet_module_map(_config_of(unet))
    for k, v in unet.state_dict().items():
        out[LDM_UNET_PREFIX + _rename(k, umap, "UNet")] = v
    vmap = vae_module_map(_config_of(vae))
    for k, v in vae.state_dict().items():
        name = _rename(k, vmap, "VAE")
        # LDM's VAE attention projections are 1x1 convs; diffusers uses Linear layers.
        if ".mid.attn_1." in name and name.endswith(".weight") and v.ndim == 2:
            v = v[:, :, None, None]
        out[LDM_VAE_PREFIX + name] = v
    text_sd = text_encoder.state_dict()
    for k, v in text_sd.items():
        out[LDM_TEXT_PREFIX + "text_model." + k.removeprefix("text_model.")] = v
    # The original SD v1 files carry CLIP's position_ids; transformers 5 no longer saves it.
    pos_key = LDM_TEXT_PREFIX + "text_model." + _POSITION_IDS
    if pos_key not in out:
        for name, buf in text_encoder.named_buffers():
            if name.endswith(_POSITION_IDS):
                out[pos_key] = buf
                break
    return out


def save_single_file(
    unet: nn.Module,
    vae: nn.Module,
    text_encoder: nn.Module,
    path: str | os.PathLike[str],
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the three models as one SD v1 LDM checkpoint: `.safetensors`, or `.ckpt`/`.pt`/`.pth`
    (`{"state_dict": ...}` as the original release). `dtype` casts floating tensors (e.g. float16).
    The file is written next to its destination and renamed, so a crash leaves no half file."""
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix not in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
        raise InputError(
            f"{p}: unsupported checkpoint extension {p.suffix or '(none)'!r} (use .safetensors or .ckpt)"
        )
    sd = {}
    for k, v in diffusers_to_ldm(unet, vae, text_encoder).items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        sd[k] = v.contiguous()  # safetensors needs dense tensors (position_ids is an expanded view)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".partial")
    try:
        if suffix in SAFETENSORS_SUFFIXES:
            from safetensors.torch import save_file

            save_file(sd, str(tmp), metadata={"format": "pt"})
        else:
            torch.save({"state_dict": sd}, tmp)
        umask_mode(tmp)  # safetensors writes its files private to their owner
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


# --------------------------------------------------------------------------------------------------
# Strict loading
# --------------------------------------------------------------------------------------------------


def _names(keys: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _normal_ldm_name(key: str) -> str:
    """Text-encoder keys of old files lack the `text_model.` level; compare them as if they had it."""
    if key.startswith(LDM_TEXT_PREFIX):
        return LDM_TEXT_PREFIX + "text_model." + key[len(LDM_TEXT_PREFIX) :].removeprefix("text_model.")
    return key


def _check_ldm_keys(sd: Mapping[str, Tensor], expected: Mapping[str, Tensor], path: Path) -> None:
    """Compare the file's tensors under the three SD prefixes with those the configs call for.

    Done in the file's own (LDM) names so the user can look them up; position_ids is optional.
    """
    have = {_normal_ldm_name(k): v for k, v in sd.items() if k.startswith(LDM_PREFIXES)}
    pos = LDM_TEXT_PREFIX + "text_model." + _POSITION_IDS
    missing = sorted(k for k in expected if k not in have and k != pos)
    unexpected = sorted(k for k in have if k not in expected)
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in sorted(have.items())
        if k in expected and k != pos and tuple(v.shape) != tuple(expected[k].shape)
    ]
    problems = _mismatches(missing, unexpected, wrong)
    if problems:
        raise InputError(
            f"{path}: does not match the Stable Diffusion v1 architecture of the configs: "
            + "; ".join(problems)
        )


def _mismatches(missing: list[str], unexpected: list[str], wrong: list[str]) -> list[str]:
    """Counts and first names of what does not fit, one phrase per kind."""
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_names(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_names(unexpected)})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches ({_names(wrong, 3)})")
    return problems


def _load_strict(
    model: nn.Module, state: Mapping[str, Tensor], what: str, path: Path, dtype: torch.dtype
) -> None:
    """Load every parameter and persistent buffer, or raise one line saying what does not fit."""
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(want[k].shape)}"
        for k in sorted(set(want) & set(state))
        if tuple(state[k].shape) != tuple(want[k].shape)
    ]
    problems = _mismatches(missing, unexpected, wrong)
    if problems:
        raise InputError(f"{path}: {what} weights do not fit the model: " + "; ".join(problems))
    cast = {
        k: (v.to(dtype) if v.is_floating_point() and want[k].is_floating_point() else v.to(want[k].dtype))
        for k, v in state.items()
    }
    # assign=True adopts the tensors as the parameters: no random-init copy, no second copy.
    model.load_state_dict(cast, strict=True, assign=True)
    realign_(model)


def _empty_models(
    unet_config: Mapping[str, Any], vae_config: Mapping[str, Any], text_config: Mapping[str, Any]
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The three architectures with parameters on the meta device (no memory, no random init).

    Buffers stay real: CLIP's non-persistent position_ids is not in any checkpoint.
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights(include_buffers=False):
        unet = UNet2DConditionModel.from_config(dict(unet_config))
        vae = AutoencoderKL.from_config(dict(vae_config))
        text = CLIPTextModel(CLIPTextConfig(**dict(text_config)))
    return unet, vae, text


def load_components_from_single_file(
    path: str | os.PathLike[str],
    unet_config: Mapping[str, Any],
    vae_config: Mapping[str, Any],
    text_config: Mapping[str, Any],
    dtype: torch.dtype = torch.float32,
    extract_ema: bool = False,
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(UNet2DConditionModel, AutoencoderKL, CLIPTextModel) from an SD v1 single-file checkpoint.

    Strict: a key missing from the file, an extra key under the SD prefixes, or a wrong shape is
    an `InputError`; no parameter is ever left at random. Models are returned in eval mode on CPU.
    """
    p = Path(path).expanduser()
    sd = read_state_dict(p)
    unet_sd, vae_sd, text_sd = ldm_to_diffusers(sd, unet_config, vae_config, path=p, extract_ema=extract_ema)
    unet, vae, text = _empty_models(unet_config, vae_config, text_config)
    _check_ldm_keys(sd, diffusers_to_ldm(unet, vae, text), p)
    del sd
    _load_strict(unet, unet_sd, "UNet", p, dtype)
    _load_strict(vae, vae_sd, "VAE", p, dtype)
    _load_strict(text, text_sd, "text encoder", p, dtype)
    for m in (unet, vae, text):
        leftover = [n for n, t in [*m.named_parameters(), *m.named_buffers()] if t.is_meta]
        if leftover:  # cannot happen after a strict load; guards against silent random/empty weights
            raise InputError(f"{p}: {type(m).__name__} has unloaded tensors: {_names(leftover)}")
        m.eval()
    return unet, vae, text
