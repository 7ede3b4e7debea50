"""Synthetic data creation and the self-improving stage on the tiny backbone."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diff2in1.config import CreateConfig, SelfImproveConfig
from diff2in1.creation import create_samples
from diff2in1.data import NormalsDataset, read_sample
from diff2in1.heads import NormalHead
from diff2in1.stages.create import create_data, sample_seed, write_manifest
from diff2in1.stages.self_improve import ema_due, ema_update, mixed_targets, train_self_improve
from diff2in1.training.loop import mix_seed


def _ccfg(root, out, **kw) -> CreateConfig:
    base = dict(
        data=str(root),
        backbone="tiny",
        out=str(out),
        resolution=(64, 64),
        t_start=60,
        steps=3,
        batch_size=3,
        progress=False,
        preview=2,
    )
    return CreateConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def head(small_head_dir):
    return NormalHead.from_pretrained(small_head_dir)


def _files(root):
    """The dataset's files (previews and the run's config aside)."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(("preview", "create_config"))
    )


def test_create_writes_layout_manifest_and_is_deterministic(scenes_root, tmp_path, tiny_backbone, head):
    out = tmp_path / "syn"
    res = create_data(_ccfg(scenes_root, out, samples_per_image=2), tiny_backbone, head)
    assert res.created == 16 and res.total == 16
    ds = NormalsDataset(out, "train", size=None)
    assert len(ds) == 16
    s = read_sample(out, "train", "scene_000003_syn1")
    assert s.image.shape == (64, 64, 3) and s.normal.shape == (64, 64, 3) and s.kappa.shape == (64, 64)
    assert s.caption == read_sample(scenes_root, "train", "scene_000003").caption
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 16 and len({x["id"] for x in lines}) == 16
    rec = next(x for x in lines if x["id"] == "scene_000003_syn1")
    assert rec["source_id"] == "scene_000003" and rec["t_start"] == 60 and rec["steps"] == 3
    assert rec["seed"] == mix_seed(42, 3, 1) and len(rec["head_fingerprint"]) == 16
    assert (out / "preview_0_0.png").exists()
    # The same seed gives the same data; another seed gives other data.
    again = create_data(_ccfg(scenes_root, tmp_path / "again", samples_per_image=2), tiny_backbone, head)
    assert again.created == 16
    a = read_sample(tmp_path / "again", "train", "scene_000003_syn1")
    assert np.array_equal(a.image, s.image) and np.array_equal(a.normal, s.normal)
    other = create_data(_ccfg(scenes_root, tmp_path / "other", seed=7), tiny_backbone, head)
    assert other.created == 8
    assert not np.array_equal(
        read_sample(tmp_path / "other", "train", "scene_000003_syn0").image,
        read_sample(out, "train", "scene_000003_syn0").image,
    )


def test_create_resumes_without_duplicates_or_gaps(scenes_root, tmp_path, tiny_backbone, head):
    full = tmp_path / "full"
    create_data(_ccfg(scenes_root, full), tiny_backbone, head)
    cut = tmp_path / "cut"

    def stop(done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        create_data(_ccfg(scenes_root, cut), tiny_backbone, head, progress=stop)
    assert len(list((cut / "meta").glob("*.json"))) == 3
    res = create_data(_ccfg(scenes_root, cut), tiny_backbone, head)
    assert res.created == 5 and res.skipped == 3
    assert _files(full) == _files(cut)
    for i in range(8):
        sid = f"scene_{i:06d}_syn0"
        assert np.array_equal(read_sample(full, "train", sid).image, read_sample(cut, "train", sid).image)


def test_sharded_creation_equals_single_process(scenes_root, tmp_path, tiny_backbone, head):
    one = tmp_path / "one"
    create_data(_ccfg(scenes_root, one), tiny_backbone, head)
    two = tmp_path / "two"
    create_data(_ccfg(scenes_root, two, shard="0/2", batch_size=2), tiny_backbone, head)
    create_data(_ccfg(scenes_root, two, shard="1/2", batch_size=4), tiny_backbone, head)
    write_manifest(two)
    assert _files(one) == _files(two)
    for i in range(8):
        a, b = (
            read_sample(one, "train", f"scene_{i:06d}_syn0"),
            read_sample(two, "train", f"scene_{i:06d}_syn0"),
        )
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
        assert np.allclose(a.normal, b.normal, atol=1e-4)
    assert sorted(
        x["id"] for x in map(json.loads, (one / "manifest.jsonl").read_text().splitlines())
    ) == sorted(x["id"] for x in map(json.loads, (two / "manifest.jsonl").read_text().splitlines()))


def test_synthetic_normals_are_the_head_on_the_last_step_taps(scenes_root, tiny_backbone, head):
    cfg = _ccfg(scenes_root, "unused")
    ds = NormalsDataset(scenes_root, "train", size=(64, 64), labels=False)
    item = ds[0]
    seeds = [mix_seed(cfg.seed, 0, 0)]
    made = create_samples(
        tiny_backbone, head, item["image"][None], [item["caption"]], seeds, cfg.t_start, cfg.steps
    ).prediction
    # By hand: the same draws, DDIM to the end, then the head on the taps of a UNet pass at t=1
    # on the latent just before the last step.
    bb = tiny_backbone
    post = bb.vae.encode(item["image"][None]).latent_dist
    draws = torch.randn((2, *post.mean.shape[1:]), generator=torch.Generator().manual_seed(seeds[0]))[:, None]
    x = bb.q_sample((post.mean + post.std * draws[0]) * bb.scaling_factor, cfg.t_start, draws[1])
    cond = bb.embed([item["caption"]])
    from diff2in1.backbone import ddim_timesteps

    times = ddim_timesteps(cfg.t_start, cfg.steps)
    for t, tp in zip(times[:-1], times[1:], strict=True):
        eps, _ = bb.unet_forward(x, t, cond)
        a, ap = bb.alphas_cumprod[t], bb.alphas_cumprod[tp]
        x = ap.sqrt() * (x - (1 - a).sqrt() * eps) / a.sqrt() + (1 - ap).sqrt() * eps
    _, feats = bb.unet_forward(x, 1, cond, features=True)
    ref = head.eval()(feats, image_size=(64, 64))
    assert torch.allclose(made.normal, ref.normal, atol=1e-4)
    assert torch.allclose(made.kappa, ref.kappa, rtol=1e-4, atol=1e-4)


def test_ema_rule_and_schedule(head):
    c, e = copy.deepcopy(head), copy.deepcopy(head)
    with torch.no_grad():
        for p in e.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in c.state_dict().items()}
    ema_update(c, e, 0.998)
    for k, v in c.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.998 * before[k] + 0.002 * e.state_dict()[k], atol=1e-6), k
    assert [s for s in range(1, 32) if ema_due(s, 10)] == [11, 21, 31]


