"""A backbone's fingerprint, recorded in a head's config: which backbone the head was trained on.

A head reads the UNet's taps, so it only works on the architecture (tap widths) it was trained on,
and gives meaningful normals only with the weights it was trained on. The fingerprint holds both:
the tap widths and the UNet/VAE widths (compared exactly), and a few statistics of three weight
tensors (compared with a relative tolerance, so the same weights stored in fp32, bf16 or fp16 match).
"""

from __future__ import annotations

import math

from torch import nn

from .errors import InputError

# (module path, parameter) whose statistics identify the weights; cheap even for SD v1.5.
_PROBES = ("unet.conv_in.weight", "unet.conv_out.weight", "vae.encoder.conv_in.weight")
_REL_TOL = 2e-2  # bf16 keeps 8 bits of mantissa: the mean |w| and rms of thousands of values move < 1e-3


def backbone_fingerprint(unet: nn.Module, vae: nn.Module, tap_channels: dict[str, int]) -> dict:
    """{"tap_channels": [low, mid, high, highest], "unet_channels": [...], "latent_channels": int,
    "weights": {probe: [mean |w|, rms]}} of a backbone."""
    modules = {"unet": unet, "vae": vae}
    weights = {}
    for probe in _PROBES:
        owner, _, name = probe.partition(".")
        w = modules[owner].get_parameter(name).detach().double()
        weights[probe] = [float(w.abs().mean()), float(w.pow(2).mean().sqrt())]
    return {
        "tap_channels": [int(tap_channels[g]) for g in ("low", "mid", "high", "highest")],
        "unet_channels": [int(c) for c in unet.config.block_out_channels],
        "latent_channels": int(unet.config.in_channels),
        "weights": weights,
    }


def check_fingerprint(trained_on: dict | None, actual: dict, head_source: str, backbone_source: str) -> None:
    """InputError (one line) if a head trained on `trained_on` cannot be used with `actual`.

    A head without a recorded fingerprint (made before fingerprints existed, or with it deleted from
    its config) is only checked for its tap widths elsewhere (its weight shapes), with a note.
    """
    if not trained_on:
        import sys

        print(
            f"diff2in1: note: {head_source}: its config records no backbone fingerprint, so only its "
            f"tap widths are checked against {backbone_source}",
            file=sys.stderr,
        )
        return
    for key in ("tap_channels", "unet_channels", "latent_channels"):
        if key in trained_on and trained_on[key] != actual[key]:
            raise InputError(
                f"{head_source}: head was trained on a backbone with {key} {trained_on[key]}, but "
                f"{backbone_source} has {actual[key]}: use the backbone the head was trained on"
            )
    for probe, stats in (trained_on.get("weights") or {}).items():
        have = actual["weights"].get(probe)
        if have is None:
            continue
        if not all(math.isclose(a, b, rel_tol=_REL_TOL) for a, b in zip(stats, have, strict=True)):
            raise InputError(
                f"{head_source}: head was trained on other backbone weights than {backbone_source}'s "
                f"({probe} differs): use the backbone the head was trained on"
            )


def check_head(head: nn.Module, backbone: nn.Module, head_name: str, backbone_name: str) -> None:
    """InputError (one line, naming both) if `head` was not trained on `backbone`'s kind."""
    taps = [int(backbone.tap_channels[g]) for g in ("low", "mid", "high", "highest")]
    if [int(c) for c in head.config.in_channels] != taps:
        raise InputError(
            f"{head_name}: head expects tap widths {list(head.config.in_channels)}, but {backbone_name} "
            f"gives {taps}: use the backbone the head was trained on"
        )
    check_fingerprint(
        head.config.backbone,
        backbone_fingerprint(backbone.unet, backbone.vae, backbone.tap_channels),
        head_name,
        backbone_name,
    )
