"""Diff2in1Pipeline: loading/saving, inputs, per-image determinism, resize modes, ensembles,
generation on diffusers' DDIMScheduler, backbone fingerprints, and the CLI around it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diff2in1 import Diff2in1Pipeline
from diff2in1.backbone import load_backbone
from diff2in1.cli import main
from diff2in1.errors import InputError
from diff2in1.heads import NormalHead, build_head
from diff2in1.inference.uncertainty import combine_members, expected_error, kappa_from_error


@pytest.fixture(scope="module")
def scenes_backbone():
    return load_backbone("tiny-scenes")


@pytest.fixture(scope="module")
def pipe(scenes_backbone):
    torch.manual_seed(0)
    head = build_head("small", scenes_backbone, 64)
    return Diff2in1Pipeline.from_backbone(scenes_backbone, head)


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe") / "pipe"
    pipe.save_pretrained(out)
    return out


def photo(h: int = 48, w: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 / w, yy * 255 / h, 128 + 60 * np.sin(xx / 5)], -1) + rng.normal(0, 10, (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def test_save_and_load_round_trip_offline(pipe, saved):
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == "Diff2in1Pipeline"
    for name in ("vae", "unet", "text_encoder", "tokenizer", "scheduler", "head"):
        assert name in index and (saved / name).is_dir(), name
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert (saved / "head" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(saved.rglob("*.bin")) and not list(saved.rglob("*.pkl"))  # safetensors only
    card = (saved / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: diffusers" in card.split("---")[1]
    loaded = Diff2in1Pipeline.from_pretrained(saved)
    assert loaded.head.config.processing_resolution == 64
    for name in ("vae", "unet", "text_encoder", "head"):  # the weights come back bit for bit
        before, after = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), name
    a, b = pipe(photo(), show_progress_bar=False), loaded(photo(), show_progress_bar=False)
    # Same weights, same inputs; oneDNN may pick other kernels for the loaded tensors' memory (seen on
    # an AMD EPYC: 3e-7), so the outputs agree to float rounding, not bit for bit.
    np.testing.assert_allclose(a.normals, b.normals, atol=1e-5)
    np.testing.assert_allclose(a.kappa, b.kappa, rtol=1e-5)


def test_call_on_pil_gives_unit_normals_at_the_input_size(saved):
    pipe = Diff2in1Pipeline.from_pretrained(saved)
    out = pipe(photo(30, 50), show_progress_bar=False)
    assert out.normals.shape == (1, 30, 50, 3) and out.normals.dtype == np.float32
    assert np.allclose(np.linalg.norm(out.normals, axis=-1), 1, atol=1e-4)
    assert out.kappa.shape == out.uncertainty.shape == (1, 30, 50, 1)
    assert (out.kappa > 0.01).all() and (out.uncertainty > 0).all() and (out.uncertainty <= 90).all()
    small = pipe(photo(30, 50), match_input_resolution=False, show_progress_bar=False)
    assert small.normals.shape == (1, 64, 64, 3)
    pt = pipe(photo(30, 50), output_type="pt", show_progress_bar=False)
    assert pt.normals.shape == (1, 3, 30, 50) and torch.allclose(
        pt.normals.permute(0, 2, 3, 1), torch.from_numpy(out.normals)
    )
    pil = pipe(photo(30, 50), output_type="pil", show_progress_bar=False)
    assert pil.normals[0].size == (50, 30) and pil.uncertainty[0].size[0] > 50  # colour bar beside


def test_every_input_kind_gives_the_same_result(pipe, tmp_path):
    img = photo()
    img.save(tmp_path / "p.png")
    arr = np.asarray(img)
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1
    ref = pipe(img, show_progress_bar=False).normals
    for x in (arr, arr.astype(np.float32) / 255, str(tmp_path / "p.png"), tmp_path / "p.png", t, t[None]):
        got = pipe(x, show_progress_bar=False).normals
        assert np.abs(got - ref).max() < 1e-4, type(x)


def test_result_does_not_depend_on_position_or_batch(pipe):
    a, b, c = photo(seed=1), photo(40, 40, seed=2), photo(seed=3)
    alone = pipe(c, show_progress_bar=False).normals[0]
    together = pipe([a, b, c], batch_size=3, show_progress_bar=False).normals
    assert isinstance(together, list) and len(together) == 3  # sizes differ: one array each
    assert np.abs(together[2] - alone).max() < 1e-4
    seeded = pipe(c, generator=torch.Generator().manual_seed(5), show_progress_bar=False).normals[0]
    assert np.abs(seeded - alone).max() > 1e-6  # another seed draws other noise


def test_bad_inputs_are_one_line_errors(pipe):
    cases = [
        (torch.full((3, 8, 8), 2.0), "image"),
        (np.full((8, 8, 3), 300.0, np.float32), "[0, 1]"),
        (np.zeros((8, 8, 5), np.uint8), "image"),
        (np.zeros((0, 8, 3), np.uint8), "image"),
        ("/nope/missing.png", "missing.png"),
    ]
    for bad, words in cases:
        with pytest.raises(InputError, match=None) as e:
            pipe(bad, show_progress_bar=False)
        assert "\n" not in str(e.value) and words in str(e.value), str(e.value)
    for kw in (
        {"ensemble_size": 0},
        {"processing_resolution": 60},
        {"resize_mode": "crop"},
        {"output_type": "x"},
    ):
        with pytest.raises(InputError):
            pipe(photo(), show_progress_bar=False, **kw)


def test_keep_aspect_pads_and_unpads(pipe):
    wide = photo(32, 96)
    out = pipe(wide, resize_mode="keep_aspect", show_progress_bar=False)
    assert out.normals.shape == (1, 32, 96, 3)
    model = pipe(wide, resize_mode="keep_aspect", match_input_resolution=False, show_progress_bar=False)
    assert model.normals.shape == (1, 21, 64, 3)  # longest edge 64, padding cut off
    squash = pipe(wide, show_progress_bar=False)
    assert np.abs(squash.normals - out.normals).max() > 1e-3  # really another input


def test_ensemble_combines_flips_and_noise(pipe):
    one = pipe(photo(), show_progress_bar=False)
    four = pipe(photo(), ensemble_size=4, show_progress_bar=False)
    assert four.normals.shape == one.normals.shape
    assert np.allclose(np.linalg.norm(four.normals, axis=-1), 1, atol=1e-4)
    assert np.abs(four.normals - one.normals).max() > 1e-4


def test_combine_members_folds_the_spread_into_the_uncertainty():
    k = torch.tensor([0.5, 2.0, 10.0, 300.0])
    assert torch.allclose(kappa_from_error(expected_error(k)), k, rtol=1e-4)
    n = torch.zeros(2, 1, 3, 1, 1)
    n[:, 0, 2] = 1
    kap = torch.full((2, 1, 1, 1, 1), 10.0)
    mean, kk = combine_members(n, kap)  # identical members: nothing changes
    assert torch.allclose(mean, n[0]) and torch.allclose(kk, kap[0], rtol=1e-4)
    tilted = n.clone()
    tilted[1, 0] = torch.tensor([np.sin(0.3), 0.0, np.cos(0.3)]).view(3, 1, 1)
    _, spread_k = combine_members(tilted, kap)
    assert spread_k.item() < 10.0  # members disagree: less confident


def test_create_steps_ddim_scheduler_over_the_method_timesteps(pipe):
    seen: list[int] = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(int(args[1].reshape(-1)[0])))
    try:
        out = pipe.create(
            photo(64, 64), "a room", generator=torch.Generator().manual_seed(0), show_progress_bar=False
        )
    finally:
        hook.remove()
    assert seen == list(range(589, 0, -12))  # 589, 577, ..., 13, 1: 50 steps
    assert out.images.shape == (1, 64, 64, 3) and out.images.min() >= 0 and out.images.max() <= 1
    assert out.normals.shape == (1, 64, 64, 3) and out.kappa.shape == (1, 64, 64, 1)
    again = pipe.create(
        photo(64, 64), "a room", steps=50, generator=torch.Generator().manual_seed(0), show_progress_bar=False
    )
    assert np.array_equal(out.images, again.images)
    with pytest.raises(InputError, match="nearby step counts"):
        pipe.create(photo(), steps=10, show_progress_bar=False)  # stride 60: DDIMScheduler cannot


def test_create_matches_the_hand_written_ddim_formula(pipe, scenes_backbone):
    """diffusers' step is eta-0 DDIM: x0 = (x - sqrt(1-a_t) eps) / sqrt(a_t); sqrt(a_prev) x0 + ... eps."""
    bb = scenes_backbone
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = bb.embed(["a room"])
    res = bb.ddim_sample(z, cond, t_start=60, steps=5, return_features=False)
    acp = bb.alphas_cumprod.double()
    x = z.double()
    times = [49, 37, 25, 13, 1]
    for k, t in enumerate(times):
        eps, _ = bb.unet_forward(x.float(), t, cond)
        a_t, a_prev = acp[t], acp[times[k + 1]] if k + 1 < len(times) else acp[0]
        x0 = (x - (1 - a_t).sqrt() * eps.double()) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps.double()
    assert torch.allclose(res.latents.double(), x, atol=1e-4)


