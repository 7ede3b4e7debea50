"""Shared fixtures: tiny real models built here, no network."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_backbone():
    """The random-weight `tiny` preset (SD v1.5 architecture at toy width)."""
    from diff2in1.backbone import load_backbone

    return load_backbone("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tiny_backbone):
    """The tiny backbone saved as a diffusers folder."""
    from diff2in1.export import save_diffusers_folder

    out = tmp_path_factory.mktemp("tiny_diffusers")
    save_diffusers_folder(tiny_backbone, out)
    return out