def test_targets_mix_ground_truth_and_creation_predictions(tiny_backbone, head):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    feats = tiny_backbone.perceive(x, seeds=[1, 2])
    gt = torch.nn.functional.normalize(torch.randn(2, 3, 64, 64), dim=1)
    batch = {
        "labelled": torch.tensor([True, False]),
        "normal": gt,
        "mask": torch.ones(2, 1, 64, 64, dtype=bool),
    }
    target, mask, weight = mixed_targets(head, feats, (64, 64), batch)
    assert weight is None  # the research labels: every synthetic pixel alike
    assert torch.equal(target[0], gt[0])
    assert torch.allclose(target[1], head.eval()(feats, image_size=(64, 64)).normal[1], atol=1e-6)
    assert mask.all()


def _scfg(root, syn, init, out, **kw) -> SelfImproveConfig:
    base = dict(
        data=str(root),
        synthetic=[str(syn)],
        backbone="tiny",
        init=str(init),
        out=str(out),
        resolution=(64, 64),
        batch_size=4,
        epochs=1,
        progress=False,
        ema_every=1,
        num_workers=0,
    )
    return SelfImproveConfig(**{**base, **kw})


def test_self_improve_creation_moves_only_by_ema(scenes_root, tmp_path, tiny_backbone, head, small_head_dir):
    syn = tmp_path / "syn"
    create_data(_ccfg(scenes_root, syn), tiny_backbone, head)
    init = load_file(small_head_dir / "diffusion_pytorch_model.safetensors")
    # decay 1: the creation head never changes (no gradient reaches it) while exploitation trains.
    r = train_self_improve(
        _scfg(scenes_root, syn, small_head_dir, tmp_path / "frozen", ema_decay=1.0), backbone=tiny_backbone
    )
    assert r.steps == 4
    c = load_file(tmp_path / "frozen" / "creation" / "diffusion_pytorch_model.safetensors")
    e = load_file(tmp_path / "frozen" / "exploitation" / "diffusion_pytorch_model.safetensors")
    floats = [k for k in init if init[k].is_floating_point()]  # (BN step counters are copied)
    assert all(torch.equal(c[k], init[k]) for k in floats)
    assert any(not torch.equal(e[k], init[k]) for k in floats)
    # decay 0 after every step from the 2nd on: the creation head ends as the exploitation head.
    train_self_improve(
        _scfg(scenes_root, syn, small_head_dir, tmp_path / "copy", ema_decay=0.0), backbone=tiny_backbone
    )
    c = load_file(tmp_path / "copy" / "creation" / "diffusion_pytorch_model.safetensors")
    e = load_file(tmp_path / "copy" / "exploitation" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(c[k], e[k]) for k in e)


