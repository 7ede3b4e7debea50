"""The shipped `tiny-scenes` preset: loads offline, and is actually trained (unlike `tiny`).

The scenes used here are held-out ones (`scene_seed(0, "test", i)`): the training script
(scripts/train_tiny_backbone.py) only trains on the "train" stream.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from diff2in1.backbone import load_backbone
from diff2in1.data.scenes import render_scene, scene_seed

SIZE = 128
HELDOUT = (0, 1, 2, 3)  # held-out scene indices (seed 0, "test" stream)
# Thresholds a margin below what the shipped weights measure on these 4 scenes (VAE 27.2 dB,
# DDIM 21.0 dB, gain 3.0 dB); the random `tiny` preset measures about 11-12.5 / 10.6-12.5 / -0.2.
MIN_VAE_PSNR = 25.0
MIN_DDIM_PSNR = 19.0
MIN_DDIM_GAIN = 2.0  # dB of the DDIM output over the noised latent x_600 decoded as it is


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)


def _heldout() -> tuple[torch.Tensor, list[str]]:
    scenes = [render_scene(np.random.default_rng(scene_seed(0, "test", i)), SIZE) for i in HELDOUT]
    x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, [s.caption for s in scenes]


@torch.no_grad()
def measure(bb) -> dict[str, float]:
    """Means over the held-out scenes, in dB.

    vae: reconstruction PSNR; ddim: PSNR vs the source of 10-step DDIM from t=600 (caption,
    guidance 1), decoded; gain: ddim minus the PSNR of x_600 decoded directly.
    """
    x, captions = _heldout()
    vae = _psnr(bb.decode(bb.encode(x, sample=False)), x)
    gen = torch.Generator().manual_seed(0)
    z = bb.encode(x, sample=True, generator=gen)
    x_t = bb.q_sample(z, 600, torch.randn(z.shape, generator=gen))
    res = bb.ddim_sample(x_t, bb.embed(captions), t_start=600, steps=12, return_features=False)
    ddim = _psnr(bb.decode(res.latents), x)
    noisy = _psnr(bb.decode(x_t), x)
    return {"vae": vae.mean().item(), "ddim": ddim.mean().item(), "gain": (ddim - noisy).mean().item()}


@pytest.fixture(scope="module")
def scenes_backbone(monkeypatch_module):
    return load_backbone("tiny-scenes")


@pytest.fixture(scope="module")
def monkeypatch_module():
    """Any attempt to open a network connection while loading fails the test."""
    mp = pytest.MonkeyPatch()

    def refuse(*args, **kwargs):
        raise AssertionError("tiny-scenes tried to reach the network")

    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr(socket.socket, "connect", refuse)
    yield mp
    mp.undo()


def test_loads_offline_as_a_trained_sd_folder(scenes_backbone):
    bb = scenes_backbone
    assert bb.dtype == torch.float32
    assert list(bb.unet.config.down_block_types) == [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ]
    assert bb.vae.config.latent_channels == 4
    assert bb.scaling_factor != pytest.approx(0.18215)  # measured for this VAE, not SD's
    assert bb.tokenizer("a red box").input_ids == [49406, 320, 736, 2063, 49407]  # the CLIP vocabulary
    assert not any(p.requires_grad for p in bb.parameters())


def test_vae_reconstructs_and_ddim_makes_scenes(scenes_backbone):
    m = measure(scenes_backbone)
    assert m["vae"] > MIN_VAE_PSNR, m
    assert m["ddim"] > MIN_DDIM_PSNR, m
    assert m["gain"] > MIN_DDIM_GAIN, m
