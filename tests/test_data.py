"""Dataset layout (docs/method.md section 5): writing, reading, pairing by stem, validation errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diff2in1.data import (
    NormalsDataset,
    decode_normal_png,
    encode_normal_png,
    list_ids,
    read_sample,
    write_sample,
)
from diff2in1.data.dataset import resize_nearest
from diff2in1.errors import InputError
from diff2in1.imaging.files import atomic_write

H, W = 6, 8


def unit_normals(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    n = rng.normal(size=(h, w, 3)).astype(np.float32)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def make_sample(rng: np.random.Generator, h: int = H, w: int = W):
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    normal = unit_normals(rng, h, w)
    mask = rng.random((h, w)) > 0.2
    return image, normal, mask


@pytest.fixture
def tiny(tmp_path: Path):
    """Three labelled samples a, b, c; returns (root, {id: (image, normal, mask, caption)})."""
    rng = np.random.default_rng(0)
    data = {}
    for sid in ("a", "b", "c"):
        image, normal, mask = make_sample(rng)
        caption = f"caption of {sid}"
        write_sample(tmp_path, "train", sid, image, normal, caption, mask=mask)
        data[sid] = (image, normal, mask, caption)
    return tmp_path, data


def no_warnings_dataset(*args, **kwargs) -> NormalsDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return NormalsDataset(*args, **kwargs)


def test_round_trip_read_sample_and_dataset(tiny):
    root, data = tiny
    assert list_ids(root, "train") == ["a", "b", "c"]
    for sid, (image, normal, mask, caption) in data.items():
        s = read_sample(root, "train", sid)
        np.testing.assert_array_equal(s.image, image)
        np.testing.assert_array_equal(s.mask, mask)
        np.testing.assert_array_equal(s.normal[mask], normal[mask])  # float copy: exact
        assert np.all(s.normal[~mask] == 0)
        assert s.caption == caption
        p = read_sample(root, "train", sid, float_normals=False)  # 8-bit PNG
        np.testing.assert_array_equal(p.mask, mask)
        assert np.abs(p.normal[mask] - normal[mask]).max() <= 1 / 255 * 2

    ds = no_warnings_dataset(root, "train", size=None)
    assert len(ds) == 3
    for i, sid in enumerate(["a", "b", "c"]):
        item = ds[i]
        image, normal, mask, caption = data[sid]
        assert item["id"] == sid and item["index"] == i and item["caption"] == caption
        assert item["image"].dtype == torch.float32 and item["image"].shape == (3, H, W)
        expected = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1
        torch.testing.assert_close(item["image"], expected)
        assert item["image"].min() >= -1 and item["image"].max() <= 1
        assert item["mask"].dtype == torch.bool and item["mask"].shape == (1, H, W)
        np.testing.assert_array_equal(item["mask"][0].numpy(), mask)
        np.testing.assert_array_equal(item["normal"].permute(1, 2, 0).numpy()[mask], normal[mask])


def test_dataloader_collates(tiny):
    root, _ = tiny
    batch = next(iter(torch.utils.data.DataLoader(NormalsDataset(root, "train", size=(4, 4)), batch_size=2)))
    assert batch["image"].shape == (2, 3, 4, 4) and batch["mask"].shape == (2, 1, 4, 4)
    assert batch["id"] == ["a", "b"] and batch["index"].tolist() == [0, 1]


def test_pairs_by_stem_not_by_sorted_order(tiny):
    root, data = tiny
    # A missing normal in the middle would shift every later pair if files were zipped.
    (root / "train" / "norm" / "b.png").unlink()
    (root / "train" / "norm_npy" / "b.npy").unlink()
    with pytest.raises(InputError, match=r"b\.png.*missing") as err:
        NormalsDataset(root, "train", size=None)
    assert "\n" not in str(err.value)

    with pytest.warns(UserWarning, match="skipped 1 of 3") as rec:
        ds = NormalsDataset(root, "train", size=None, on_error="skip")
    assert len(rec) == 1
    assert [sid for sid, _ in ds.skipped] == ["b"] and ds.ids == ["a", "c"]
    item = ds[1]
    assert item["id"] == "c"
    mask = data["c"][2]
    np.testing.assert_array_equal(item["normal"].permute(1, 2, 0).numpy()[mask], data["c"][1][mask])


def test_extra_image_without_normal_is_named(tiny):
    root, _ = tiny
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "train" / "img" / "extra.png")
    with pytest.raises(InputError, match="extra"):
        NormalsDataset(root, "train")
    # An unpaired normal map (no image) is a mistake too (a lost image): named, or skipped and listed.
    (root / "train" / "img" / "extra.png").unlink()
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(root / "train" / "norm" / "orphan.png")
    with pytest.raises(InputError, match="orphan.png: normal map without an image"):
        NormalsDataset(root, "train")
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = NormalsDataset(root, "train", on_error="skip")
    assert ds.ids == ["a", "b", "c"] and ds.skipped[0][0] == "orphan"


def test_missing_caption_gives_empty_string_and_one_warning(tiny):
    root, _ = tiny
    (root / "train" / "caption" / "a.txt").unlink()
    (root / "train" / "caption" / "c.txt").unlink()
    with pytest.warns(UserWarning, match="2 of 3") as rec:
        ds = NormalsDataset(root, "train", size=None)
    assert len(rec) == 1
    assert [ds[i]["caption"] for i in range(3)] == ["", "caption of b", ""]
    assert read_sample(root, "train", "a").caption == ""


def test_grayscale_normal_png_is_rejected(tiny):
    root, _ = tiny
    (root / "train" / "norm_npy" / "b.npy").unlink()
    bad = root / "train" / "norm" / "b.png"
    Image.fromarray(np.full((H, W), 100, np.uint8)).save(bad)
    with pytest.raises(InputError, match=r"norm/b\.png.*3 channels.*mode L"):
        NormalsDataset(root, "train")
    with pytest.raises(InputError, match=r"b\.png"):
        read_sample(root, "train", "b")
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = NormalsDataset(root, "train", on_error="skip")
    assert ds.ids == ["a", "c"] and "mode L" in ds.skipped[0][1]


def test_size_mismatch_is_rejected(tiny):
    root, _ = tiny
    Image.fromarray(np.full((H + 1, W, 3), 128, np.uint8)).save(root / "train" / "norm" / "c.png")
    # The float copy still matches; "auto" reads it, the PNG path must notice.
    assert len(no_warnings_dataset(root, "train", float_normals="auto")) == 3
    with pytest.raises(InputError, match=r"norm/c\.png.*does not match.*img/c\.png"):
        NormalsDataset(root, "train", float_normals=False)
    np.save(root / "train" / "norm_npy" / "c.npy", np.zeros((H, W + 2, 3), np.float32))
    with pytest.raises(InputError, match=r"norm_npy/c\.npy.*does not match"):
        NormalsDataset(root, "train")


def test_unreadable_png_is_rejected(tiny):
    root, _ = tiny
    (root / "train" / "img" / "b.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match=r"img/b\.png.*not a readable image"):
        NormalsDataset(root, "train")


def test_empty_or_missing_split(tmp_path):
    with pytest.raises(InputError, match="no images in"):
        NormalsDataset(tmp_path, "train")
    (tmp_path / "test" / "img").mkdir(parents=True)
    with pytest.raises(InputError, match=r"no images in .*test"):
        NormalsDataset(tmp_path, "test")


def test_float_normals_modes(tiny):
    root, data = tiny
    # Make the float copy distinguishable from the PNG.
    n = data["a"][1].copy()
    n[..., :] = (0.0, 0.6, 0.8)
    np.save(root / "train" / "norm_npy" / "a.npy", n)
    auto = no_warnings_dataset(root, "train", size=None)[0]["normal"]
    torch.testing.assert_close(auto[:, 0, 0], torch.tensor([0.0, 0.6, 0.8]))
    png = no_warnings_dataset(root, "train", size=None, float_normals=False)[0]["normal"]
    assert not torch.allclose(png[:, 0, 0], torch.tensor([0.0, 0.6, 0.8]), atol=0.02)
    (root / "train" / "norm_npy" / "b.npy").unlink()
    with pytest.raises(InputError, match=r"norm_npy/b\.npy.*missing"):
        NormalsDataset(root, "train", float_normals=True)


def test_unlabelled_images(tmp_path):
    rng = np.random.default_rng(1)
    write_sample(tmp_path, "syn", "r0", rng.uniform(-1, 1, (3, H, W)).astype(np.float32), None, "a room")
    assert not (tmp_path / "syn" / "norm").exists()
    with pytest.raises(InputError, match="missing"):
        NormalsDataset(tmp_path, "syn")
    item = no_warnings_dataset(tmp_path, "syn", size=(4, 4), labels=False)[0]
    assert item["caption"] == "a room" and item["image"].shape == (3, 4, 4)
    assert not item["mask"].any() and not item["normal"].any()


def test_resize_image_bilinear_normals_nearest(tiny):
    root, data = tiny
    item = no_warnings_dataset(root, "train", size=(12, 5), float_normals=False, resize="nearest")[0]
    assert item["image"].shape == (3, 12, 5) and item["normal"].shape == (3, 12, 5)
    png = Image.open(root / "train" / "norm" / "a.png")
    ref = np.asarray(png.resize((5, 12), resample=Image.NEAREST))  # what the reference loader does
    expected, expected_mask = decode_normal_png(ref)
    np.testing.assert_array_equal(item["mask"][0].numpy(), expected_mask)
    np.testing.assert_allclose(item["normal"].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    # Nearest keeps float normals unit length where valid.
    n = resize_nearest(data["a"][1], (13, 3))
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1, atol=1e-6)


def test_png_encode_decode():
    rng = np.random.default_rng(2)
    n = unit_normals(rng, 32, 32)
    mask = rng.random((32, 32)) > 0.3
    pix = encode_normal_png(n, mask)
    assert pix.dtype == np.uint8 and pix.shape == (32, 32, 3)
    dec, dmask = decode_normal_png(pix)
    np.testing.assert_array_equal(dmask, mask)
    assert np.abs(dec[mask] - n[mask]).max() <= 1 / 255 * 2
    assert np.all(pix[~mask] == 0) and np.all(dec[~mask] == 0)
    # A valid vector must never encode to the invalid (0, 0, 0).
    odd = np.full((1, 2, 3), -1.0, np.float32)
    odd_pix = encode_normal_png(odd)
    assert odd_pix.any(axis=-1).all()
    assert decode_normal_png(odd_pix)[1].all()
    # Default mask: zero and non-finite vectors are invalid.
    n2 = n[:1, :3].copy()
    n2[0, 0] = 0
    n2[0, 1, 0] = np.nan
    assert encode_normal_png(n2).any(axis=-1).tolist() == [[False, False, True]]


def test_atomic_writes_leave_no_temp_files(tiny, tmp_path):
    root, _ = tiny
    hidden = [p for p in root.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert hidden == []

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    target = tmp_path / "x" / "y.png"
    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert list(target.parent.iterdir()) == []
    # An interrupted overwrite keeps the old file intact.
    old = (root / "train" / "caption" / "a.txt").read_bytes()
    with pytest.raises(RuntimeError):
        atomic_write(root / "train" / "caption" / "a.txt", boom)
    assert (root / "train" / "caption" / "a.txt").read_bytes() == old


def test_write_sample_float_image_and_kappa(tmp_path):
    rng = np.random.default_rng(3)
    img = np.zeros((H, W, 3), np.float32)
    img[0, 0] = (-1.0, 0.0, 1.0)
    normal = torch.from_numpy(unit_normals(rng)).permute(2, 0, 1)  # 3xHxW tensor
    kappa = rng.uniform(1, 100, (H, W)).astype(np.float32)
    write_sample(tmp_path, "syn", "r1", img, normal, "two\nlines", kappa=kappa)
    s = read_sample(tmp_path, "syn", "r1")
    assert s.image[0, 0].tolist() == [0, 128, 255]
    assert s.caption == "two lines"
    np.testing.assert_array_equal(s.kappa, kappa)
    np.testing.assert_array_equal(s.normal, normal.permute(1, 2, 0).numpy())
    with pytest.raises(InputError, match="does not match|normal map is"):
        write_sample(tmp_path, "syn", "r2", img, np.zeros((H + 1, W, 3)), "x")


def test_research_resize_mode(tmp_path):
    # Columns with a linear x-gradient and one invalid pixel: bilinear values, conservative mask.
    h, w = 2, 4
    normal = np.zeros((h, w, 3), np.float32)
    normal[..., 0] = np.linspace(-0.6, 0.6, w)[None]
    normal[..., 2] = 0.8
    mask = np.ones((h, w), bool)
    mask[:, 3] = False
    write_sample(tmp_path, "train", "g", np.zeros((h, w, 3), np.uint8), normal, "g", mask=mask)
    item = no_warnings_dataset(tmp_path, "train", size=(h, 8), resize="research")[0]
    got_mask = item["mask"][0, 0].numpy()
    # Output column j samples source x = (j + 0.5) / 2 - 0.5 (half-pixel centres, clamped at 0).
    src = np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, w - 1)
    assert got_mask.tolist() == (np.ceil(src) < 3).tolist()
    expected = np.interp(src, np.arange(w), normal[0, :, 0])
    got = item["normal"][0, 0].numpy()
    np.testing.assert_allclose(got[got_mask], expected[got_mask], atol=1e-6)
    assert np.all(got[~got_mask] == 0)
    # The image is bilinear too, without requantisation.
    assert item["image"].shape == (3, h, 8)
    with pytest.raises(InputError, match="resize"):
        NormalsDataset(tmp_path, "train", resize="bicubic")
