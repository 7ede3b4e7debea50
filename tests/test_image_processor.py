"""Diff2in1ImageProcessor: loading every input kind, resizing round trips, pictures, exports."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diff2in1.errors import InputError
from diff2in1.imaging.files import load_rgb
from diff2in1.inference.image_processor import (
    Diff2in1ImageProcessor,
    ResizeInfo,
    keep_aspect_size,
    read_normals_16bit_png,
    read_png_16bit,
    resize_image,
    resize_map,
    resize_normals,
)
from diff2in1.viz import colormap, expected_angular_error

H, W = 37, 53


@pytest.fixture()
def proc() -> Diff2in1ImageProcessor:
    return Diff2in1ImageProcessor()


@pytest.fixture()
def rgb8() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def ref_tensor(rgb8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb8).permute(2, 0, 1).double().div(127.5).sub(1).float()


# ----------------------------------------------------------------------------- loading


def test_every_input_kind_gives_the_same_tensor(proc, rgb8, tmp_path):
    path = tmp_path / "pic.png"
    Image.fromarray(rgb8).save(path)
    rgba = np.concatenate([rgb8, np.full((H, W, 1), 7, np.uint8)], axis=-1)
    ref = ref_tensor(rgb8)
    inputs = {
        "pil": Image.fromarray(rgb8),
        "pil_rgba": Image.fromarray(rgba),
        "numpy_uint8": rgb8,
        "numpy_rgba": rgba,
        "numpy_uint16": rgb8.astype(np.uint16) * 257,
        "numpy_float": rgb8 / 255.0,
        "numpy_float16": (rgb8 / 255.0).astype(np.float16),
        "path_str": str(path),
        "path": path,
        "tensor_float": ref.clone(),
        "tensor_uint8": torch.from_numpy(rgb8).permute(2, 0, 1).contiguous(),
        "tensor_bf16_batch": ref[None].to(torch.bfloat16),
    }
    for kind, item in inputs.items():
        (x,) = proc.load(item)
        assert x.dtype == torch.float32 and x.shape == (3, H, W), kind
        tol = 1e-3 if kind == "numpy_float16" else 8e-3 if "bf16" in kind else 1e-6
        assert torch.allclose(x, ref, atol=tol), kind
    out = proc.load(list(inputs.values()))
    assert len(out) == len(inputs)
    batch = proc.load(torch.stack([ref, -ref]))
    assert len(batch) == 2 and torch.equal(batch[1], -ref)


def test_grey_inputs_replicate(proc, rgb8):
    grey = rgb8[..., 0]
    ref = ref_tensor(np.repeat(grey[..., None], 3, axis=-1))
    for item in (grey, grey[..., None], Image.fromarray(grey), Image.fromarray(grey).convert("LA")):
        assert torch.allclose(proc.load(item)[0], ref, atol=1e-6)
    g = ref[:1]
    for t in (g, g[0], g[None]):
        assert torch.allclose(proc.load(t)[0], ref, atol=1e-6)


def test_tensor_in_zero_one_is_taken_as_minus_one_one(proc):
    t = torch.full((3, 4, 4), 0.25)
    assert torch.allclose(proc.load(t)[0], t)  # not rescaled: tensors are [-1, 1]


def test_16bit_grey_png_is_not_white_and_matches_8bit(proc, tmp_path):
    v16 = np.linspace(0, 65535, H * W).round().astype(np.uint16).reshape(H, W)
    v8 = np.rint(v16 / 257.0).astype(np.uint8)
    p16, p8 = tmp_path / "g16.png", tmp_path / "g8.png"
    Image.fromarray(v16).save(p16)
    Image.fromarray(v8).save(p8)
    assert Image.open(p16).mode == "I;16"
    x16, x8 = proc.load([p16, p8])
    assert float(x16.mean()) < 0.2  # a ramp from black to white, mean ~ 0 (white would be 1)
    assert torch.allclose((x16 + 1) / 2, (x8 + 1) / 2, atol=1 / 255)
    assert torch.allclose(x16[0], torch.from_numpy(v16 / 65535.0 * 2 - 1).float(), atol=1e-6)
    # the dataset/predict loader shares the decoder: uint8 out, scaled from 16 bits
    a16, a8 = load_rgb(p16), load_rgb(p8)
    assert a16.dtype == np.uint8 and a16.shape == (H, W, 3) and a16.min() == 0
    assert np.abs(a16.astype(int) - a8.astype(int)).max() <= 1
    # other 16/32-bit grey flavours
    big = Image.fromarray(v16.astype(">u2"))
    assert big.mode == "I;16B"
    wide = Image.fromarray(v16.astype(np.int32))
    assert wide.mode == "I"
    for img in (big, wide):
        assert torch.allclose(proc.load(img)[0], x16, atol=1e-6)
    f = Image.fromarray((v16 / 65535.0).astype(np.float32))
    assert f.mode == "F" and torch.allclose(proc.load(f)[0], x16, atol=1e-6)


def test_modes_jpeg_palette_and_exif(proc, rgb8, tmp_path):
    pal = Image.fromarray(rgb8).quantize(16)
    assert torch.allclose(proc.load(pal)[0], ref_tensor(np.array(pal.convert("RGB"))), atol=1e-6)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png")
    x = proc.load(tmp_path / "p.png")[0]
    assert torch.allclose(x, ref_tensor(np.array(pal.convert("RGBA"))[..., :3]), atol=1e-6)
    bw = Image.fromarray(rgb8[..., 0] > 127)
    assert set(proc.load(bw)[0].unique().tolist()) <= {-1.0, 1.0}
    # JPEG, decoded like PIL does
    Image.fromarray(rgb8).save(tmp_path / "a.jpg", quality=90)
    x = proc.load(tmp_path / "a.jpg")[0]
    assert torch.allclose(x, ref_tensor(np.array(Image.open(tmp_path / "a.jpg").convert("RGB"))), atol=1e-6)
    # EXIF orientation 6 (rotate 90 degrees) is applied for files
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb8).save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert proc.load(tmp_path / "rot.jpg")[0].shape == (3, W, H)
    assert load_rgb(tmp_path / "rot.jpg").shape == (H, W, 3)  # load_rgb keeps its old behaviour


def test_load_rgb_unchanged_for_8bit(rgb8, tmp_path):
    for mode in ("RGB", "RGBA", "L", "LA", "P"):
        img = Image.fromarray(rgb8).convert(mode)
        img.save(tmp_path / f"{mode}.png")
        assert np.array_equal(load_rgb(tmp_path / f"{mode}.png"), np.array(img.convert("RGB"))), mode


def _fake_png_header(path, w: int, h: int) -> None:
    """A PNG claiming w x h grey pixels: the header is enough for PIL's bomb check."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_bad_inputs_raise_input_error_naming_the_input(proc, rgb8, tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    Image.fromarray(rgb8).save(tmp_path / "ok.png")
    good = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    _fake_png_header(tmp_path / "bomb.png", 20000, 20000)
    nan = np.full((4, 4, 3), np.nan, np.float32)
    cases = [
        (str(tmp_path / "missing.png"), "missing.png", "not found"),
        (tmp_path / "junk.png", "junk.png", "cannot decode"),
        (tmp_path / "cut.png", "cut.png", "cannot decode"),
        (tmp_path, str(tmp_path), "directory"),
        ("https://example.com/a.png", "https://example.com/a.png", "URL"),
        (nan, "image", "NaN"),
        (np.full((4, 4, 3), 1.5, np.float32), "image", "values outside [0, 1]"),
        (np.full((4, 4, 3), -0.1), "image", "values outside [0, 1]"),
        (np.zeros((0, 5, 3), np.uint8), "image", "empty"),
        (np.zeros((4, 4, 2), np.uint8), "image", "shape"),
        (np.zeros((1, 4, 4, 3), np.uint8), "image", "shape"),
        (np.zeros((4, 4, 3), np.int32), "image", "dtype"),
        (np.zeros((4, 4, 3), bool), "image", "dtype"),
        (torch.full((3, 4, 4), 1.5), "image", "[-1, 1]"),
        (torch.full((3, 4, 4), -255.0), "image", "[-1, 1]"),
        (torch.full((3, 4, 4), float("inf")), "image", "NaN or infinite"),
        (torch.zeros(4, 4, 4), "image", "channels"),
        (torch.zeros(1, 1, 3, 4, 4), "image", "tensor"),
        (torch.zeros(3, 0, 4), "image", "empty"),
        (torch.zeros(3, 4, 4, dtype=torch.int64), "image", "dtype"),
        (Image.fromarray(np.full((4, 4), 2.0, np.float32)), "image", "values outside [0, 1]"),
        (Image.new("RGB", (0, 3)), "image", "empty"),
        (Image.open(tmp_path / "cut.png"), "image", "cannot decode"),
        ({"not": "an image"}, "image", "unsupported input type"),
    ]
    for item, name, problem in cases:
        with pytest.raises(InputError) as e:
            proc.load(item)
        msg = str(e.value)
        assert name in msg and problem in msg and "\n" not in msg, (msg, name, problem)
    # list position is named for in-memory items, the path for files
    with pytest.raises(InputError, match=r"^image 3: contains NaN"):
        proc.load([rgb8, rgb8, tmp_path / "ok.png", nan])
    with pytest.raises(InputError, match="missing.png: file not found"):
        proc.load([rgb8, tmp_path / "missing.png"])
    with pytest.raises(InputError, match="empty list"):
        proc.load([])
    # size limits: ours on every kind, and PIL's decompression-bomb check on files
    small = Diff2in1ImageProcessor(max_pixels=H * W - 1)
    for item in (rgb8, Image.fromarray(rgb8), ref_tensor(rgb8), tmp_path / "ok.png"):
        with pytest.raises(InputError, match="too large"):
            small.load(item)
    with pytest.raises(InputError, match=r"bomb\.png: image too large"):
        Diff2in1ImageProcessor(max_pixels=10**12).load(tmp_path / "bomb.png")
    _fake_png_header(tmp_path / "big.png", 9000, 9000)  # under PIL's limit, over ours
    with pytest.raises(InputError, match=r"big\.png: image too large \(9000x9000"):
        proc.load(tmp_path / "big.png")
    # preprocess arguments
    x = ref_tensor(rgb8)
    for res in (0, -64, 100, 64.0, True, "512"):
        with pytest.raises(InputError, match="resolution"):
            proc.preprocess(x, res, "squash")
    with pytest.raises(InputError, match="resize_mode"):
        proc.preprocess(x, 64, "crop")
    with pytest.raises(InputError, match="image"):
        proc.preprocess(x[None], 64, "squash")


