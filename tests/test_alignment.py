"""Loaded weights own 64-byte aligned memory, so a loaded model computes exactly as the saved one."""

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from diff2in1.memory_alignment import ALIGNMENT, realign_


def _misaligned(module: nn.Module) -> list[str]:
    return [k for k, v in module.state_dict().items() if v.data_ptr() % ALIGNMENT]


def test_realign_copies_misaligned_tensors_and_keeps_ties(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 3), nn.BatchNorm1d(3))
    model[1].weight = nn.Parameter(torch.randn(3, 5))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "m.safetensors")
    state = load_file(tmp_path / "m.safetensors")
    assert any(v.data_ptr() % ALIGNMENT for v in state.values())  # what safetensors hands out
    loaded = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 3), nn.BatchNorm1d(3))
    loaded.load_state_dict(state, assign=True)
    loaded.tied = loaded[0]  # the same module twice: its tensors must stay shared
    realign_(loaded)
    assert _misaligned(loaded) == []
    assert loaded.tied.weight is loaded[0].weight
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_head_and_backbone_load_aligned(tmp_path, tiny_backbone, tiny_folder):
    from diff2in1.backbone import load_backbone
    from diff2in1.heads import HeadConfig, NormalHead

    in_ch = tuple(tiny_backbone.tap_channels[g] for g in ("low", "mid", "high", "highest"))
    NormalHead.from_head_config(HeadConfig.small(in_ch, width=8)).save_pretrained(tmp_path / "head")
    assert _misaligned(NormalHead.from_pretrained(tmp_path / "head")) == []
    assert _misaligned(load_backbone(tiny_folder)) == []