def test_merge_writes_one_dataset(scenes_root, tmp_path, tiny_backbone, head):
    from diff2in1.cli import main

    syn = tmp_path / "syn"
    create_data(_ccfg(scenes_root, syn), tiny_backbone, head)
    out = tmp_path / "merged"
    assert main(["merge", "--data", str(scenes_root), "--synthetic", str(syn), "--out", str(out)]) == 0
    merged = NormalsDataset(out, "train", size=None)
    assert len(merged) == 16 and len(NormalsDataset(out, "test", size=None)) == 3
    a, b = read_sample(out, "train", "scene_000002_syn0"), read_sample(syn, "train", "scene_000002_syn0")
    assert np.array_equal(a.image, b.image) and np.array_equal(a.kappa, b.kappa)
    # The same synthetic set twice would duplicate ids: refused with a clear error.
    assert (
        main(
            [
                "merge",
                "--data",
                str(scenes_root),
                "--synthetic",
                str(syn),
                "--synthetic",
                str(syn),
                "--out",
                str(tmp_path / "twice"),
            ]
        )
        == 2
    )


def test_recreate_every_makes_new_sets_with_the_current_creation_head(
    scenes_root, tmp_path, tiny_backbone, small_head_dir
):
    out = tmp_path / "si"
    cfg = _scfg(
        scenes_root,
        "unused",
        small_head_dir,
        out,
        synthetic=[],
        epochs=2,
        recreate_every=1,
        ema_decay=0.5,
        create={"t_start": 60, "steps": 2, "batch_size": 4},
    )
    result = train_self_improve(cfg, backbone=tiny_backbone)
    assert result.steps == 8  # (8 original + 8 synthetic) / 4 per epoch
    prints = []
    for epoch in (0, 1):
        lines = (out / f"synthetic_epoch_{epoch:04d}" / "manifest.jsonl").read_text().splitlines()
        assert len(lines) == 8
        prints.append({json.loads(x)["head_fingerprint"] for x in lines})
    assert len(prints[0]) == len(prints[1]) == 1 and prints[0] != prints[1]


@pytest.fixture(scope="module")
def tiny_pipe(tiny_backbone, head):
    from diff2in1 import Diff2in1Pipeline

    return Diff2in1Pipeline.from_backbone(tiny_backbone, head)


def test_pipe_create_with_a_samples_seed_remakes_the_create_data_sample(
    scenes_root, tmp_path, tiny_pipe
):
    out = tmp_path / "syn"
    create_data(_ccfg(scenes_root, out, samples_per_image=2), tiny_pipe.backbone, tiny_pipe.head)
    meta = json.loads((out / "meta" / "scene_000003_syn1.json").read_text())
    assert meta["seed"] == sample_seed(42, 3, 1)
    made = tiny_pipe.create(
        scenes_root / "train" / "img" / "scene_000003.png",
        meta["caption"],
        t_start=60,
        steps=3,
        seed=meta["seed"],
        processing_resolution=64,
        show_progress_bar=False,
    )
    saved = read_sample(out, "train", "scene_000003_syn1")
    assert np.abs(np.round(made.images[0] * 255) - saved.image.astype(float)).max() <= 1
    saved_normal = np.load(out / "train" / "norm_npy" / "scene_000003_syn1.npy")
    assert np.abs(made.normals[0] - saved_normal).max() < 1e-4
    assert np.allclose(made.kappa[0, ..., 0], saved.kappa, rtol=1e-3, atol=1e-3)
    other = tiny_pipe.create(
        scenes_root / "train" / "img" / "scene_000003.png",
        meta["caption"],
        t_start=60,
        steps=3,
        seed=meta["seed"] + 1,
        show_progress_bar=False,
    )
    assert np.abs(other.images[0] - made.images[0]).max() > 1e-3  # the seed matters


def test_a_created_sample_is_the_same_alone_and_in_a_batch_of_three(scenes_root, tiny_pipe):
    ds = NormalsDataset(scenes_root, "train", size=(64, 64), labels=False)
    images = [ds[i]["image"] for i in (0, 1, 2)]
    kw = dict(t_start=60, steps=3, show_progress_bar=False)
    alone = tiny_pipe.create(images[1], "a room", seed=11, **kw)
    batch = tiny_pipe.create(images, ["a", "a room", "b"], seed=[5, 11, 7], batch_size=3, **kw)
    assert batch.images.shape == (3, 64, 64, 3)
    assert np.abs(batch.images[1] - alone.images[0]).max() < 1e-4
    assert np.abs(batch.normals[1] - alone.normals[0]).max() < 1e-4
    # One generator per image: the same as the seeds drawn from them, one at a time.
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    by_gen = tiny_pipe.create(images, "a room", generator=gens, batch_size=2, **kw)
    third = tiny_pipe.create(images[2], "a room", generator=torch.Generator().manual_seed(3), **kw)
    assert np.abs(by_gen.images[2] - third.images[0]).max() < 1e-4
