"""Point clouds: a plane in the depth map comes back from the PLY file planar, with its normal."""

from __future__ import annotations

import numpy as np
import pytest

from diff2in1.errors import InputError
from diff2in1.inference.point_cloud import Intrinsics, backproject, point_cloud, read_ply, write_ply


def _plane_depth(k: Intrinsics, h: int, w: int, n: np.ndarray, offset: float) -> np.ndarray:
    """Exact z-depth of the plane n . X = offset seen through pixel centres (ray casting)."""
    u = (np.arange(w) + 0.5 - k.cx) / k.fx
    v = (np.arange(h) + 0.5 - k.cy) / k.fy
    rays = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((h, w))), -1)  # z = 1
    return offset / (rays @ n)


def test_a_tilted_plane_comes_back_planar_with_its_normal(tmp_path):
    h, w = 48, 64
    k = Intrinsics.from_fov(h, w, 60.0)
    n_into = np.array([0.3, -0.2, 1.0])
    n_into /= np.linalg.norm(n_into)  # into the surface: n . ray > 0, as the package's normals
    depth = _plane_depth(k, h, w, n_into, 2.5)
    assert depth.min() > 0
    normals = np.broadcast_to(n_into, (h, w, 3)).astype(np.float32)
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.ones((h, w), bool)
    mask[:5] = False
    write_ply(tmp_path / "p.ply", point_cloud(depth, normals, image, k, mask=mask))

    cloud = read_ply(tmp_path / "p.ply")
    assert len(cloud) == mask.sum()
    centred = cloud.points - cloud.points.mean(0)
    _, s, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    assert s[2] / s[0] < 1e-5  # planar to float32 precision
    fitted = vt[2] * np.sign(vt[2] @ n_into)
    assert np.degrees(np.arccos(np.clip(fitted @ n_into, -1, 1))) < 0.01
    # every point lies on n . X = 2.5 (metres), its colour and its normal flipped toward the camera
    assert np.abs(cloud.points @ n_into - 2.5).max() < 1e-5
    np.testing.assert_allclose(cloud.normals, -np.broadcast_to(n_into, cloud.normals.shape), atol=1e-6)
    np.testing.assert_array_equal(cloud.colors, image[mask])
    assert (cloud.normals @ np.array([0.0, 0.0, 1.0]) < 0).all()  # facing the camera


def test_backprojection_inverts_the_pinhole_projection():
    k = Intrinsics.nyu(480, 640)
    depth = np.full((480, 640), 3.0)
    pts = backproject(depth, k)
    u = pts[..., 0] / pts[..., 2] * k.fx + k.cx - 0.5
    v = pts[..., 1] / pts[..., 2] * k.fy + k.cy - 0.5
    np.testing.assert_allclose(u, np.broadcast_to(np.arange(640.0), (480, 640)), atol=1e-9)
    np.testing.assert_allclose(v, np.broadcast_to(np.arange(480.0)[:, None], (480, 640)), atol=1e-9)
    assert Intrinsics.nyu(240, 320).fx == pytest.approx(518.8579 / 2)


def test_invalid_pixels_are_left_out_and_bad_arguments_are_one_line(tmp_path):
    depth = np.array([[1.0, 0.0], [np.nan, 20.0]])
    cloud = point_cloud(depth, intrinsics=Intrinsics(1, 1, 1, 1), max_depth=10.0)
    assert len(cloud) == 1 and cloud.colors is None and cloud.normals is None
    write_ply(tmp_path / "one.ply", cloud)
    assert read_ply(tmp_path / "one.ply").points.tolist() == [[-0.5, -0.5, 1.0]]
    with pytest.raises(InputError, match="intrinsics"):
        Intrinsics.parse("500,500,320")
    with pytest.raises(InputError, match="fov"):
        Intrinsics.from_fov(10, 10, 180.0)
    with pytest.raises(InputError, match="normals"):
        point_cloud(np.ones((4, 4)), normals=np.ones((4, 3, 3)))
    (tmp_path / "bad.ply").write_bytes(b"not a ply")
    with pytest.raises(InputError, match="not a PLY"):
        read_ply(tmp_path / "bad.ply")
