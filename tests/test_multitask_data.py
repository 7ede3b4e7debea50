"""Multi-task data: depth and class-map files, the NYU and NYUD-MT layouts, missing labels, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from diff2in1.data import NormalsDataset, make_scenes, write_sample
from diff2in1.data.labels import (
    ClassList,
    read_depth,
    read_seg,
    resize_depth,
    write_class_list,
    write_depth,
    write_seg,
)
from diff2in1.data.multitask import MultiTaskDataset, detect_layout, parse_tasks
from diff2in1.errors import InputError


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt")
    make_scenes(root, 3, 0, size=(20, 24), seed=2, progress=False)
    return root


def quiet(*args, **kwargs) -> MultiTaskDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return MultiTaskDataset(*args, **kwargs)


@pytest.mark.parametrize("size,resize", [(None, "research"), ((16, 16), "research"), ((16, 16), "nearest")])
def test_normals_exactly_as_the_normals_dataset(scenes, size, resize):
    mt = quiet(scenes, "train", size=size, resize=resize)
    nd = NormalsDataset(scenes, "train", size=size, resize=resize)
    for i in range(len(nd)):
        a, b = mt[i], nd[i]
        for k in ("image", "normal", "mask"):
            assert torch.equal(a[k], b[k]), k
        assert a["caption"] == b["caption"] and a["id"] == b["id"]


def test_scene_labels_read_back_with_counts(scenes):
    ds = quiet(scenes, "train", size=None)
    assert ds.layout == "nyu" and ds.classes.names[:3] == ("floor", "ceiling", "wall")
    assert ds.label_counts.per_task == {"normals": 3, "depth": 3, "segmentation": 3}
    item = ds[1]
    assert item["has_depth"] and item["has_segmentation"] and item["has_normals"]
    depth = read_depth(scenes / "train/depth/scene_000001.npy")
    np.testing.assert_array_equal(item["depth"][0].numpy(), depth)
    np.testing.assert_array_equal(item["classes"].numpy(), read_seg(scenes / "train/seg/scene_000001.png"))
    assert item["depth"].dtype == torch.float32 and item["classes"].dtype == torch.int64
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["depth"].shape == (2, 1, 20, 24) and batch["has_depth"].tolist() == [True, True]


def _labelled(tmp_path, n=3, h=6, w=8):
    rng = np.random.default_rng(0)
    write_class_list(tmp_path / "classes.json", ClassList.with_default_colors(["a", "b", "c"]))
    for i in range(n):
        write_sample(
            tmp_path, "train", f"s{i}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8), None, "x",
            depth=rng.uniform(0.5, 5, (h, w)), classes=rng.integers(0, 3, (h, w)),
        )  # fmt: skip
    return tmp_path


def test_missing_labels_are_masked_and_counted(tmp_path):
    root = _labelled(tmp_path)
    (root / "train/seg/s0.png").unlink()
    (root / "train/depth/s1.npy").unlink()
    ds = quiet(root, "train", tasks="depth,segmentation", size=None)
    assert ds.label_counts.per_task == {"depth": 2, "segmentation": 2}
    assert str(ds.label_counts) == "3 samples; with labels: depth 2, segmentation 2"
    a, b = ds[0], ds[1]
    assert not a["has_segmentation"] and (a["classes"] == 255).all() and a["has_depth"]
    assert not b["has_depth"] and (b["depth"] == 0).all() and b["has_segmentation"]
    assert "normal" not in a  # tasks not asked for are not read
    assert quiet(root, "train", tasks=("normals",), size=None).label_counts.per_task == {"normals": 0}


def test_depth_png_in_millimetres_and_npy_preferred(tmp_path):
    root = _labelled(tmp_path, n=1)
    d = np.array([[1.0, 0.0], [2.5, 65.535]])
    write_depth(tmp_path / "d.png", d)
    assert Image.open(tmp_path / "d.png").mode.startswith("I;16")
    np.testing.assert_allclose(read_depth(tmp_path / "d.png"), d, atol=5e-4)
    npy = read_depth(root / "train/depth/s0.npy")
    write_depth(root / "train/depth/s0.png", np.ones_like(npy))  # both exist: the lossless .npy wins
    assert torch.equal(quiet(root, "train", size=None)[0]["depth"][0], torch.from_numpy(npy))
    (root / "train/depth/s0.npy").unlink()
    assert (quiet(root, "train", size=None)[0]["depth"] == 1.0).all()


def test_bad_label_files_are_one_line_errors_or_skipped(tmp_path):
    root = _labelled(tmp_path, n=4)
    Image.fromarray(np.full((6, 8), 9, np.uint8)).save(root / "train/depth/s0.png")  # 8-bit depth
    (root / "train/depth/s0.npy").unlink()
    write_seg(root / "train/seg/s1.png", np.full((6, 8), 3))  # id 3 with classes a, b, c
    write_seg(root / "train/seg/s2.png", np.zeros((5, 8), np.uint8))  # wrong size
    cases = {
        "s0": ("train/depth/s0.png", "16-bit"),
        "s1": ("train/seg/s1.png", "class id 3 beyond the class list"),
        "s2": ("train/seg/s2.png", "size 8x5 does not match image"),
    }
    with pytest.raises(InputError) as e:
        MultiTaskDataset(root, "train", size=None)
    assert str(root / "train/depth/s0.png") in str(e.value) and "\n" not in str(e.value)
    with pytest.warns(UserWarning, match="skipped 3 of 4"):
        ds = MultiTaskDataset(root, "train", size=None, on_error="skip")
    assert ds.ids == ["s3"]
    for sid, reason in ds.skipped:
        path, what = cases[sid]
        assert str(root / path) in reason and what in reason
    # Without the segmentation task the bad class maps are not read at all.
    with pytest.warns(UserWarning, match="skipped 1 of 4"):
        assert len(MultiTaskDataset(root, "train", tasks="depth", size=None, on_error="skip")) == 3


def test_seg_without_class_list_is_an_error(tmp_path):
    root = _labelled(tmp_path, n=1)
    (root / "classes.json").unlink()
    with pytest.raises(InputError, match="classes.json: class list missing"):
        MultiTaskDataset(root, "train", size=None)
    (root / "classes.json").write_text("{not json")
    with pytest.raises(InputError, match="classes.json: not a class list"):
        MultiTaskDataset(root, "train", size=None)


def test_resizing_per_modality(tmp_path):
    root = _labelled(tmp_path, n=1, h=6, w=8)
    d = read_depth(root / "train/depth/s0.npy")
    c = read_seg(root / "train/seg/s0.png")
    item = quiet(root, "train", size=(3, 4))[0]
    np.testing.assert_array_equal(item["depth"][0].numpy(), d[1::2, 1::2])  # nearest: centre rule
    np.testing.assert_array_equal(item["classes"].numpy(), c[1::2, 1::2])
    # valid-bilinear: a 2x downsample averages 2x2 blocks; a block touching "no depth" gives none.
    d[0, 0] = 0.0
    out = resize_depth(d, (3, 4), "valid-bilinear")
    assert out[0, 0] == 0.0
    assert out[2, 3] == pytest.approx(d[4:6, 6:8].mean(), rel=1e-6)
    assert set(np.unique(quiet(root, "train", size=(12, 16))[0]["classes"].numpy())) <= {0, 1, 2}


def _nyudmt(root, ids_train=("0001", "0002"), ids_val=("0003",), h=6, w=8):
    rng = np.random.default_rng(3)
    for sub in ("images", "depth", "segmentation", "normals", "edge", "gt_sets"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for sid in (*ids_train, *ids_val):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{sid}.jpg")
        np.save(root / "depth" / f"{sid}.npy", rng.uniform(0.7, 9, (h, w)).astype(np.float32))
        seg = rng.integers(0, 41, (h, w)).astype(np.uint8)
        seg[0, :3] = (0, 1, 40)
        Image.fromarray(seg).save(root / "segmentation" / f"{sid}.png")
        n = rng.normal(size=(h, w, 3))
        n = (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)
        np.save(root / "normals" / f"{sid}.npy", n)
        np.save(root / "edge" / f"{sid}.npy", np.zeros((h, w), np.float32))
    (root / "gt_sets" / "train.txt").write_text("\n".join(ids_train) + "\n")
    (root / "gt_sets" / "val.txt").write_text("\n".join(ids_val) + "\n")
    return root


def test_nyudmt_layout_read_directly(tmp_path):
    root = _nyudmt(tmp_path)
    assert detect_layout(root) == "nyudmt"
    ds = quiet(root, "train", size=None)
    assert ds.ids == ["0001", "0002"] and len(ds.classes) == 40 and ds.classes.names[0] == "wall"
    assert ds.label_counts.per_task == {"normals": 2, "depth": 2, "segmentation": 2}
    item = ds[0]
    raw = np.asarray(Image.open(root / "segmentation/0001.png"))
    assert item["classes"][0, :3].tolist() == [255, 0, 39]  # 0 = unlabelled; 1..40 -> 0..39
    np.testing.assert_array_equal(item["classes"].numpy()[raw > 0], raw[raw > 0] - 1)
    np.testing.assert_array_equal(item["depth"][0].numpy(), np.load(root / "depth/0001.npy"))
    np.testing.assert_allclose(item["normal"].permute(1, 2, 0).numpy(), np.load(root / "normals/0001.npy"))
    assert item["caption"] == "" and item["mask"].all()
    assert quiet(root, "val", size=(3, 4))[0]["classes"].shape == (3, 4)
    with pytest.raises(InputError, match=r"test.txt: split list not found \(splits here: train, val\)"):
        MultiTaskDataset(root, "test")
    Image.fromarray(np.full((6, 8), 41, np.uint8)).save(root / "segmentation/0002.png")
    with pytest.raises(InputError, match="0002.png: class id 41 beyond the class list"):
        MultiTaskDataset(root, "train", size=None)


@pytest.mark.parametrize("dataset", [NormalsDataset, MultiTaskDataset])
def test_reading_options_are_checked_alike(scenes, dataset):
    with pytest.raises(InputError, match=r"^on_error must be 'raise' or 'skip', got 'ignore'$"):
        dataset(scenes, "train", size=None, on_error="ignore")
    with pytest.raises(InputError, match=r"^resize must be one of research, nearest, got 'bicubic'$"):
        dataset(scenes, "train", size=None, resize="bicubic")


def test_parse_tasks():
    assert parse_tasks("segmentation, normals") == ("normals", "segmentation")
    with pytest.raises(InputError, match="unknown task 'edges'"):
        parse_tasks("normals,edges")


def test_merge_keeps_label_folders_and_the_class_list(scenes, tmp_path):
    from diff2in1.data.merge import merge_datasets

    merge_datasets(scenes, [], tmp_path / "m")
    ds = quiet(tmp_path / "m", "train", size=None)
    assert ds.label_counts.per_task == {"normals": 3, "depth": 3, "segmentation": 3}
    assert ds.classes.names == quiet(scenes, "train", size=None).classes.names


def test_label_files_without_an_image(tmp_path):
    root = _labelled(tmp_path, n=2)
    write_depth(root / "train/depth/ghost.npy", np.ones((6, 8)))
    with pytest.raises(InputError, match=r"ghost.npy: label file without an image"):
        MultiTaskDataset(root, "train", size=None)
    with pytest.warns(UserWarning, match="skipped 1 of 2"):
        ds = MultiTaskDataset(root, "train", size=None, on_error="skip")
    assert ds.ids == ["s0", "s1"] and ds.skipped[0][0] == "ghost"


def test_special_files_as_labels_are_named_never_opened(tmp_path):
    import os

    from diff2in1.data.labels import read_class_list, read_depth, read_seg
    from diff2in1.errors import InputError

    for name, reader in (("d.png", read_depth), ("s.png", read_seg), ("classes.json", read_class_list)):
        fifo = tmp_path / name
        os.mkfifo(fifo)  # opening it for reading would block until a writer came
        with pytest.raises(InputError, match=f"{name}: .*not a regular file|{name}: .*special"):
            reader(fifo)
