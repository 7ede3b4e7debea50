"""Single-file LDM checkpoints: safe reading, clear errors, exact round trips, the SD v1.5 key layout."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from diff2in1.checkpoint import (
    LDM_TEXT_PREFIX,
    LDM_UNET_PREFIX,
    LDM_VAE_PREFIX,
    detect_layout,
    diffusers_to_ldm,
    ldm_to_diffusers,
    load_components_from_single_file,
    read_state_dict,
    save_single_file,
)
from diff2in1.errors import InputError

SD15 = Path(__file__).resolve().parents[1] / "src" / "diff2in1" / "presets" / "sd15"

UNET_CFG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [32, 64, 64, 64],
    "layers_per_block": 2,
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
}
VAE_CFG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [16, 32, 32, 32],
    "layers_per_block": 2,
    "norm_num_groups": 8,
    "latent_channels": 4,
    "sample_size": 32,
}
TEXT_CFG = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}


def _load(path: Path, **kw):
    return load_components_from_single_file(path, UNET_CFG, VAE_CFG, TEXT_CFG, **kw)


@pytest.fixture(scope="module")
def tiny():
    """Tiny SD-v1-shaped models whose every parameter differs from its default init."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNET_CFG).eval()
    vae = AutoencoderKL.from_config(VAE_CFG).eval()
    text = CLIPTextModel(CLIPTextConfig(**TEXT_CFG)).eval()
    with torch.no_grad():
        for m in (unet, vae, text):
            for p in m.parameters():  # norms start at 1/0 and would hide swapped names
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    return unet, vae, text


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("single_file")
    return {s: save_single_file(*tiny, d / f"tiny{s}") for s in (".ckpt", ".safetensors")}


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


@torch.no_grad()
def _outputs(unet, vae, text) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 49408, (1, 77), generator=g)
    ctx = text(ids).last_hidden_state
    z = torch.randn(1, 4, 16, 16, generator=g)
    eps = unet(z, torch.tensor([10]), encoder_hidden_states=ctx).sample
    img = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    mean = vae.encode(img).latent_dist.mean
    rec = vae.decode(mean).sample
    return [ctx, eps, mean, rec]


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_round_trip_is_exact(tiny, files, suffix):
    loaded = _load(files[suffix])
    for a, b in zip(tiny, loaded, strict=True):
        _assert_same_weights(a, b)
        assert not b.training
        assert all(p.requires_grad and not p.is_meta for p in b.parameters())
    for x, y in zip(_outputs(*tiny), _outputs(*loaded), strict=True):
        assert torch.equal(x, y)


def test_ckpt_layout(tiny, files):
    raw = torch.load(files[".ckpt"], weights_only=True)
    assert set(raw) == {"state_dict"}  # as the original release: weights nested under state_dict
    sd = read_state_dict(files[".ckpt"])
    assert detect_layout(sd) == "ldm"
    assert sd.keys() == load_file(files[".safetensors"]).keys()
    n_unet, n_vae, n_text = (len(m.state_dict()) for m in tiny)
    assert sum(k.startswith(LDM_UNET_PREFIX) for k in sd) == n_unet
    assert sum(k.startswith(LDM_VAE_PREFIX) for k in sd) == n_vae
    # + position_ids, which the original files carry and transformers 5 no longer saves
    assert sum(k.startswith(LDM_TEXT_PREFIX) for k in sd) == n_text + 1
    assert sd[LDM_VAE_PREFIX + "decoder.mid.attn_1.proj_out.weight"].shape == (32, 32, 1, 1)
    assert LDM_UNET_PREFIX + "output_blocks.2.1.conv.weight" in sd  # UpBlock2D: upsampler in slot 1
    assert LDM_UNET_PREFIX + "output_blocks.5.2.conv.weight" in sd  # CrossAttnUpBlock2D: slot 2
    assert LDM_UNET_PREFIX + "output_blocks.8.2.conv.weight" in sd
    assert LDM_UNET_PREFIX + "output_blocks.11.1.proj_out.weight" in sd
    assert LDM_UNET_PREFIX + "input_blocks.9.0.op.weight" in sd
    assert LDM_UNET_PREFIX + "input_blocks.11.0.in_layers.0.weight" in sd


def test_flat_ckpt_old_clip_names_and_extra_keys_load(tiny, files, tmp_path):
    """A flat pickle (no "state_dict" level), CLIP keys without `text_model.`, and training-time
    extras outside the SD prefixes (schedule buffers) all load."""
    sd = read_state_dict(files[".safetensors"])
    old = {k.replace(LDM_TEXT_PREFIX + "text_model.", LDM_TEXT_PREFIX): v for k, v in sd.items()}
    old["alphas_cumprod"] = torch.linspace(1, 0, 1000)
    torch.save(old, tmp_path / "flat.pt")
    torch.save(old, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)  # pre-zip format
    for name in ("flat.pt", "legacy.pth"):
        for a, b in zip(tiny, _load(tmp_path / name), strict=True):
            _assert_same_weights(a, b)


