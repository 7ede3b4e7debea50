"""The task descriptions and their pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diff2in1.data.labels import ClassList
from diff2in1.data.multitask import TASKS as DATA_TASKS
from diff2in1.errors import InputError
from diff2in1.tasks import TASKS, get_task
from diff2in1.viz_tasks import classes_to_rgb, depth_picture, depth_range, depth_to_rgb, segmentation_picture


def test_every_task_round_trips_its_label_and_scores_a_perfect_prediction(tmp_path):
    assert tuple(TASKS) == DATA_TASKS
    rng = np.random.default_rng(0)
    n = rng.normal(size=(5, 6, 3))
    labels = {
        "normals": (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32),
        "depth": rng.uniform(0.5, 8, (5, 6)).astype(np.float32),
        "segmentation": rng.integers(0, 3, (5, 6)).astype(np.uint8),
    }
    classes = ClassList.with_default_colors(["floor", "wall", "box"])
    for name, task in TASKS.items():
        path = tmp_path / f"{name}{task.label_ext}"
        task.write_label(path, labels[name])
        back = task.read_label(path)
        if name == "normals":
            back, mask = back
            assert mask.all() and np.abs(back - labels[name]).max() <= 2 / 255
        elif name == "depth":
            np.testing.assert_array_equal(back, labels[name])
        else:
            np.testing.assert_array_equal(back, labels[name])
        acc = task.new_accumulator(num_classes=3)
        if name == "normals":
            acc.update(torch.from_numpy(labels[name]), torch.from_numpy(labels[name]), dim=-1)
            res = acc.compute()
            assert res["mean"] < 1e-3 and res["a11"] == 100.0
        elif name == "depth":
            acc.update(labels[name], labels[name])
            res = acc.compute()
            assert res["abs_rel"] == 0.0 and res["delta1"] == 1.0
        else:
            acc.update(labels[name], labels[name])
            res = acc.compute()
            assert res["miou"] == 1.0
        assert set(task.metric_keys) <= set(res) and task.lower_is_better <= set(task.metric_keys)
        pic = task.picture(labels[name], class_list=classes)
        assert pic.size[1] >= 5 and pic.size[0] >= 6
    assert get_task("depth").loss.__name__ == "depth_nll"
    with pytest.raises(InputError, match="unknown task 'edges'; choose from normals, depth, segmentation"):
        get_task("edges")


def test_depth_picture_has_a_metre_colour_bar_and_black_holes():
    d = np.linspace(0.5, 7.3, 48 * 64, dtype=np.float32).reshape(48, 64)
    d[0, 0] = 0.0
    assert depth_range(d) == pytest.approx(8.0)
    rgb = depth_to_rgb(d)
    assert (rgb[0, 0] == 0).all() and rgb[47, 63].tolist() != rgb[1, 1].tolist()
    pic = depth_picture(d)
    assert pic.size[1] == 48 and pic.size[0] > 64 + 20
    np.testing.assert_array_equal(np.asarray(pic)[:, :64], rgb)  # the map itself is unchanged


def test_segmentation_picture_colours_and_legend():
    classes = ClassList(("floor", "wall", "box"), ((10, 20, 30), (200, 0, 0), (0, 200, 0)))
    c = np.array([[0, 1], [255, 1]])
    rgb = classes_to_rgb(c, classes)
    assert rgb[0, 0].tolist() == [10, 20, 30] and rgb[1, 0].tolist() == [0, 0, 0]
    pic = np.asarray(segmentation_picture(np.kron(c, np.ones((16, 16), int)), classes))
    legend = pic[:, 32:].reshape(-1, 3).tolist()
    assert [10, 20, 30] in legend and [200, 0, 0] in legend  # swatches of the classes present
    assert [0, 200, 0] not in legend  # "box" does not occur
