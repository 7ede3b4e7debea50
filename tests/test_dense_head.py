"""Depth and segmentation heads: one backbone pass feeds every head; saved folders record their task."""

from __future__ import annotations

import pytest
import torch

from diff2in1.data.labels import ClassList
from diff2in1.errors import InputError
from diff2in1.fingerprint import check_head
from diff2in1.heads import DenseHead, NormalHead, build_head, folder_task, load_head


@pytest.fixture(scope="module")
def feats(tiny_backbone):
    x = torch.linspace(-1, 1, 2 * 3 * 64 * 64).reshape(2, 3, 64, 64)
    return tiny_backbone.perceive(x, seeds=[0, 1])


def test_all_heads_read_one_backbone_pass(tiny_backbone, feats):
    classes = ClassList.with_default_colors(["floor", "wall", "box"])
    torch.manual_seed(0)
    normals = build_head("small", tiny_backbone, 64).eval()
    depth = build_head("small", tiny_backbone, 64, task="depth").eval()
    seg = build_head("small", tiny_backbone, 64, task="segmentation", class_list=classes).eval()
    n, d, s = normals(feats), depth(feats), seg(feats, image_size=(48, 80))
    assert n.normal.shape == (2, 3, 64, 64)
    assert d.depth.shape == d.uncertainty.shape == (2, 1, 64, 64)
    assert (d.depth > 0).all() and (d.uncertainty > 0).all()
    # A fresh depth head starts near a room's depth, not at 1 m or 0.
    assert 1.0 < float(d.depth.median()) < 9.0
    assert s.logits.shape == (2, 3, 48, 80) and s.classes.shape == (2, 48, 80)
    assert torch.allclose(s.probabilities.sum(1), torch.ones(2, 48, 80))
    assert depth.config.units == "metres" and seg.config.class_names == ["floor", "wall", "box"]
    assert depth.config.processing_resolution == 64 and depth.config.backbone["tap_channels"]
    check_head(depth, tiny_backbone, "depth", "tiny")  # the fingerprint matches its backbone


def test_saved_heads_load_by_task_and_refuse_another(tiny_backbone, feats, tmp_path):
    classes = ClassList(("a", "b"), ((1, 2, 3), (4, 5, 6)))
    torch.manual_seed(0)
    seg = build_head("small", tiny_backbone, 64, task="segmentation", class_list=classes).eval()
    dep = build_head("small", tiny_backbone, 64, task="depth", likelihood="gaussian").eval()
    seg.save_pretrained(tmp_path / "seg")
    dep.save_pretrained(tmp_path / "dep")
    back = load_head(tmp_path / "seg", "segmentation")
    assert isinstance(back, DenseHead) and back.class_list() == classes
    assert torch.equal(back(feats).logits, seg(feats).logits)
    d2 = build_head(str(tmp_path / "dep"), tiny_backbone, task="depth")
    assert d2.config.likelihood == "gaussian"
    assert torch.equal(d2.eval()(feats).log_depth, dep(feats).log_depth)
    assert folder_task(tmp_path / "dep") == "depth"
    with pytest.raises(InputError, match=r"seg: a segmentation head, but a depth head is expected here$"):
        load_head(tmp_path / "seg", "depth")
    with pytest.raises(InputError, match="a depth head, but a normals head is expected"):
        NormalHead.from_pretrained(tmp_path / "dep")
    with pytest.raises(InputError, match="a depth head, but a segmentation head"):
        build_head(str(tmp_path / "dep"), tiny_backbone, task="segmentation")


def test_segmentation_head_needs_classes(tiny_backbone):
    with pytest.raises(ValueError, match="class list"):
        build_head("small", tiny_backbone, task="segmentation")
    with pytest.raises(ValueError, match="class_names"):
        DenseHead(task="segmentation", in_channels=(8, 8, 8, 8))
