"""Procedural scenes: geometry and the normal convention, determinism, the dataset writer."""

from __future__ import annotations

import time

import numpy as np
import pytest

from diff2in1.data import NormalsDataset, make_scenes, read_sample
from diff2in1.data.scenes import (
    CEILING,
    FIRST_OBJECT,
    FLOOR,
    WALL_X0,
    WALL_Z1,
    WINDOW,
    Box,
    Camera,
    Material,
    Room,
    SceneSpec,
    Sphere,
    Window,
    render,
    render_scene,
)

GRAY = Material("solid", (0.5, 0.5, 0.5), "gray")


def empty_room(window: Window | None = None) -> Room:
    return Room(-2.0, 2.0, -2.0, 8.0, 3.0, GRAY, GRAY, GRAY, window)


LEVEL = Camera((0.0, 1.5, 0.0), yaw=0.0, pitch=0.0, fov_deg=90.0)
N = 33  # odd: the centre pixel's ray is the optical axis


def test_convention_floor_wall_right_wall_level_camera():
    """Stored normals: camera frame x right, y down, z forward, pointing away from the camera."""
    s = render(SceneSpec(empty_room(), shadows=False), LEVEL, N)
    c = N // 2
    assert s.surface[N - 1, c] == FLOOR
    np.testing.assert_allclose(s.normal[N - 1, c], (0, 1, 0), atol=1e-6)  # -> PNG (128, 255, 128)
    assert s.surface[0, c] == CEILING
    np.testing.assert_allclose(s.normal[0, c], (0, -1, 0), atol=1e-6)
    assert s.surface[c, c] == WALL_Z1  # the wall facing the camera
    np.testing.assert_allclose(s.normal[c, c], (0, 0, 1), atol=1e-6)
    assert s.surface[c, N - 1] == WALL_X0  # world -x is image right for yaw 0
    np.testing.assert_allclose(s.normal[c, N - 1], (1, 0, 0), atol=1e-6)
    np.testing.assert_allclose(s.normal[c, 0], (-1, 0, 0), atol=1e-6)
    assert s.depth[c, c] == pytest.approx(8.0, abs=1e-5)


def test_pitched_camera_floor_normal_is_rotated_up_vector():
    pitch = np.radians(-20.0)  # looking down
    cam = Camera((0.0, 1.5, 0.0), yaw=0.3, pitch=pitch, fov_deg=90.0)
    s = render(SceneSpec(empty_room(), shadows=False), cam, N)
    floor = s.surface == FLOOR
    assert floor.sum() > 50
    # Looking down by 20 deg, the floor's into-surface normal (world down) in camera coordinates:
    expected = np.array([0.0, np.cos(pitch), np.sin(-pitch)])
    np.testing.assert_allclose(s.normal[floor], np.broadcast_to(expected, s.normal[floor].shape), atol=1e-6)


def test_sphere_normal_is_radial_and_on_the_right_side():
    center, radius = np.array([-0.6, 1.2, 3.0]), 0.5
    spec = SceneSpec(empty_room(), [Sphere(tuple(center), radius, GRAY)], shadows=False)
    s = render(spec, LEVEL, N)
    hit = s.surface == FIRST_OBJECT
    assert hit.sum() > 10
    rows, cols = np.nonzero(hit)
    assert cols.mean() > N / 2  # world -x appears on the image right
    # Independent ray / sphere intersection for every sphere pixel.
    f = (N / 2) / np.tan(np.radians(45.0))
    d_cam = np.stack([(cols + 0.5 - N / 2) / f, (rows + 0.5 - N / 2) / f, np.ones_like(cols, float)], 1)
    d_cam /= np.linalg.norm(d_cam, axis=1, keepdims=True)
    d_world = d_cam * np.array([-1.0, -1.0, 1.0])  # yaw 0: right = -x, down = -y, forward = +z
    oc = np.array(LEVEL.position) - center
    b = d_world @ oc
    t = -b - np.sqrt(b * b - (oc @ oc - radius**2))
    p = np.array(LEVEL.position) + t[:, None] * d_world
    outward_world = (p - center) / radius
    outward_cam = outward_world * np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(s.normal[rows, cols], -outward_cam, atol=1e-5)
    np.testing.assert_allclose(s.depth[rows, cols], t * d_cam[:, 2], rtol=1e-5)


def test_rotated_box_face_normal():
    yaw = np.radians(30.0)
    box = Box((0.0, 1.5, 3.0), (0.5, 0.5, 0.5), yaw, GRAY)
    s = render(SceneSpec(empty_room(), [box], shadows=False), LEVEL, N)
    c = N // 2
    assert s.surface[c, c] == FIRST_OBJECT
    # The hit face is the box's local -z face: world normal Ry(yaw) (0, 0, -1) = (-sin, 0, -cos).
    outward_cam = np.array([-np.sin(yaw), 0.0, -np.cos(yaw)]) * np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(s.normal[c, c], -outward_cam, atol=1e-6)


