"""Warm-up training: the loss falls, config and checkpoints are written, resume is exact."""

from __future__ import annotations

import csv

import pytest
import torch
import yaml
from safetensors.torch import load_file

from diff2in1.config import WarmupConfig, default_yaml, load_config
from diff2in1.errors import InputError
from diff2in1.stages.warmup import train_warmup


def _cfg(root, out, **kw) -> WarmupConfig:
    base = dict(
        data=str(root),
        backbone="tiny",
        out=str(out),
        head="small",
        resolution=(64, 64),
        batch_size=4,
        epochs=2,
        checkpoint_every=1,
        progress=False,
        num_workers=0,
    )
    return WarmupConfig(**{**base, **kw})


def test_warmup_loss_falls_and_run_folder_is_complete(scenes_root, tmp_path, tiny_backbone):
    out = tmp_path / "run"
    result = train_warmup(_cfg(scenes_root, out, epochs=6, lr=1e-3, num_workers=2), backbone=tiny_backbone)
    assert result.steps == 12
    first, last = sum(result.losses[:2]) / 2, sum(result.losses[-2:]) / 2
    assert last < first - 0.1, result.losses
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lr"] == 1e-3 and saved["batch_size"] == 4 and saved["seed"] == 42
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert (out / "checkpoints" / "epoch_0003" / "head" / "diffusion_pytorch_model.safetensors").exists()
    assert (out / "head" / "config.json").exists()
    assert not list(out.rglob("*.tmp"))
    with pytest.raises(InputError, match="already holds a run"):
        train_warmup(_cfg(scenes_root, out), backbone=tiny_backbone)