def test_float16_export_and_dtype(tiny, tmp_path):
    path = save_single_file(*tiny, tmp_path / "half.safetensors", dtype=torch.float16)
    sd = load_file(path)
    assert sd[LDM_UNET_PREFIX + "input_blocks.0.0.weight"].dtype == torch.float16
    assert sd[LDM_TEXT_PREFIX + "text_model.embeddings.position_ids"].dtype == torch.int64
    unet, _, _ = _load(path)
    assert unet.conv_in.weight.dtype == torch.float32
    assert torch.equal(unet.conv_in.weight, tiny[0].conv_in.weight.half().float())
    unet, _, _ = _load(path, dtype=torch.float16)
    assert unet.conv_in.weight.dtype == torch.float16


def test_extract_ema(tiny, files, tmp_path):
    sd = read_state_dict(files[".safetensors"])
    ema = {
        "model_ema." + "".join(k.split(".")[1:]): v + 1
        for k, v in sd.items()
        if k.startswith(LDM_UNET_PREFIX)
    }
    save_file({**sd, **ema}, tmp_path / "ema.safetensors")
    unet, _, _ = _load(tmp_path / "ema.safetensors", extract_ema=True)
    assert torch.equal(unet.conv_in.weight, tiny[0].conv_in.weight + 1)
    unet, _, _ = _load(tmp_path / "ema.safetensors")  # default: the non-EMA weights
    assert torch.equal(unet.conv_in.weight, tiny[0].conv_in.weight)
    with pytest.raises(InputError, match="no EMA weights"):
        _load(files[".safetensors"], extract_ema=True)


