"""Shared fixtures: tiny real models built here, no network."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One thread: on a shared 2-core machine, two OpenMP threads can stall each other badly.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_backbone():
    """The random-weight `tiny` preset (SD v1.5 architecture at toy width)."""
    from diff2in1.backbone import load_backbone

    return load_backbone("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tiny_backbone):
    """The tiny backbone saved as a diffusers folder."""
    from diff2in1.diffusers_folder import save_diffusers_folder

    out = tmp_path_factory.mktemp("tiny_diffusers")
    save_diffusers_folder(tiny_backbone, out)
    return out


@pytest.fixture(scope="session")
def scenes_root(tmp_path_factory):
    """A tiny procedural dataset in the data layout of docs/method.md section 5 (8 train / 3 test
    scenes at 64x64)."""
    from diff2in1.data.scenes import make_scenes

    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 8, 3, size=64, seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def small_head_dir(tmp_path_factory, tiny_backbone):
    """A `small` head for the tiny backbone, saved in our head format (random weights)."""
    from diff2in1.heads import build_head

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("head") / "head"
    build_head("small", tiny_backbone, 64).save_pretrained(out)
    return out