def test_resume_after_interruption_equals_uninterrupted_run(scenes_root, tmp_path, tiny_backbone):
    full = train_warmup(_cfg(scenes_root, tmp_path / "full", epochs=2), backbone=tiny_backbone)
    # "Kill" after 3 of 4 steps (mid-epoch), then resume to the end.
    part = train_warmup(_cfg(scenes_root, tmp_path / "cut", epochs=2, max_steps=3), backbone=tiny_backbone)
    assert part.steps == 3
    rest = train_warmup(_cfg(scenes_root, tmp_path / "cut", epochs=2), resume=True, backbone=tiny_backbone)
    assert rest.steps == 4
    a = load_file(tmp_path / "full" / "head" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "cut" / "head" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert rest.losses == pytest.approx(full.losses)
    rows = list(csv.DictReader((tmp_path / "cut" / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]


def test_progress_bar_counts_steps_when_max_steps_ends_the_run(scenes_root, tmp_path, tiny_backbone, capsys):
    # epochs=10**6 means "until max_steps": the bar shows steps of max_steps, not "epoch 1/1000000".
    cfg = _cfg(scenes_root, tmp_path / "r", epochs=10**6, max_steps=3, progress=True, checkpoint_every=0)
    assert train_warmup(cfg, backbone=tiny_backbone).steps == 3
    err = capsys.readouterr().err
    assert "(step 3/3)" in err and "1000000" not in err, err[-500:]
    assert "100%" in err.strip().split("\r")[-1]  # the bar ends full though the loop stops at max_steps


def test_resume_refuses_changed_settings(scenes_root, tmp_path, tiny_backbone):
    train_warmup(_cfg(scenes_root, tmp_path / "r", max_steps=1), backbone=tiny_backbone)
    with pytest.raises(InputError, match="lr"):
        train_warmup(_cfg(scenes_root, tmp_path / "r", lr=1.0), resume=True, backbone=tiny_backbone)


def test_bad_data_fails_before_model_loading(tmp_path):
    with pytest.raises(InputError, match="no images"):
        train_warmup(_cfg(tmp_path / "nothing", tmp_path / "run", backbone="does-not-exist"))
    assert not (tmp_path / "run").exists()


def test_config_file_and_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.01\nresolution: 128\n")
    cfg = load_config(WarmupConfig, path, batch_size=2, lr=None)
    assert cfg.lr == 0.01 and cfg.batch_size == 2 and cfg.resolution == (128, 128)
    assert cfg.epochs == 50 and cfg.seed == 42 and cfg.lr != 3.57e-4
    assert load_config(WarmupConfig).lr == 3.57e-4
    path.write_text("learning_rate: 1\n")
    with pytest.raises(InputError, match="learning_rate"):
        load_config(WarmupConfig, path)
    assert "lr: 0.000357" in default_yaml(WarmupConfig)


def test_feature_cache_computes_each_image_once(scenes_root, tmp_path, tiny_backbone, monkeypatch):
    calls = []
    real = tiny_backbone.perceive

    def counting(images, **kw):
        calls.append(images.shape[0])
        return real(images, **kw)

    monkeypatch.setattr(tiny_backbone, "perceive", counting)
    mem = train_warmup(
        _cfg(scenes_root, tmp_path / "mem", epochs=3, feature_cache="memory"), backbone=tiny_backbone
    )
    assert sum(calls) == 8  # 8 training images, each encoded once over 3 epochs
    calls.clear()
    disk = train_warmup(
        _cfg(scenes_root, tmp_path / "disk", epochs=3, feature_cache="disk"), backbone=tiny_backbone
    )
    assert sum(calls) == 8 and len(list((tmp_path / "disk" / "feature_cache").glob("*.safetensors"))) == 8
    assert disk.losses == pytest.approx(mem.losses)
    calls.clear()
    plain = train_warmup(_cfg(scenes_root, tmp_path / "plain", epochs=3), backbone=tiny_backbone)
    assert sum(calls) == 24 and plain.losses != pytest.approx(mem.losses)


def test_shipped_yaml_configs_are_the_defaults():
    from importlib import resources

    from diff2in1.config import CreateConfig, SelfImproveConfig

    for name, cls in (
        ("warmup", WarmupConfig),
        ("self_improve", SelfImproveConfig),
        ("create", CreateConfig),
    ):
        text = (resources.files("diff2in1.configs") / f"{name}.yaml").read_text()
        assert yaml.safe_load(text) == yaml.safe_load(default_yaml(cls)), name
        path = resources.files("diff2in1.configs") / f"{name}.yaml"
        assert load_config(cls, str(path)) == cls()  # regenerate: python scripts/write_default_configs.py


def test_posterior_cache_changes_no_result(scenes_root, tmp_path, tiny_backbone, monkeypatch):
    # A head refining every pixel: uncertainty-ranked points have near-ties that float rounding
    # (e.g. another oneDNN kernel for a differently laid-out batch) may flip.
    import dataclasses

    from diff2in1.heads import HeadConfig, NormalHead

    ch = tiny_backbone.tap_channels
    cfg = HeadConfig.small(tuple(ch[g] for g in ("low", "mid", "high", "highest")))
    torch.manual_seed(0)
    NormalHead.from_head_config(
        dataclasses.replace(cfg, sampling_ratio=1.0, importance_ratio=0.0)
    ).save_pretrained(tmp_path / "h")
    calls = []
    real = tiny_backbone.posterior

    def counting(images):
        calls.append(images.shape[0])
        return real(images)

    monkeypatch.setattr(tiny_backbone, "posterior", counting)
    cached = train_warmup(
        _cfg(scenes_root, tmp_path / "a", epochs=3, head=str(tmp_path / "h")), backbone=tiny_backbone
    )
    assert sum(calls) == 8  # each training image encoded once over 3 epochs
    calls.clear()
    plain = train_warmup(
        _cfg(scenes_root, tmp_path / "b", epochs=3, posterior_cache=False, head=str(tmp_path / "h")),
        backbone=tiny_backbone,
    )
    assert sum(calls) == 24
    # Same up to float rounding (the encoder's kernels may differ with the batch's make-up, and
    # Adam amplifies tiny gradient differences); a real change would differ at the first step.
    assert cached.losses[0] == pytest.approx(plain.losses[0], rel=1e-5)
    assert cached.losses == pytest.approx(plain.losses, rel=2e-3)


def test_bf16_mixed_precision_trains_on_a_bf16_backbone(scenes_root, tmp_path, monkeypatch):
    """--mixed-precision bf16 loads the frozen backbone in bf16; the head keeps fp32 weights and learns."""
    import diff2in1.stages.warmup as warmup_mod

    loaded = []
    real_load = warmup_mod.load_backbone
    monkeypatch.setattr(
        warmup_mod, "load_backbone", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1]
    )
    out = tmp_path / "run"
    result = train_warmup(_cfg(scenes_root, out, epochs=4, lr=1e-3, mixed_precision="bf16"))
    assert loaded[0].dtype == torch.bfloat16
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert sum(result.losses[-2:]) < sum(result.losses[:2]), result.losses
    saved = load_file(out / "head" / "diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float32 for v in saved.values() if v.is_floating_point())
