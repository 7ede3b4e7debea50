"""`python benchmarks/bench.py`: the smoke run, the report, and baseline == ours."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch

from diff2in1.heads import HeadConfig, NormalHead
from diff2in1.heads.decoder import MIN_KAPPA

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"  # not installed: a folder of the checkout
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import bench  # noqa: E402
import bench_baseline as baseline_mod  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_head(backbone) -> NormalHead:
    torch.manual_seed(0)
    return NormalHead.from_head_config(
        HeadConfig.small(tuple(backbone.tap_channels[g] for g in ("low", "mid", "high", "highest")))
    )


def test_smoke_run_writes_every_stage(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["backbone"] == "tiny" and report["config"]["resolution"] == 64
    assert report["config"]["loadavg_start"] is None or len(report["config"]["loadavg_start"]) == 3
    for name in (*bench.STAGES, *bench.HEAD_STAGES):
        st = report["stages"][name]
        assert st["sec_per_image"] > 0 and st["images_per_s"] == pytest.approx(1 / st["sec_per_image"])
        assert st["peak_mb"] > 0 and st["peak_delta_mb"] >= 0
        assert st["flops_per_call"] > 0 and st["achieved_flops_per_s"] > 0
    # Three heads read one backbone pass: one UNet call, more FLOPs than normals alone.
    three = report["stages"]["predict_three_heads"]
    assert three["module_calls_per_call"]["unet"] == 1
    assert three["flops_per_call"] > report["stages"]["predict"]["flops_per_call"]
    ratio = three["sec_per_call"] / report["stages"]["predict"]["sec_per_call"]
    assert report["three_heads_ratio"] == pytest.approx(ratio)
    # Every stage but the head-only ones runs the UNet; the created sample runs it once per step.
    assert report["stages"]["taps"]["module_calls_per_call"]["unet"] == 1
    create = report["stages"]["create_sample"]
    assert create["module_calls_per_call"]["unet"] == create["steps_measured"] == 3
    assert create["extrapolated"] and create["steps_full"] == 50 and "extrapolated" in create["note"]
    assert create["sec_per_call"] > create["measured_sec_per_call"]
    f = report["flops"]
    assert f["per_call"]["unet_forward"] > 0 and f["unet_flops_per_s"] > 0
    assert f["matmul_flops_per_s"]["fp32"] > 0
    assert f["unet_fraction_of_matmul_peak"] == pytest.approx(
        f["unet_flops_per_s"] / f["matmul_flops_per_s"]["fp32"]
    )
    for name in bench.BASELINE_STAGES:
        assert report["baseline"][name]["sec_per_image"] > 0
        assert report["speedup"][name] == pytest.approx(
            report["baseline"][name]["sec_per_call"] / report["stages"][name]["sec_per_call"]
        )
    eq = report["equivalence"]
    assert eq["grad_keys_matched"] == 1.0
    assert max(v for k, v in eq.items() if k != "grad_keys_matched") < 1e-4, eq
    table = capsys.readouterr().out
    assert "created sample (50 st.)*" in table and "extrapolated from a measured 3-step run" in table
    assert "of the measured fp32 matmul rate" in table and "load average at start" in table


def test_baseline_matches_ours_and_can_fail(tiny_backbone, monkeypatch):
    head = small_head(tiny_backbone)
    batch = bench.make_batch(2, 64, torch.device("cpu"))
    eq = bench.check_equivalence(tiny_backbone, head, batch)
    assert eq["grad_keys_matched"] == 1.0
    for key in ("predict_normal", "predict_kappa", "warmup_loss", "warmup_grads", "warmup_buffers"):
        assert eq[key] < 1e-4, (key, eq)

    # A baseline that computes something else is caught: kappa's floor changed in the baseline only.
    real = baseline_mod.norm_normalize

    def shifted(out):
        y = real(out)
        return torch.cat([y[:, :3], y[:, 3:] + MIN_KAPPA], 1)

    monkeypatch.setattr(baseline_mod, "norm_normalize", shifted)
    bad = bench.check_equivalence(tiny_backbone, head, batch)
    assert bad["predict_kappa"] > 1e-3 and bad["warmup_loss"] > 1e-4 and bad["warmup_grads"] > 1e-4


def test_baseline_write_back_loop_matches_scatter(tiny_backbone):
    """Training mode at the default sampling ratio: the same points, the same refined values."""
    head = small_head(tiny_backbone).train()
    bhead = baseline_mod.BaselineHead(head, baseline_mod.tap_splits(tiny_backbone))
    batch = bench.make_batch(2, 64, torch.device("cpu"))
    feats = tiny_backbone.perceive(batch["image"], seeds=[1, 2])
    state = {k: v.clone() for k, v in head.state_dict().items()}
    ours = head(feats, image_size=(64, 64), gt_mask=batch["mask"], point_seeds=[5, 6])
    head.load_state_dict(state)
    ref = bhead(feats, image_size=(64, 64), gt_mask=batch["mask"], point_seeds=[5, 6])
    torch.testing.assert_close(ours.coarse, ref.coarse, rtol=1e-4, atol=1e-5)
    # Near-tied uncertainties may swap under rounding; nearly all points must agree exactly.
    for a, b in zip(ours.point_coords, ref.point_coords, strict=True):
        assert (a == b).all(-1).float().mean() > 0.99
    same = (ours.point_coords[-1] == ref.point_coords[-1]).all(-1)
    torch.testing.assert_close(
        ours.point_preds[-1].transpose(1, 2)[same],
        ref.point_preds[-1].transpose(1, 2)[same],
        rtol=1e-3,
        atol=1e-4,
    )


def test_flops_on_meta_equal_flops_on_the_real_unet(tiny_backbone):
    """The meta-device count (used by the benchmark) equals a count on the real module, attention included."""
    head = small_head(tiny_backbone)
    meta = bench.model_flops(tiny_backbone, head, batch=1, resolution=64)
    unet = tiny_backbone.unet
    z = torch.randn(1, 4, 8, 8)
    cond = tiny_backbone.empty_embedding(1)
    with torch.no_grad():
        real = bench.count_flops(
            lambda: unet(z, torch.zeros(1, dtype=torch.long), encoder_hidden_states=cond)
        )
    assert meta["unet_forward"] == real > 0
    with torch.no_grad(), bench.flop_counter() as fc:
        unet(z, torch.zeros(1, dtype=torch.long), encoder_hidden_states=cond)
    ops = {str(k) for k in fc.get_flop_counts()["Global"]}
    assert any("attention" in op or "bmm" in op for op in ops), ops  # attention is counted


def test_extrapolation_and_arguments():
    assert bench.extrapolate(10.0, 2.0, 2, 50) == pytest.approx(10.0 + 48 * 2.0)
    assert bench.extrapolate(10.0, 2.0, 50, 50) == 10.0
    args = bench.build_parser().parse_args([])
    assert (args.backbone, args.resolution, args.batch, args.steps, args.dtype, args.threads) == (
        "sd15",
        512,
        1,
        50,
        "fp32",
        2,
    )
    with pytest.raises(SystemExit):
        bench.main(["--resolution", "100"])
    with pytest.raises(SystemExit):
        bench.main(["--steps", "60", "--full-steps", "50"])


def test_peak_memory_sees_an_allocation():
    with bench.PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        time.sleep(0.05)  # long enough for the sampling fallback (psutil every 5 ms) to see it
        del x
    assert mem.delta_mb > 40 and mem.peak_mb >= mem.delta_mb


def test_batched_table_reports_each_batch_size(tmp_path, capsys):
    out = tmp_path / "batched.json"
    assert bench.main(["--smoke", "--batched", "1,2", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["batched"]) == ["1", "2"]
    for b, row in report["batched"].items():
        assert row["fits"]
        for kind in ("perception", "creation"):
            assert row[kind]["images_per_s"] == pytest.approx(int(b) / row[kind]["sec_per_call"])
            assert row[kind]["peak_mb"] > 0
        # 3 measured DDIM steps, reported for 50: the extrapolation adds 47 UNet passes of this batch size
        unet, cr = row["unet"], row["creation"]
        assert cr["sec_per_call"] == pytest.approx(cr["measured_sec_per_call"] + 47 * unet["pass_s"])
        rate = int(b) * report["unet_gflop_per_image"] * 1e9 / unet["pass_s"]
        assert unet["flops_per_s"] == pytest.approx(rate)
        assert unet["fraction_of_matmul"] == pytest.approx(rate / report["matmul"]["flops_per_s"])
        assert 0 < unet["fraction_of_matmul"] < 1.5
    assert report["config"]["speed"]["attention"] == ["AttnProcessor2_0"]  # diffusers' SDPA attention
    table = capsys.readouterr().out
    assert "creation samples/s" in table and "extrapolated from 3 measured" in table
    assert "of matmul" in table and "attention SDPA" in table
    with pytest.raises(SystemExit):
        bench.main(["--batched", "0,8"])


def test_speed_knobs_change_layout_not_results(tiny_backbone):
    """--channels-last (and --tf32, a no-op off CUDA) give the same prediction as the plain path,
    to fp32 rounding; the report records what was applied."""
    import copy
    import types

    import speed_knobs
    from diff2in1 import Diff2in1Pipeline
    from diff2in1.backbone import load_backbone

    plain, nhwc = tiny_backbone, load_backbone("tiny", seed=0)  # (a deep copy would share the tap hooks)
    args = types.SimpleNamespace(compile=False, compile_mode="default", channels_last=True, tf32=True)
    applied = speed_knobs.apply(args, nhwc, torch.device("cpu"))
    assert applied["channels_last"] and not applied["tf32"] and not applied["compile"]  # TF32 is CUDA only
    conv = nhwc.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    head = small_head(plain)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    outs = []
    for bb in (plain, nhwc):
        pipe = Diff2in1Pipeline.from_backbone(bb, copy.deepcopy(head))
        outs.append(pipe(x, processing_resolution=64, output_type="pt", show_progress_bar=False))
    assert torch.allclose(outs[0].normals, outs[1].normals, atol=1e-4)
    assert torch.allclose(outs[0].kappa, outs[1].kappa, rtol=1e-3, atol=1e-3)
    assert "channels-last" in speed_knobs.describe(applied)


def test_gpu_checks_compare_the_tuned_path_with_the_plain_one(tmp_path, capsys):
    """benchmarks/gpu_checks.py (run on a GPU by gpu_run.sh) works on the CPU: channels-last perception
    and creation equal the plain path's to fp32 rounding; the DDIM sync count needs CUDA."""
    import gpu_checks

    out = tmp_path / "checks.json"
    argv = ["--backbone", "tiny", "--resolution", "64", "--batch", "2", "--steps", "3", "--dtype", "fp32"]
    assert gpu_checks.main([*argv, "--device", "cpu", "--channels-last", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["applied"]["channels_last"] and "ddim_syncs" not in report
    assert report["normals_mean_angle_deg"] < 0.05 and report["kappa_max_rel"] < 1e-3
    assert report["created_max_abs"] < 1e-4