def test_head_on_another_backbone_is_refused_before_any_forward(tiny_backbone, scenes_backbone, tmp_path):
    torch.manual_seed(0)
    build_head("small", scenes_backbone, 64).save_pretrained(tmp_path / "h")
    with pytest.raises(InputError, match="expects tap widths") as e:  # another architecture
        Diff2in1Pipeline.from_backbone(tiny_backbone, tmp_path / "h")
    assert "\n" not in str(e.value) and str(tmp_path / "h") in str(e.value)
    other = load_backbone("tiny-scenes")
    with torch.no_grad():
        other.unet.conv_in.weight.mul_(1.5)  # same architecture, other weights
    with pytest.raises(InputError, match="trained on other backbone weights"):
        Diff2in1Pipeline.from_backbone(other, tmp_path / "h")
    bf16 = load_backbone("tiny-scenes", dtype=torch.bfloat16)  # the same weights in bf16 still match
    Diff2in1Pipeline.from_backbone(bf16, tmp_path / "h")


def test_head_config_records_how_to_use_it(pipe):
    c = pipe.head.config
    assert c.processing_resolution == 64 and c.resize_mode == "squash"
    assert c.backbone["tap_channels"] == list(c.in_channels)
    assert NormalHead.from_config(c).config.processing_resolution == 64


