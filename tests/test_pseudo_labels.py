"""Confidence-weighted and filtered pseudo-labels (a flag; the research labels stay the default)."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from diff2in1.heads import NormalHead
from diff2in1.heads.normal_head import HeadOutput
from diff2in1.inference.uncertainty import expected_error
from diff2in1.losses import head_loss, ug_angular_nll
from diff2in1.pseudo_labels import label_weights, normal_confidence, quantile_keep
from diff2in1.stages.create import create_data
from diff2in1.stages.self_improve import mixed_targets, train_self_improve
from test_generation import _ccfg, _scfg


def test_confidence_runs_from_zero_to_one_with_kappa():
    kappa = torch.tensor([1e-6, 0.5, 2.0, 10.0, 1000.0]).view(1, 1, 1, 5)
    c = normal_confidence(kappa)[0, 0, 0]
    assert c[0] == pytest.approx(0.0, abs=1e-5) and c[-1] == pytest.approx(1.0, abs=2e-3)
    assert bool((c[1:] > c[:-1]).all())
    # by the formula: 1 - E(kappa) / (pi / 2)
    assert c[2] == pytest.approx(1 - float(expected_error(torch.tensor(2.0))) / (math.pi / 2), rel=1e-6)


def test_the_quantile_is_per_image_so_a_batch_changes_nothing():
    a = torch.arange(100.0).view(1, 1, 10, 10) / 100
    b = torch.rand(1, 1, 10, 10)
    alone = quantile_keep(a, 0.75)
    assert int(alone.sum()) == 25 and bool(alone[0, 0, -1].all())  # the top quarter: 0.75 .. 0.99
    both = quantile_keep(torch.cat([a, b]), 0.75)
    assert torch.equal(both[:1], alone) and torch.equal(both[1:], quantile_keep(b, 0.75))


def test_research_mode_leaves_the_batch_alone_and_real_pixels_always_count():
    conf = torch.rand(2, 1, 8, 8)
    mask = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    labelled = torch.tensor([True, False])
    m, w = label_weights("research", conf, labelled, mask)
    assert m is mask and w is None
    m, w = label_weights("weighted", conf, labelled, mask)
    assert torch.equal(m, mask) and bool((w[0] == 1).all()) and torch.equal(w[1], conf[1])
    m, w = label_weights("filtered", conf, labelled, mask, quantile=0.5)
    assert w is None and bool(m[0].all()) and int(m[1].sum()) == 32
    with pytest.raises(ValueError, match="pseudo-label mode"):
        label_weights("soft", conf, labelled, mask)


def test_weights_of_one_are_the_research_loss_and_a_weight_scales_its_pixel():
    g = torch.Generator().manual_seed(0)
    pred = torch.nn.functional.normalize(torch.randn(2, 3, 8, 8, generator=g), dim=1)
    kappa = torch.rand(2, 1, 8, 8, generator=g) * 5 + 0.1
    gt = torch.nn.functional.normalize(torch.randn(2, 3, 8, 8, generator=g), dim=1)
    mask = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    plain = ug_angular_nll(pred, kappa, gt, mask)
    assert torch.equal(ug_angular_nll(pred, kappa, gt, mask, torch.ones(2, 1, 8, 8)), plain)
    w = torch.zeros(2, 1, 8, 8)
    w[0, 0, 0, 0] = 2.0  # one pixel counts twice, the rest not at all; the mean still divides by 128
    one = ug_angular_nll(pred[:1, :, :1, :1], kappa[:1, :, :1, :1], gt[:1, :, :1, :1], mask[:1, :, :1, :1])
    assert float(ug_angular_nll(pred, kappa, gt, mask, w)) == pytest.approx(2 * float(one) / 128, rel=1e-6)
    # the head loss reads the weights at the refinement points like the mask
    out = HeadOutput(
        normal=pred,
        kappa=kappa,
        coarse=torch.cat([pred, kappa], 1)[:, :, ::2, ::2],
        point_preds=[torch.cat([pred, kappa], 1).flatten(2)[:, :, :5]],
        point_coords=[torch.rand(2, 5, 2, generator=g) * 2 - 1],
    )
    assert torch.equal(head_loss(out, gt, mask, weight=torch.ones(2, 1, 8, 8)), head_loss(out, gt, mask))
    assert float(head_loss(out, gt, mask, weight=torch.zeros(2, 1, 8, 8))) == 0.0


def test_targets_carry_confidence_weights_for_synthetic_samples(tiny_backbone, small_head_dir):
    head = NormalHead.from_pretrained(small_head_dir)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    feats = tiny_backbone.perceive(x, seeds=[1, 2])
    batch = {
        "labelled": torch.tensor([True, False]),
        "normal": torch.nn.functional.normalize(torch.randn(2, 3, 64, 64), dim=1),
        "mask": torch.ones(2, 1, 64, 64, dtype=bool),
    }
    _, _, weight = mixed_targets(head, feats, (64, 64), batch, "weighted")
    kappa = head.eval()(feats, image_size=(64, 64)).kappa
    assert bool((weight[0] == 1).all())
    assert torch.allclose(weight[1], normal_confidence(kappa)[1], atol=1e-6)
    _, mask, weight = mixed_targets(head, feats, (64, 64), batch, "filtered", 0.9)
    assert weight is None and bool(mask[0].all())
    assert 0.05 < float(mask[1].float().mean()) <= 0.2


def test_self_improvement_trains_with_each_mode_and_records_it(
    scenes_root, tmp_path, tiny_backbone, small_head_dir
):
    head = NormalHead.from_pretrained(small_head_dir)
    syn = tmp_path / "syn"
    create_data(_ccfg(scenes_root, syn), tiny_backbone, head)
    heads = {}
    for mode in ("research", "weighted", "filtered"):
        out = tmp_path / mode
        cfg = _scfg(scenes_root, syn, small_head_dir, out, pseudo_labels=mode)
        train_self_improve(cfg, backbone=tiny_backbone)
        assert yaml.safe_load((out / "config.yaml").read_text())["pseudo_labels"] == mode
        heads[mode] = load_file(out / "exploitation" / "diffusion_pytorch_model.safetensors")
    keys = [k for k in heads["research"] if heads["research"][k].is_floating_point()]
    for mode in ("weighted", "filtered"):
        assert any(not torch.equal(heads[mode][k], heads["research"][k]) for k in keys), mode
