"""Procedural scenes' depth and class maps; their images and normals unchanged by them."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from diff2in1.data import make_scenes, read_sample
from diff2in1.data.labels import CLASSES_FILE, IGNORE_INDEX, read_class_list, read_depth, read_seg
from diff2in1.data.scenes import (
    FIRST_OBJECT,
    SCENE_CLASS_NAMES,
    WALL_Z1,
    WINDOW,
    Camera,
    Material,
    Room,
    SceneSpec,
    Sphere,
    Window,
    render,
    render_scene,
)

# sha256 (first 16 hex digits) of dtype + shape + pixel bytes of the files make_scenes(root, 4, 2,
# size=(48, 64), seed=3) wrote before the scenes learned depth and class maps. The shipped
# backbone and every normal number were made from these scenes: they must never change.
GOLDEN = {
    "test/img/scene_000000.png": "85e8c6139627fc9b",
    "test/img/scene_000001.png": "2a71ce209006ac0c",
    "test/norm/scene_000000.png": "33a57711cc47987c",
    "test/norm/scene_000001.png": "27684c7e70c66706",
    "test/norm_npy/scene_000000.npy": "ecd926b106bc09ad",
    "test/norm_npy/scene_000001.npy": "d3a741d95edc8117",
    "train/img/scene_000000.png": "ebd3dff40169428c",
    "train/img/scene_000001.png": "dc1009bae80dd0cf",
    "train/img/scene_000002.png": "fd6dd73c32ce41f6",
    "train/img/scene_000003.png": "93ac9f224da7c233",
    "train/norm/scene_000000.png": "76d2e0eb4cc6003c",
    "train/norm/scene_000001.png": "9b18e4415d3397c9",
    "train/norm/scene_000002.png": "cf0deb70526fafe8",
    "train/norm/scene_000003.png": "47d8b80ab4618edc",
    "train/norm_npy/scene_000000.npy": "87bf037c05503bc6",
    "train/norm_npy/scene_000001.npy": "f609867b4b19dfc9",
    "train/norm_npy/scene_000002.npy": "2b86e8e0bb236da5",
    "train/norm_npy/scene_000003.npy": "8074885fbd4ced51",
}


def _array_hash(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 4, 2, size=(48, 64), seed=3, progress=False)
    return root


def test_images_and_normals_are_the_ones_made_before_depth_and_classes(scenes):
    for rel, want in GOLDEN.items():
        p = scenes / rel
        a = np.load(p) if p.suffix == ".npy" else np.asarray(Image.open(p))
        assert _array_hash(a) == want, rel


def test_depth_and_class_files_match_the_renderer(scenes):
    from diff2in1.data.scenes import render_scene, scene_seed

    classes = read_class_list(scenes / CLASSES_FILE)
    assert classes.names == SCENE_CLASS_NAMES
    seen = set()
    for split, n in (("train", 4), ("test", 2)):
        for i in range(n):
            sid = f"scene_{i:06d}"
            scene = render_scene(np.random.default_rng(scene_seed(3, split, i)), (48, 64))
            depth = read_depth(scenes / split / "depth" / f"{sid}.npy")
            seg = read_seg(scenes / split / "seg" / f"{sid}.png", len(classes))
            window = scene.surface == WINDOW
            np.testing.assert_array_equal(depth[~window], scene.depth[~window])  # exact, float32
            assert (depth[window] == 0).all() and (seg[window] == IGNORE_INDEX).all()
            assert (depth[~window] > 0.1).all() and (depth[~window] < 10).all()
            assert (seg[~window] < len(classes)).all()
            seen |= set(np.unique(seg[~window]).tolist())
            assert read_sample(scenes, split, sid).depth is None  # only on request
            s = read_sample(scenes, split, sid, all_labels=True)
            np.testing.assert_array_equal(s.depth, depth)
            np.testing.assert_array_equal(s.classes, seg)
    assert {0, 2} <= seen and seen & {3, 4, 5}  # floor, wall and at least one object kind


def test_class_map_by_surface_kind_and_z_depth():
    grey = Material("solid", (0.5, 0.5, 0.5), "gray")
    room = Room(-2.0, 2.0, -2.0, 8.0, 3.0, grey, grey, grey, Window(WALL_Z1, 0.6, 1.2, 1.0, 2.0))
    ball = Sphere((0.0, 1.5, 4.0), 0.5, grey)
    cam = Camera((0.0, 1.5, 0.0), fov_deg=90.0)
    s = render(SceneSpec(room, [ball], shadows=False), cam, 33)
    names = np.array(SCENE_CLASS_NAMES + ("",) * (256 - len(SCENE_CLASS_NAMES)))
    assert names[s.classes[16, 16]] == "sphere" and s.surface[16, 16] == FIRST_OBJECT
    assert s.depth[16, 16] == pytest.approx(3.5, abs=1e-5)  # sphere front along the optical axis
    assert names[s.classes[32, 16]] == "floor" and names[s.classes[0, 16]] == "ceiling"
    assert names[s.classes[16, 0]] == "wall" and names[s.classes[16, 32]] == "wall"
    assert (s.classes[s.surface == WINDOW] == IGNORE_INDEX).all() and (s.surface == WINDOW).any()
    # z-depth, not ray length: the level floor at 1.5 m below the camera, at row r, lies at
    # z = 1.5 * f / (r + 0.5 - 16.5) with f = 16.5 for 90 degrees over 33 pixels.
    r = 30
    assert s.depth[r, 16] == pytest.approx(1.5 * 16.5 / (r + 0.5 - 16.5), rel=1e-5)


def test_resume_remakes_samples_without_labels(tmp_path):
    make_scenes(tmp_path, 2, 0, 24, seed=1, progress=False)
    before = (tmp_path / "train/img/scene_000001.png").read_bytes()
    (tmp_path / "train/seg/scene_000001.png").unlink()
    assert make_scenes(tmp_path, 2, 0, 24, seed=1, progress=False) == {"written": 1, "skipped": 1}
    assert (tmp_path / "train/img/scene_000001.png").read_bytes() == before
    assert (tmp_path / "train/seg/scene_000001.png").is_file()


def test_random_scene_labels_cover_every_pixel():
    for seed in range(4):
        s = render_scene(seed, (24, 32))
        assert s.classes.shape == (24, 32) and s.classes.dtype == np.uint8
        win = s.surface == WINDOW
        assert (s.classes[~win] < len(SCENE_CLASS_NAMES)).all()
        assert np.isfinite(s.depth[~win]).all() and np.isinf(s.depth[win]).all()