def _mixed_folder(root):
    """9 photos of every kind: RGBA, 16-bit gray, 8-bit gray, JPEG, tiny, large, paletted, RGB."""
    root.mkdir()
    base = photo(48, 64, seed=7)
    base.save(root / "target.png")
    base.convert("RGBA").save(root / "rgba.png")
    g16 = (np.asarray(base.convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(g16).save(root / "gray16.png")
    base.convert("L").save(root / "gray8.png")
    base.save(root / "photo.JPG", quality=90)
    photo(15, 20, seed=8).save(root / "tiny.png")
    photo(1000, 1500, seed=9).save(root / "large.jpg", quality=80)
    base.convert("P").save(root / "palette.png")
    photo(64, 64, seed=10).save(root / "square.bmp")
    return root


def test_predict_cli_same_photo_alone_and_in_a_mixed_folder(saved, tmp_path, capsys):
    folder = _mixed_folder(tmp_path / "photos")
    rc = main(
        ["predict", str(folder), "--pipeline", str(saved), "--out", str(tmp_path / "all"), "--no-progress"]
    )
    assert rc == 0, capsys.readouterr().err
    assert len(list((tmp_path / "all").glob("*_normal.npy"))) == 9
    rc = main(
        [
            "predict",
            str(folder / "target.png"),
            "--pipeline",
            str(saved),
            "--out",
            str(tmp_path / "one"),
            "--no-progress",
        ]
    )
    assert rc == 0
    a = np.load(tmp_path / "all" / "target_normal.npy")
    b = np.load(tmp_path / "one" / "target_normal.npy")
    assert np.abs(a - b).max() < 1e-5
    g16 = np.load(tmp_path / "all" / "gray16_normal.npy")
    g8 = np.load(tmp_path / "all" / "gray8_normal.npy")
    assert np.abs(g16 - g8).max() < 0.05  # 16-bit gray is read as the same picture, not white
    assert np.load(tmp_path / "all" / "large_normal.npy").shape == (1000, 1500, 3)
    png16 = Image.open(tmp_path / "all" / "target_normal16.png")
    assert png16.size == (64, 48)


def test_predict_cli_bad_files_are_one_line_or_skipped(saved, tmp_path, capsys):
    folder = _mixed_folder(tmp_path / "photos")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    rc = main(
        ["predict", str(folder), "--pipeline", str(saved), "--out", str(tmp_path / "o"), "--no-progress"]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "broken.png" in err and "\n" not in err and "Traceback" not in err, err
    rc = main(
        [
            "predict",
            str(folder),
            "--pipeline",
            str(saved),
            "--out",
            str(tmp_path / "o2"),
            "--no-progress",
            "--skip-bad-files",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "skipped" in out and "broken.png" in out
    assert len(list((tmp_path / "o2").glob("*_normal.npy"))) == 9
    rc = main(["predict", str(folder), "--pipeline", str(saved), "--out", str(folder / "preds")])
    assert rc == 2 and "lies inside the input" in capsys.readouterr().err


def test_evaluate_uses_the_heads_resolution_by_default(saved, scenes_root, tmp_path, capsys):
    pipe = Diff2in1Pipeline.from_pretrained(saved)
    pipe.head.save_pretrained(tmp_path / "head")
    common = [
        "evaluate",
        "--data",
        str(scenes_root),
        "--backbone",
        "tiny-scenes",
        "--head",
        str(tmp_path / "head"),
        "--no-progress",
    ]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--resolution", "64"]) == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["mean"] == b["mean"]


def test_export_pipeline_cli(tmp_path, small_head_dir, capsys):
    out = tmp_path / "p"
    assert (
        main(["export-pipeline", "--backbone", "tiny", "--head", str(small_head_dir), "--out", str(out)]) == 0
    )
    loaded = Diff2in1Pipeline.from_pretrained(out)
    assert loaded.head.config.backbone is not None
    assert (
        main(["export-pipeline", "--backbone", "tiny", "--head", str(small_head_dir), "--out", str(out)]) == 2
    )
    assert "exists" in capsys.readouterr().err


def test_bf16_pipeline_keeps_a_float32_head_and_stays_close(saved):
    from diff2in1.inference.pipeline import load_pipeline

    fp32 = load_pipeline(saved)
    bf16 = load_pipeline(saved, dtype=torch.bfloat16)
    assert bf16.unet.dtype == bf16.vae.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bf16.head.parameters())
    a = fp32(photo(), show_progress_bar=False).normals
    b = bf16(photo(), show_progress_bar=False).normals
    assert b.dtype == np.float32
    angle = np.degrees(np.arccos(np.clip((a * b).sum(-1), -1, 1)))
    assert 0 < angle.mean() < 5, angle.mean()
    with pytest.raises(InputError, match="not a pipeline folder"):
        load_pipeline(saved / "head")


def test_pipelines_on_one_backbone_share_its_tap_hooks(scenes_backbone, pipe):
    from diff2in1.inference.predictor import NormalPredictor

    def hooks() -> int:
        return sum(len(m._forward_hooks) for m in scenes_backbone.unet.modules())

    before = hooks()
    Diff2in1Pipeline.from_backbone(scenes_backbone, pipe.head)
    NormalPredictor(scenes_backbone, pipe.head)
    assert hooks() == before == 25


def test_convert_research_cli_writes_a_pipeline_that_loads(tmp_path, tiny_backbone, capsys):
    """Released-format files (plain state_dicts with the research key names) for a head on the tiny
    backbone's taps -> `convert-research` -> a pipeline folder with exactly those weights."""
    from diff2in1.heads.research_import import DECODER_KEY_MAP, FUSION_KEY_MAP

    torch.manual_seed(3)
    head = build_head("small", tiny_backbone)
    ours = head.state_dict()

    def to_research(prefix: str, key_map) -> dict:
        out = {}
        for k, v in ours.items():
            if k.startswith(prefix):
                old, new = next((o, n) for o, n in key_map if k.startswith(n))
                out[old + k[len(new) :]] = v.clone()
        return out

    fusion, decoder = tmp_path / "checkpoint_1.pth", tmp_path / "checkpoint_bae_1.pth"
    torch.save(to_research("fusion.", FUSION_KEY_MAP), fusion)
    torch.save(to_research("decoder.", DECODER_KEY_MAP), decoder)
    out = tmp_path / "pipe"
    argv = [
        "convert-research",
        "--fusion",
        fusion,
        "--decoder",
        decoder,
        "--backbone",
        "tiny",
        "--out",
        out,
        "--resolution",
        "64",
    ]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    pipe = Diff2in1Pipeline.from_pretrained(out)
    assert pipe.head.config.processing_resolution == 64 and pipe.head.config.backbone is not None
    got = pipe.head.state_dict()
    assert all(torch.equal(got[k], v) for k, v in ours.items())
    assert pipe(photo(), show_progress_bar=False).normals.shape == (1, 48, 64, 3)
    assert main([str(a) for a in argv]) == 2  # an existing pipeline folder is never overwritten
    assert "exists" in capsys.readouterr().err


def test_diffusers_conventions_return_dict_generators_value_error_progress(pipe, capsys):
    a, b = photo(seed=1), photo(seed=2)
    out = pipe(a, show_progress_bar=False)
    normals, kappa, unc = pipe(a, return_dict=False, show_progress_bar=False)
    assert np.array_equal(normals, out.normals) and np.array_equal(unc, out.uncertainty)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)
    both = pipe([a, b], generator=[g1, g2], batch_size=2, show_progress_bar=False).normals
    second = pipe(b, generator=torch.Generator().manual_seed(4), show_progress_bar=False).normals
    assert np.abs(both[1] - second[0]).max() < 1e-4
    assert np.abs(both[0] - out.normals[0]).max() > 1e-6  # its own generator, not the default
    made = pipe.create(a, t_start=60, steps=5, return_dict=False, show_progress_bar=False)
    assert isinstance(made, tuple) and len(made) == 4 and made[0].shape == (1, 64, 64, 3)
    for call in (
        lambda: pipe(a, output_type="x"),
        lambda: pipe([a, b], generator=[g1]),
        lambda: pipe.create(a, seed=1, generator=g1),
        lambda: pipe.create(a, seed=-1),
    ):
        with pytest.raises(ValueError) as e:
            call()
        assert isinstance(e.value, InputError) and "\n" not in str(e.value)
    capsys.readouterr()
    pipe.set_progress_bar_config(disable=True)
    try:
        pipe(a)
        pipe.create(a, t_start=60, steps=5)
        assert pipe._progress_bar_config == {"disable": True}  # the user's setting is left as it was
        assert capsys.readouterr().err == ""
        pipe.set_progress_bar_config(desc="mine")
        pipe(a)
        assert "mine" in capsys.readouterr().err  # the user's desc over ours, the bar shown
    finally:
        pipe.set_progress_bar_config()