# ----------------------------------------------------------------------------- resizing


def opencv_bilinear(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float64 reference of cv2.resize INTER_LINEAR on (C, H, W): half-pixel centres, clamped
    borders, no antialias."""

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        i0 = np.floor(f).astype(int)
        t = f - i0
        t[i0 < 0], i0[i0 < 0] = 0.0, 0
        last = i0 >= n_in - 1
        t[last], i0[last] = 0.0, n_in - 1
        return i0, np.minimum(i0 + 1, n_in - 1), t

    y0, y1, ty = axis(a.shape[-2], size[0])
    x0, x1, tx = axis(a.shape[-1], size[1])
    a = a.astype(np.float64)
    rows = a[:, y0] * (1 - ty[:, None]) + a[:, y1] * ty[:, None]
    return rows[..., x0] * (1 - tx) + rows[..., x1] * tx


@pytest.mark.parametrize(
    ("src", "dst"),
    [((480, 640), (512, 512)), ((700, 900), (512, 512)), ((75, 100), (512, 512)), ((37, 53), (300, 211))],
)
def test_resize_image_is_opencv_bilinear(src, dst):
    a = np.random.default_rng(1).uniform(-1, 1, (3, *src)).astype(np.float32)
    ref = opencv_bilinear(a, dst)
    out = resize_image(torch.from_numpy(a), dst)
    assert out.dtype == torch.float32 and out.shape == (3, *dst)
    assert np.abs(out.numpy() - ref).max() < 1e-6
    assert torch.equal(resize_image(torch.from_numpy(a)[None], dst)[0], out)  # batched the same
    if dst[1] < src[1]:  # shrinking: an antialiased resize would be a different recipe
        aa = F.interpolate(torch.from_numpy(a)[None], size=dst, mode="bilinear", antialias=True)[0]
        assert np.abs(aa.numpy() - ref).max() > 1e-2


def ramp(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-0.9, 0.9, h), torch.linspace(-0.8, 0.7, w), indexing="ij")
    return torch.stack([xx, yy, 0.5 * (xx + yy)])  # (3, h, w), linear in x and y


@pytest.mark.parametrize("mode", ["squash", "keep_aspect"])
@pytest.mark.parametrize("size", [(48, 80), (80, 48), (64, 64), (30, 200)])
def test_preprocess_postprocess_round_trip(proc, mode, size):
    x = ramp(*size)
    y, info = proc.preprocess(x, 64, mode)
    assert y.shape == (3, 64, 64) and isinstance(info, ResizeInfo)
    assert info.original_size == size
    if mode == "keep_aspect":
        h, w = keep_aspect_size(size, 64)
        assert max(h, w) == 64 and info.resized_size == (h, w)
        assert abs(h / w - size[0] / size[1]) < 1 / min(h, w)
        assert torch.equal(y[:, h:, :], y[:, h - 1 : h, :].expand(-1, 64 - h, -1))  # edge replication
        assert torch.equal(y[:, :, w:], y[:, :, w - 1 : w].expand(-1, -1, 64 - w))
    else:
        assert info.resized_size == (64, 64)
    back = proc.postprocess(y, info, match_input_resolution=True)
    assert back.shape == (3, *size)
    err = (back - x).abs()
    slope = 1.8 / min(size)  # largest change per pixel of the ramp
    b = -(-max(size) // 64)  # border rows/columns touched by clamped sampling when enlarging back
    assert float(err[:, b:-b, b:-b].max()) < 1e-5  # bilinear of a linear ramp is exact inside
    assert float(err.max()) <= b * slope  # borders: clamped sampling, at most one model pixel's slope
    model = proc.postprocess(y[None], info, match_input_resolution=False)
    assert model.shape == (1, 3, *info.resized_size)
    const = torch.full((3, *size), 0.3)
    c, info_c = proc.preprocess(const, 64, mode)
    assert torch.allclose(proc.postprocess(c[None], info_c)[0], const, atol=1e-6)


def test_keep_aspect_sizes_and_normal_maps(proc):
    assert keep_aspect_size((480, 640), 512) == (384, 512)
    assert keep_aspect_size((640, 480), 512) == (512, 384)
    assert keep_aspect_size((1, 1000), 64) == (1, 64)
    assert keep_aspect_size((100, 300), 64) == (21, 64)  # 21.33 -> 21
    assert keep_aspect_size((100, 296), 64) == (22, 64)  # 21.62 -> 22
    n = F.normalize(torch.randn(2, 3, 64, 64), dim=1)
    info = ResizeInfo((90, 120), (48, 64), 64, "keep_aspect")
    out = proc.postprocess(n, info, renormalize=True)
    assert out.shape == (2, 3, 90, 120)
    assert torch.allclose(out.norm(dim=1), torch.ones(2, 90, 120), atol=1e-5)
    assert resize_normals(n[0], (30, 30)).shape == (3, 30, 30)
    k = torch.rand(2, 1, 64, 64)
    assert resize_map(k, (64, 64)) is k and resize_map(k, (10, 7)).shape == (2, 1, 10, 7)
    with pytest.raises(ValueError, match="maps"):
        proc.postprocess(torch.zeros(3, 32, 32), info)


# ----------------------------------------------------------------------------- pictures


def test_visualize_normals(proc):
    n = torch.zeros(2, 3, 5, 6)
    n[:, 2] = 1.0
    pics = proc.visualize_normals(n)
    assert len(pics) == 2 and pics[0].mode == "RGB" and pics[0].size == (6, 5)
    assert np.array(pics[0])[0, 0].tolist() == [128, 128, 255]
    same = proc.visualize_normals(n[0].permute(1, 2, 0).numpy())
    assert len(same) == 1 and np.array_equal(np.array(same[0]), np.array(pics[0]))
    with pytest.raises(InputError, match="normals"):
        proc.visualize_normals(np.zeros((5, 6, 2)))


@pytest.mark.parametrize("height", [128, 512])
def test_uncertainty_colour_bar(proc, height):
    width = height * 5 // 4
    kappa = torch.rand(2, 1, height, width) * 10 + 0.1
    pics = proc.visualize_uncertainty(kappa, colorbar=True, vmax_deg=45)
    assert len(pics) == 2
    pic = np.array(pics[0])
    assert pic.shape[0] == height and pic.shape[1] > width + 20
    deg = np.degrees(expected_angular_error(kappa[0, 0].numpy()))
    assert np.array_equal(pic[:, :width], colormap(deg, 45))  # the map itself
    bar = pic[:, width:]
    assert len(np.unique(bar.reshape(-1, 3), axis=0)) > 30  # a colour ramp, not blank
    assert (bar.sum(-1) < 150).sum() > 50  # dark text/ticks on white
    plain = proc.visualize_uncertainty(kappa[0, 0].numpy(), colorbar=False, vmax_deg=45)[0]
    assert plain.size == (width, height) and np.array_equal(np.array(plain), pic[:, :width])
    degs = proc.visualize_uncertainty(deg, colorbar=False, vmax_deg=45, input_kind="degrees")[0]
    assert np.array_equal(np.array(degs), np.array(plain))
    auto = proc.visualize_uncertainty(np.full((height, width), 20.0), input_kind="degrees")[0]
    assert auto.width > width  # automatic scale (20 -> a round 20 degrees)


def test_side_by_side(proc):
    a, b = Image.new("RGB", (30, 20), "red"), Image.new("L", (10, 40), 0)
    out = proc.side_by_side([a, b])
    assert out.height >= 40 and out.width >= 60 + 10
    labelled = proc.side_by_side([a, b], labels=["image", "normals"])
    assert labelled.height > out.height
    with pytest.raises(InputError, match="labels"):
        proc.side_by_side([a, b], labels=["one"])


# ----------------------------------------------------------------------------- exports


def test_export_16bit_png_round_trip(proc, tmp_path):
    n = F.normalize(torch.randn(3, 17, 23), dim=0).permute(1, 2, 0).numpy()
    path = proc.export_normals_16bit_png(n, tmp_path / "n16.png")
    assert [p.name for p in tmp_path.iterdir()] == ["n16.png"]  # atomic: no temp file left
    back = read_normals_16bit_png(path)
    assert back.shape == (17, 23, 3) and back.dtype == np.float32
    assert np.abs(back - n).max() <= 1 / 65535 + 1e-6
    raw = read_png_16bit(path)
    assert raw.dtype == np.uint16 and np.array_equal(raw, np.rint((n.astype(np.float64) + 1) / 2 * 65535))
    with Image.open(path) as img:  # a valid PNG for other readers (PIL keeps the high byte)
        assert img.size == (23, 17) and np.array_equal(np.array(img.convert("RGB")), raw >> 8)
    # tensor input (H, W, 3) works the same
    proc.export_normals_16bit_png(torch.from_numpy(n), tmp_path / "t.png")
    assert np.array_equal(read_png_16bit(tmp_path / "t.png"), raw)


def test_png_decoder_reads_other_encoders(tmp_path):
    rng = np.random.default_rng(2)
    smooth = np.cumsum(rng.integers(0, 3, (19, 31, 3)), axis=1).astype(np.uint8)  # PIL picks filters
    for name, arr in [
        ("rgb", smooth),
        ("grey", smooth[..., 0]),
        ("rgba", np.dstack([smooth, smooth[..., :1]])),
    ]:
        Image.fromarray(arr).save(tmp_path / f"{name}.png")
        got = read_png_16bit(tmp_path / f"{name}.png")
        assert np.array_equal(got.reshape(arr.shape), arr), name
    with pytest.raises(InputError, match="not a PNG"):
        (tmp_path / "x.png").write_bytes(b"GIF89a")
        read_png_16bit(tmp_path / "x.png")


def test_export_npy(proc, tmp_path):
    k = torch.rand(1, 5, 7)
    path = proc.export_npy(k, tmp_path / "k.npy")
    assert np.array_equal(np.load(path), k.numpy())
    assert [p.name for p in tmp_path.iterdir()] == ["k.npy"]