# --------------------------------------------------------------------------------------------------
# Errors: one clear line naming the file
# --------------------------------------------------------------------------------------------------


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_that_runs_code_is_refused(tmp_path, writer):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"w": _RunsCode(marker)}}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    for call in (lambda: read_state_dict(path), lambda: _load(path)):
        with pytest.raises(InputError) as e:
            call()
        msg = str(e.value)
        assert str(path) in msg and "\n" not in msg
        assert "needs pickle code execution to load and was refused" in msg
        assert "system" in msg and "convert it to .safetensors" in msg
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_truncated_file(files, tmp_path, suffix):
    data = files[suffix].read_bytes()
    for n, cut in enumerate((len(data) // 2, 5, 0)):
        path = tmp_path / f"cut{n}{suffix}"
        path.write_bytes(data[:cut])
        with pytest.raises(InputError, match="truncated or corrupt") as e:
            read_state_dict(path)
        assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_missing_file_folder_and_extension(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_state_dict(tmp_path / "nope.ckpt")
    with pytest.raises(InputError, match="not a file"):
        read_state_dict(tmp_path)
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(InputError, match="unsupported checkpoint extension"):
        read_state_dict(tmp_path / "w.onnx")
    (tmp_path / "text.ckpt").write_text("hello\n" * 20)
    with pytest.raises(InputError, match="text.ckpt"):
        read_state_dict(tmp_path / "text.ckpt")


def test_not_a_dict_of_tensors(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(InputError, match="holds a list, not a dict of tensors"):
        read_state_dict(tmp_path / "list.pt")
    torch.save({"state_dict": {"a": torch.zeros(2), "step": 3}}, tmp_path / "mixed.pt")
    with pytest.raises(InputError, match="not a dict of tensors .*'step' holds a int"):
        read_state_dict(tmp_path / "mixed.pt")
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(InputError, match="holds no tensors"):
        read_state_dict(tmp_path / "empty.pt")


def test_not_stable_diffusion(tmp_path, tiny):
    path = tmp_path / "fc.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(3)}, path)
    with pytest.raises(InputError) as e:
        _load(path)
    msg = str(e.value)
    assert msg.startswith(
        f"{path}: not a Stable Diffusion v1 checkpoint (found keys like fc.bias, fc.weight;"
    )
    assert "model.diffusion_model.*" in msg
    # component files are recognised, and refused with a hint
    assert detect_layout(tiny[0].state_dict()) == "diffusers-unet"
    assert detect_layout(tiny[1].state_dict()) == "diffusers-vae"
    assert detect_layout(tiny[2].state_dict()) == "diffusers-text-encoder"
    save_file(tiny[0].state_dict(), tmp_path / "unet.safetensors")
    with pytest.raises(InputError, match="diffusers-unet weights file, not a full"):
        _load(tmp_path / "unet.safetensors")


def test_incomplete_ldm_file(files, tmp_path):
    sd = read_state_dict(files[".safetensors"])
    sd = {k: v for k, v in sd.items() if not k.startswith(LDM_VAE_PREFIX)}
    save_file(sd, tmp_path / "novae.safetensors")
    with pytest.raises(InputError, match=r"no VAE \(first_stage_model\.\*\) keys"):
        _load(tmp_path / "novae.safetensors")


def test_partial_checkpoint_fails(files, tmp_path):
    sd = read_state_dict(files[".safetensors"])
    dropped = sorted(k for k in sd if k.startswith(LDM_UNET_PREFIX + "input_blocks.4."))[:5]
    # one whole tensor pair, and a lone bias whose weight stays (diffusers' converter would give None)
    dropped.append(LDM_UNET_PREFIX + "input_blocks.3.0.op.bias")
    save_file({k: v for k, v in sd.items() if k not in dropped}, tmp_path / "partial.safetensors")
    with pytest.raises(InputError) as e:
        _load(tmp_path / "partial.safetensors")
    msg = str(e.value)
    assert "6 missing keys" in msg and dropped[0] in msg and "\n" not in msg


def test_extra_and_wrong_shape_keys_fail(files, tmp_path):
    sd = read_state_dict(files[".safetensors"])
    extra = {**sd, LDM_UNET_PREFIX + "label_emb.0.0.weight": torch.zeros(4, 4)}
    save_file(extra, tmp_path / "extra.safetensors")
    with pytest.raises(InputError, match=r"1 unexpected keys \(model\.diffusion_model\.label_emb"):
        _load(tmp_path / "extra.safetensors")
    bad = dict(sd)
    bad[LDM_UNET_PREFIX + "input_blocks.0.0.weight"] = torch.zeros(32, 9, 3, 3)  # an inpainting UNet's stem
    save_file(bad, tmp_path / "shape.safetensors")
    with pytest.raises(
        InputError, match=r"1 shape mismatches \(model\.diffusion_model\.input_blocks\.0\.0\.weight"
    ):
        _load(tmp_path / "shape.safetensors")


def test_save_refuses_unknown_extension_and_leaves_no_partial_file(tiny, tmp_path):
    with pytest.raises(InputError, match="unsupported checkpoint extension"):
        save_single_file(*tiny, tmp_path / "x.onnx")
    save_single_file(*tiny, tmp_path / "sub" / "x.ckpt")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.ckpt"]


# --------------------------------------------------------------------------------------------------
# The full SD v1.5 layout, on the meta device (no memory, nothing run)
# --------------------------------------------------------------------------------------------------


def test_sd15_layout_on_meta():
    cfg = {c: json.loads((SD15 / c / "config.json").read_text()) for c in ("unet", "vae", "text_encoder")}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg["unet"])
        vae = AutoencoderKL.from_config(cfg["vae"])
        text = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    ldm = diffusers_to_ldm(unet, vae, text)
    counts = [sum(k.startswith(p) for k in ldm) for p in (LDM_UNET_PREFIX, LDM_VAE_PREFIX, LDM_TEXT_PREFIX)]
    assert counts == [686, 248, 197] and len(ldm) == 1131
    shapes = {
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": (320, 320),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "model.diffusion_model.input_blocks.11.0.emb_layers.1.weight": (1280, 1280),
        "model.diffusion_model.middle_block.1.norm.weight": (1280,),
        "model.diffusion_model.middle_block.2.out_layers.3.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.output_blocks.11.1.proj_out.weight": (320, 320, 1, 1),
        "model.diffusion_model.time_embed.2.weight": (1280, 1280),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": (1, 77),
    }
    for k, shape in shapes.items():
        assert tuple(ldm[k].shape) == shape, k
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in ldm  # full-res level: none

    # LDM -> diffusers (diffusers' converters) -> LDM (ours) keeps every name and shape
    unet_sd, vae_sd, text_sd = ldm_to_diffusers(ldm, cfg["unet"], cfg["vae"])
    for model, got in ((unet, unet_sd), (vae, vae_sd), (text, text_sd)):
        want = model.state_dict()
        assert got.keys() == want.keys()
        assert all(got[k].shape == want[k].shape for k in want)
    with torch.device("meta"):
        unet2 = UNet2DConditionModel.from_config(cfg["unet"])
        vae2 = AutoencoderKL.from_config(cfg["vae"])
    unet2.load_state_dict(unet_sd, assign=True)
    vae2.load_state_dict(vae_sd, assign=True)
    again = diffusers_to_ldm(unet2, vae2, text)
    assert again.keys() == ldm.keys()
    assert all(again[k].shape == ldm[k].shape for k in ldm)


def test_unsupported_architecture_is_refused(tiny):
    cfg = dict(UNET_CFG, down_block_types=["AttnDownBlock2D"] + UNET_CFG["down_block_types"][1:])
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg)
    with pytest.raises(InputError, match="'AttnDownBlock2D' has no Stable Diffusion v1"):
        diffusers_to_ldm(unet, tiny[1], tiny[2])


def test_other_depths_round_trip(tmp_path):
    """The mapping follows the config: 3 levels, 1 layer per block, attention at other levels."""
    unet_cfg = dict(
        UNET_CFG,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        block_out_channels=[16, 32, 32],
        layers_per_block=1,
    )
    vae_cfg = dict(
        VAE_CFG,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[8, 16],
        layers_per_block=1,
    )
    torch.manual_seed(0)
    models = (
        UNet2DConditionModel.from_config(unet_cfg),
        AutoencoderKL.from_config(vae_cfg),
        CLIPTextModel(CLIPTextConfig(**TEXT_CFG)),
    )
    path = save_single_file(*models, tmp_path / "small.safetensors")
    loaded = load_components_from_single_file(path, unet_cfg, vae_cfg, TEXT_CFG)
    for a, b in zip(models, loaded, strict=True):
        _assert_same_weights(a, b)
    shutil.rmtree(tmp_path)
