"""The speed settings the benchmark can try on top of the package's own path, each off by default.

They live here, not in the package, until a measurement shows one helps (docs/speed.md says which
were measured where): `--compile` (torch.compile of the UNet, `--compile-mode` default,
reduce-overhead = CUDA graphs, or max-autotune), `--channels-last` (UNet and VAE weights and
activations in NHWC) and `--tf32` (fp32 matmuls and convolutions on TF32 tensor cores; CUDA only).
Attention needs no setting: diffusers' UNet already runs PyTorch's scaled_dot_product_attention
(`AttnProcessor2_0`), which the report records.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (use --warmup >= 1)")
    p.add_argument(
        "--compile-mode",
        choices=COMPILE_MODES,
        default="default",
        help="with --compile: torch.compile's mode (reduce-overhead = CUDA graphs)",
    )
    p.add_argument("--channels-last", action="store_true", help="UNet and VAE in channels-last (NHWC)")
    p.add_argument("--tf32", action="store_true", help="fp32 matmuls/convolutions on TF32 (CUDA)")


def attention_processors(unet: nn.Module) -> list[str]:
    """The attention implementations the UNet runs (class names, e.g. AttnProcessor2_0 = SDPA)."""
    procs = getattr(unet, "attn_processors", {})
    return sorted({type(p).__name__ for p in procs.values()})


def apply(args: argparse.Namespace, backbone, device: torch.device) -> dict:
    """Apply the chosen settings to the backbone (in place) and return what was applied, for the report.

    `torch.compile` compiles lazily: its cost shows in the first call of each shape, which the
    benchmark reports as the first call's time beside the steady one.
    """
    t0 = time.perf_counter()
    if args.tf32:
        # Process-wide switches; the benchmark is its own process.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.channels_last:
        backbone.unet.to(memory_format=torch.channels_last)
        backbone.vae.to(memory_format=torch.channels_last)
    if args.compile:
        backbone.unet.compile(mode=None if args.compile_mode == "default" else args.compile_mode)
    return {
        "compile": args.compile,
        "compile_mode": args.compile_mode if args.compile else None,
        "channels_last": args.channels_last,
        "tf32": bool(args.tf32 and device.type == "cuda"),
        "attention": attention_processors(backbone.unet),
        "apply_seconds": time.perf_counter() - t0,
    }


def describe(applied: dict) -> str:
    """One phrase for a report header, e.g. '+compile (reduce-overhead), channels-last, SDPA'."""
    parts = []
    if applied.get("compile"):
        parts.append(f"+compile ({applied['compile_mode']})")
    if applied.get("channels_last"):
        parts.append("channels-last")
    if applied.get("tf32"):
        parts.append("TF32")
    attention = applied.get("attention") or []
    parts.append("attention " + ("SDPA" if attention == ["AttnProcessor2_0"] else "/".join(attention) or "?"))
    return ", ".join(parts)
