"""Deterministic research-format head checkpoints and inputs for the golden-output test.

The golden arrays in tests/data/parity/ were produced by the research head (SNmodule + Decoder, eval
mode) from weights and inputs that follow a fixed rule: every tensor's values depend only on its key
and shape, drawn from numpy's default_rng seeded with the CRC32 of the key. This module re-creates
them so the test can build the two released-format files (`checkpoint_<epoch>.pth` and
`checkpoint_bae_<epoch>.pth`) without the research code or any real checkpoint.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parent / "data" / "parity"
INPUT_SEED = 20250101
GROUPS = ("low", "mid", "high", "highest")


def layout(part: str) -> list[dict]:
    """[{key, shape, dtype, ...}] of the research `fusion` (121 keys) or `decoder` (60 keys) file."""
    return json.loads((DATA / f"research_layout_{part}.json").read_text())["keys"]


def rule_value(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The value of one key: the first matching rule, float64 draws cast to float32 (int64 counter)."""
    name = key.rsplit(".", 1)[-1]
    rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    if name == "num_batches_tracked":
        return np.zeros(shape, dtype=np.int64)
    if name == "running_var" or name.startswith("stored_var"):
        out = 1.0 + 0.1 * rng.random(shape)
    elif name == "running_mean" or name.startswith("stored_mean"):
        out = 0.1 * rng.standard_normal(shape)
    elif re.fullmatch(r"u\d+", name):
        out = rng.standard_normal(shape)
        out = out / np.sqrt(np.sum(out**2))
    elif re.fullmatch(r"sv\d+", name):
        out = np.ones(shape)
    elif len(shape) > 1:  # fan-in of the stored shape, transposed convolutions included
        out = rng.standard_normal(shape) / math.sqrt(math.prod(shape[1:]))
    elif "bias" in name:
        out = 0.01 * rng.standard_normal(shape)
    elif "weight" in name and len(shape) == 1:
        out = 1.0 + 0.1 * rng.standard_normal(shape)
    else:
        out = 0.01 * rng.standard_normal(shape)
    return out.astype(np.float32)


def rule_state_dict(part: str) -> dict[str, torch.Tensor]:
    """A plain state_dict with every key of the research layout, valued by the rule."""
    state = {}
    for entry in layout(part):
        value = torch.from_numpy(rule_value(entry["key"], tuple(entry["shape"])))
        assert str(value.dtype) == f"torch.{entry['dtype']}", (entry["key"], value.dtype)
        state[entry["key"]] = value
    return state


def write_checkpoints(folder: Path, epoch: int = 1) -> tuple[Path, Path]:
    """torch.save the two research files into `folder`; returns (fusion_path, decoder_path)."""
    fusion_path = folder / f"checkpoint_{epoch}.pth"
    decoder_path = folder / f"checkpoint_bae_{epoch}.pth"
    for part, path in (("fusion", fusion_path), ("decoder", decoder_path)):
        torch.save(rule_state_dict(part), path)
    return fusion_path, decoder_path


def rule_inputs(shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """The four concatenated tap groups, drawn in the order low, mid, high, highest, as float32."""
    rng = np.random.default_rng(INPUT_SEED)
    return {g: rng.standard_normal(tuple(shapes[g])).astype(np.float32) for g in GROUPS}