def test_window_pixels_are_invalid():
    win = Window(WALL_Z1, -0.5, 0.5, 1.0, 2.0)
    s = render(SceneSpec(empty_room(win), shadows=False), LEVEL, N, invalid_border=2)
    c = N // 2
    assert s.surface[c, c] == WINDOW and not s.mask[c, c]
    np.testing.assert_array_equal(s.normal[~s.mask], 0)
    assert not s.mask[:2].any() and not s.mask[:, -2:].any()
    assert "a window" in s.caption


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_random_scenes_valid_normals(seed):
    s = render_scene(seed, (40, 48))
    assert s.image.shape == (40, 48, 3) and s.image.dtype == np.uint8
    assert s.normal.shape == (40, 48, 3) and s.normal.dtype == np.float32
    assert s.mask.shape == (40, 48) and s.mask.dtype == bool and s.mask.mean() > 0.5
    np.testing.assert_allclose(np.linalg.norm(s.normal[s.mask], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(s.normal[~s.mask], 0)
    assert s.caption.startswith(("a room with", "an empty room"))


def test_visible_normals_face_away_from_camera():
    from diff2in1.data.scenes import random_spec

    for seed in range(4):
        spec, cam = random_spec(np.random.default_rng(seed))
        s = render(spec, cam, 32)
        rays = cam.rays_camera(32, 32).reshape(32, 32, 3)
        cos = np.einsum("hwc,hwc->hw", s.normal, rays)[s.mask]
        assert (cos > 0).all()


def test_some_scenes_have_invalid_pixels_and_captions_vary():
    scenes = [render_scene(seed, 32) for seed in range(12)]
    assert any((~s.mask).any() for s in scenes)
    assert len({s.caption for s in scenes}) > 6


def test_deterministic_per_seed():
    a, b, c = render_scene(7, 32), render_scene(7, 32), render_scene(8, 32)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.normal, b.normal)
    assert a.caption == b.caption
    assert not np.array_equal(a.image, c.image)


def test_make_scenes_layout_resume_and_stable_ids(tmp_path):
    root = tmp_path / "syn"
    assert make_scenes(root, 3, 2, 24, seed=5, progress=False) == {"written": 5, "skipped": 0}
    for split, n in (("train", 3), ("test", 2)):
        for sub, ext in (("img", "png"), ("norm", "png"), ("norm_npy", "npy"), ("caption", "txt")):
            names = sorted(p.name for p in (root / split / sub).iterdir())
            assert names == [f"scene_{i:06d}.{ext}" for i in range(n)]
    mtime = (root / "train" / "img" / "scene_000001.png").stat().st_mtime_ns
    assert make_scenes(root, 3, 2, 24, seed=5, progress=False) == {"written": 0, "skipped": 5}
    assert (root / "train" / "img" / "scene_000001.png").stat().st_mtime_ns == mtime
    # A deleted file is re-made on resume.
    (root / "test" / "norm" / "scene_000001.png").unlink()
    assert make_scenes(root, 3, 2, 24, seed=5, progress=False) == {"written": 1, "skipped": 4}

    # Sample i does not depend on how many samples are made; splits differ.
    other = tmp_path / "other"
    make_scenes(other, 2, 0, 24, seed=5, progress=False)
    for f in ("img/scene_000001.png", "norm_npy/scene_000001.npy", "caption/scene_000001.txt"):
        assert (other / "train" / f).read_bytes() == (root / "train" / f).read_bytes()
    assert (root / "train/img/scene_000000.png").read_bytes() != (
        root / "test/img/scene_000000.png"
    ).read_bytes()

    s = read_sample(root, "train", "scene_000002")
    np.testing.assert_allclose(np.linalg.norm(s.normal[s.mask], axis=-1), 1.0, atol=1e-5)
    ds = NormalsDataset(root, "test", size=16)
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["caption"]


def test_speed_report(capsys):
    render_scene(0, 128)  # warm-up
    n, t0 = 10, time.perf_counter()
    for seed in range(n):
        render_scene(seed, 128)
    rate = n / (time.perf_counter() - t0)
    with capsys.disabled():
        print(f"\n[scenes] {rate:.1f} scenes/s at 128x128")


def test_objects_too_large_for_the_room_are_skipped_not_fatal():
    # Seed 0's train scenes 251 and 1396 once drew objects with no room in front of the camera.
    from diff2in1.data.scenes import render_scene, scene_seed

    for index in (251, 1396):
        scene = render_scene(np.random.default_rng(scene_seed(0, "train", index)), 32)
        assert scene.image.shape == (32, 32, 3)
