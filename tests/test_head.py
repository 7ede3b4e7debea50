"""Head: shapes, spectral norm, residual block, point sampling, save/load."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import diff2in1.heads.decoder as decoder_mod
from diff2in1.errors import InputError
from diff2in1.heads import HeadConfig, NormalHead
from diff2in1.heads.decoder import WSConv2d, indices_to_coords, sample_point_indices
from diff2in1.heads.fusion import ResidualBlock
from diff2in1.heads.spectral import SNConv2d

IN_CHANNELS = (12, 10, 8, 6)


@dataclass
class Feats:
    """Stand-in for diff2in1.taps.TapFeatures."""

    low: torch.Tensor
    mid: torch.Tensor
    high: torch.Tensor
    highest: torch.Tensor


def make_feats(batch: int, sizes: list[tuple[int, int]], seed: int = 0) -> Feats:
    """sizes: (h, w) of low, mid, high, highest."""
    g = torch.Generator().manual_seed(seed)
    return Feats(*(torch.randn(batch, c, *hw, generator=g) for c, hw in zip(IN_CHANNELS, sizes, strict=True)))


def square(latent: tuple[int, int]) -> list[tuple[int, int]]:
    lh, lw = latent
    return [(lh // 8, lw // 8), (lh // 4, lw // 4), (lh // 2, lw // 2), (lh, lw)]


def tiny_head(seed: int = 0) -> NormalHead:
    torch.manual_seed(seed)
    return NormalHead.from_head_config(HeadConfig.small(IN_CHANNELS, width=8))


@pytest.mark.parametrize(
    ("sizes", "image"),
    [
        (square((8, 8)), (64, 64)),
        (square((8, 16)), (64, 128)),
        # latent 8x12 is not divisible by 8: UNet-style ceil sizes still work
        ([(1, 2), (2, 3), (4, 6), (8, 12)], (64, 96)),
    ],
)
def test_eval_output_full_resolution(sizes, image):
    head = tiny_head().eval()
    with torch.no_grad():
        out = head(make_feats(2, sizes), image_size=image)
    assert out.normal.shape == (2, 3, *image)
    assert out.kappa.shape == (2, 1, *image)
    assert torch.allclose(out.normal.norm(dim=1), torch.ones(2, *image), atol=1e-5)
    assert bool((out.kappa > 0.01).all())
    assert out.point_preds == [] and out.point_coords == []
    assert out.coarse.shape == (2, 4, image[0] // 8, image[1] // 8)


def test_image_size_resize_renormalises():
    head = tiny_head().eval()
    with torch.no_grad():
        out = head(make_feats(1, square((8, 8))), image_size=(48, 80))
    assert out.normal.shape == (1, 3, 48, 80)
    assert torch.allclose(out.normal.norm(dim=1), torch.ones(1, 48, 80), atol=1e-5)


def test_training_points(monkeypatch):
    calls = []
    real = decoder_mod.sample_point_indices

    def spy(kappa, valid, n_points, n_uncertain, generators=None):
        idx = real(kappa, valid, n_points, n_uncertain, generators)
        calls.append((kappa.clone(), valid.clone(), n_points, n_uncertain, idx))
        return idx

    monkeypatch.setattr(decoder_mod, "sample_point_indices", spy)
    head = tiny_head().train()
    mask = torch.ones(2, 1, 64, 128, dtype=torch.bool)
    mask[0, :, :, :40] = False  # invalid band
    mask[1, :, 30:, :] = False
    torch.manual_seed(1)
    out = head(make_feats(2, square((8, 16))), image_size=(64, 128), gt_mask=mask)
    assert out.normal.shape == (2, 3, 64, 128)
    assert torch.allclose(out.normal.norm(dim=1), torch.ones(2, 64, 128), atol=1e-5)
    assert len(calls) == len(out.point_preds) == len(out.point_coords) == 3
    for (kappa, valid, n, k, idx), pts, coords, (h, w) in zip(
        calls, out.point_preds, out.point_coords, [(16, 32), (32, 64), (64, 128)], strict=True
    ):
        assert n == int(0.4 * h * w) and k == int(0.7 * n)
        assert pts.shape == (2, 4, n) and coords.shape == (2, n, 2)
        assert torch.equal(valid, F.interpolate(mask.float(), size=(h, w), mode="nearest")[:, 0] > 0.5)
        assert bool((coords.abs() <= 1).all())
        for b in range(2):
            flat_valid = valid[b].flatten()
            assert idx[b].unique().numel() == n  # no duplicates
            uncertain = idx[b, :k]
            assert bool(flat_valid[uncertain].all())  # invalid pixels never "uncertain"
            # they are exactly the k lowest-kappa valid pixels
            kv = kappa[b].flatten().masked_fill(~flat_valid, float("inf"))
            assert torch.equal(kv[uncertain].sort().values, kv.sort().values[:k])
        # the coordinates point at the chosen pixels
        assert torch.equal(coords, indices_to_coords(idx, h, w))
    # the full-resolution output holds the refined points
    idx = calls[-1][4]
    dense = torch.cat([out.normal, out.kappa], 1).flatten(2)
    assert torch.allclose(dense.gather(2, idx[:, None].expand(-1, 4, -1)), out.point_preds[-1], atol=1e-6)


def test_sample_point_indices_random_part_covers_invalid_only_when_needed():
    torch.manual_seed(0)
    kappa = torch.rand(3, 10, 10)
    valid = torch.rand(3, 10, 10) > 0.3
    idx = sample_point_indices(kappa, valid, 40, 28)
    assert idx.shape == (3, 40)
    for b in range(3):
        assert idx[b].unique().numel() == 40
        assert bool(valid[b].flatten()[idx[b, :28]].all())


def test_point_refinement_matches_dense_refinement():
    """Training reads features at the points from the low-res map; that must equal the dense path."""
    torch.manual_seed(0)
    dec = tiny_head().decoder
    feat, prev = torch.randn(2, 16, 6, 10), torch.randn(2, 4, 6, 10)
    dense = dec._refine_dense(dec.refine4, feat, prev)  # (2, 4, 12, 20)
    _, pts, coords = dec._refine_points(dec.refine4, feat, prev, None)
    x = ((coords[..., 0] + 1) / 2 * 19).round().long()
    y = ((coords[..., 1] + 1) / 2 * 11).round().long()
    idx = (y * 20 + x)[:, None].expand(-1, 4, -1)
    assert torch.allclose(dense.flatten(2).gather(2, idx), pts, atol=1e-5)


@pytest.mark.parametrize(("in_hw", "out_hw"), [((6, 10), (12, 20)), ((1, 5), (2, 10)), ((7, 3), (9, 4))])
def test_bilinear_rows_equal_the_upsampled_map_with_gradients(in_hw, out_hw):
    """The row gathers are the align_corners-True upsampling read at the points, forward and backward."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, *in_hw, generator=g, requires_grad=True)
    n = out_hw[0] * out_hw[1]
    idx = torch.stack([torch.randperm(n, generator=g)[: n // 2] for _ in range(2)])  # (2, N)
    weights = torch.randn(2, n // 2, 5, generator=g)
    ours = decoder_mod.bilinear_rows(x, idx, *out_hw)  # (2*N, 5)
    (grad_ours,) = torch.autograd.grad((ours * weights.reshape(-1, 5)).sum(), x)
    up = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=True).flatten(2)  # (2, 5, n)
    ref = up.gather(2, idx[:, None].expand(-1, 5, -1)).transpose(1, 2)  # (2, N, 5)
    (grad_ref,) = torch.autograd.grad((ref * weights).sum(), x)
    assert torch.allclose(ours.reshape(2, -1, 5), ref, atol=1e-6)
    assert torch.allclose(grad_ours, grad_ref, atol=1e-5)


def np_sigma(w: np.ndarray, u: np.ndarray, eps: float = 1e-4) -> tuple[float, np.ndarray]:
    w = w.reshape(w.shape[0], -1).astype(np.float64)
    v = u @ w
    v = v / max(np.linalg.norm(v), eps)
    u2 = v @ w.T
    u2 = u2 / max(np.linalg.norm(u2), eps)
    return float((v @ w.T @ u2.T).item()), u2


def test_spectral_norm_matches_numpy_and_updates_u_only_in_training():
    torch.manual_seed(0)
    conv = SNConv2d(5, 7, 3, padding=1)
    u_start = conv.u0.clone()
    want_sigma, want_u = np_sigma(conv.weight.detach().numpy(), u_start.numpy())
    x = torch.randn(2, 5, 6, 6)

    conv.eval()
    y = conv(x)
    assert torch.equal(conv.u0, u_start) and float(conv.sv0) == 1.0
    assert conv.sigma().item() == pytest.approx(want_sigma, rel=1e-5)
    ref = F.conv2d(x, conv.weight / want_sigma, conv.bias, padding=1)
    assert torch.allclose(y, ref, atol=1e-5)
    # one iteration from u0 is not the true top singular value: the research variant, not SVD
    top = np.linalg.svd(conv.weight.detach().reshape(7, -1).numpy(), compute_uv=False)[0]
    assert abs(want_sigma - top) > 1e-4

    conv.train()
    conv(x)
    assert np.allclose(conv.u0.numpy(), want_u, atol=1e-6)
    assert float(conv.sv0) == pytest.approx(want_sigma, rel=1e-5)
    # gradient reaches the weight through sigma
    conv.zero_grad()
    conv(x).sum().backward()
    assert conv.weight.grad is not None and bool(conv.weight.grad.abs().sum() > 0)


def test_residual_block_shortcut_uses_activated_input():
    torch.manual_seed(0)
    block = ResidualBlock(4, 3).eval()
    with torch.no_grad():
        for name in ("stored_mean1", "stored_var1", "stored_mean2", "stored_var2"):
            buf = getattr(block, name)
            buf.copy_(torch.rand_like(buf) + (0.5 if "var" in name else -0.5))
    x = torch.randn(2, 4, 5, 5)

    def bn(t, mean, var):
        return (t - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + 1e-4)

    def sn_conv(conv, t, pad):
        return F.conv2d(t, conv.weight / conv.sigma(), conv.bias, padding=pad)

    with torch.no_grad():
        a = torch.relu(bn(x, block.stored_mean1, block.stored_var1))
        h = torch.relu(bn(sn_conv(block.conv1, a, 1), block.stored_mean2, block.stored_var2))
        h = sn_conv(block.conv2, h, 1)
        want = h + sn_conv(block.conv_sc, a, 0)
        wrong = h + sn_conv(block.conv_sc, x, 0)
        got = block(x)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, wrong, atol=1e-3)


def test_residual_block_batch_stats_in_training():
    torch.manual_seed(0)
    block = ResidualBlock(4, 3).train()
    x = torch.randn(3, 4, 5, 5) + 2.0
    block(x)
    assert torch.allclose(block.stored_mean1, 0.1 * x.mean(dim=(0, 2, 3)), atol=1e-6)
    want_var = 0.9 + 0.1 * x.var(dim=(0, 2, 3), unbiased=True)
    assert torch.allclose(block.stored_var1, want_var, atol=1e-5)


def test_ws_conv_standardises_weights():
    torch.manual_seed(0)
    conv = WSConv2d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 5, 5)
    w = conv.weight.detach().numpy().reshape(4, -1).astype(np.float64)
    w = (w - w.mean(1, keepdims=True)) / (w.std(1, ddof=1, keepdims=True) + 1e-10)
    ref = F.conv2d(x, torch.from_numpy(w).float().view(4, 3, 3, 3), conv.bias, padding=1)
    assert torch.allclose(conv(x), ref, atol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    head = tiny_head()
    feats = make_feats(2, square((8, 8)))
    head.train()
    head(feats, gt_mask=torch.ones(2, 1, 64, 64, dtype=torch.bool))  # move u0 and BN statistics
    head.eval()
    with torch.no_grad():
        before = head(feats)
    head.save_pretrained(tmp_path / "head")
    loaded = NormalHead.from_pretrained(tmp_path / "head").eval()
    assert loaded.widths == head.widths
    assert all(p.requires_grad for p in loaded.parameters())
    for k, v in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with torch.no_grad():
        after = loaded(feats)
    assert torch.equal(before.normal, after.normal) and torch.equal(before.kappa, after.kappa)


def test_from_pretrained_errors(tmp_path):
    folder = tmp_path / "head"
    with pytest.raises(InputError, match="config.json"):
        NormalHead.from_pretrained(folder)
    tiny_head().save_pretrained(folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state.pop("fusion.mid_block.conv1.u0")
    save_file(state, str(weights))
    with pytest.raises(InputError, match=r"model\.safetensors.*missing keys.*mid_block\.conv1\.u0"):
        NormalHead.from_pretrained(folder)
    weights.unlink()
    with pytest.raises(InputError, match=r"model\.safetensors"):
        NormalHead.from_pretrained(folder)
    (folder / "config.json").write_text('{"in_channels": [1, 2, 3, 4], "nope": 1}')
    with pytest.raises(InputError, match="config.json"):
        NormalHead.from_pretrained(folder)


def test_config_json_round_trip_and_validation():
    cfg = HeadConfig.reference()
    assert cfg.in_channels == (7680, 7040, 4160, 2560)
    assert (cfg.f4, cfg.f3, cfg.f2, cfg.g, cfg.f1, cfg.f0) == (2048, 176, 64, 64, 40, 24)
    assert HeadConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        HeadConfig.small(IN_CHANNELS, width=12)  # GroupNorm(8) needs multiples of 8


def test_fusion_wiring_follows_spec():
    """docs/method.md section 3 literally: resize each group first, then project; check every
    output f4..f0."""
    torch.manual_seed(0)
    fus = tiny_head().fusion.eval()
    feats = make_feats(2, square((8, 16)))

    def rs(x, ref):
        return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)

    with torch.no_grad():
        f4 = fus.low_proj(rs(feats.low, feats.mid))
        m = fus.mid_proj(rs(feats.mid, feats.high))
        f3 = fus.mid_block(torch.cat([rs(f4, m), m], 1))
        h = fus.high_proj(rs(feats.high, feats.highest))
        f2 = fus.high_block(torch.cat([rs(f3, h), h], 1))
        g = fus.highest_block(torch.cat([f2, fus.highest_proj(feats.highest)], 1))
        g0 = torch.relu(fus.bn0(g))
        # f1 is activated: the research code's in-place ReLU overwrites its "before_relu" output
        f1 = torch.relu(fus.bn1(fus.up1(g0)))
        f0 = fus.bn2(fus.up2(torch.cat([f1, rs(g0, f1)], 1)))
        got = fus(feats)
    sizes = [(2, 4), (4, 8), (8, 16), (16, 32), (32, 64)]
    for name, a, b, size in zip(
        ("f4", "f3", "f2", "f1", "f0"), got, (f4, f3, f2, f1, f0), sizes, strict=True
    ):
        assert a.shape[-2:] == size, name
        assert torch.allclose(a, b, atol=1e-5), name
    assert bool((got[3] >= 0).all()) and bool((got[3] == 0).any())  # f1 after its ReLU
    assert bool((got[4] < 0).any())  # f0 before any ReLU


def test_decoder_eval_wiring_follows_spec():
    """Dense eval path against a literal docs/method.md section 3 re-computation from the
    module's own layers."""
    torch.manual_seed(0)
    dec = tiny_head().decoder.eval()
    skips = tuple(
        torch.randn(1, c, s, 2 * s) for c, s in zip((32, 16, 8, 8, 8), (2, 4, 8, 16, 32), strict=True)
    )

    def nrm(o):
        xyz = o[:, :3] / (o[:, :3].norm(dim=1, keepdim=True) + 1e-10)
        return torch.cat([xyz, F.elu(o[:, 3:]) + 1.01], 1)

    def x2(t):
        return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=True)

    def mlp(seq, t):
        b, c, h, w = t.shape
        return nrm(seq(t.reshape(b, c, -1)).reshape(b, 4, h, w))

    with torch.no_grad():
        f4, f3, f2, f1, f0 = skips
        d1 = dec.up1(dec.d0(f4), f3)
        d2 = dec.up2(d1, f2)
        d3 = dec.up3(d2, f1)
        d4 = dec.up4(d3, f0)
        out8 = nrm(dec.out8(d2))
        out4 = mlp(dec.refine4, torch.cat([x2(d2), x2(out8)], 1))
        out2 = mlp(dec.refine2, torch.cat([x2(d3), x2(out4)], 1))
        out1 = mlp(dec.refine1, torch.cat([x2(d4), x2(out2)], 1))
        got = dec(skips)
    assert got.final.shape == (1, 4, 64, 128)
    assert torch.allclose(got.coarse, out8, atol=1e-6)
    assert torch.allclose(got.final, out1, atol=1e-5)


def test_point_seeds_fix_the_random_points_whatever_the_global_rng():
    feats = make_feats(2, square((8, 8)))
    # A fresh copy per call: a training forward updates the spectral-norm vectors.
    h1, h2 = tiny_head().train(), tiny_head().train()
    torch.manual_seed(1)
    a = h1(feats, point_seeds=[11, 12])
    torch.manual_seed(2)
    b = h2(feats, point_seeds=[11, 12])
    for x, y in zip(a.point_coords, b.point_coords, strict=True):
        assert torch.equal(x, y)
    c = tiny_head().train()(feats, point_seeds=[11, 13])
    assert torch.equal(c.point_coords[2][0], a.point_coords[2][0])
    assert not torch.equal(c.point_coords[2][1], a.point_coords[2][1])
