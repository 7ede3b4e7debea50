"""Data: the dataset layout of docs/method.md section 5, a torch Dataset over it, and procedural
test scenes.
"""

from diff2in1.data.dataset import NormalsDataset
from diff2in1.data.layout import (
    Sample,
    decode_normal_png,
    encode_normal_png,
    list_ids,
    read_sample,
    write_sample,
)
from diff2in1.data.multitask import MultiTaskDataset
from diff2in1.data.scenes import Camera, Scene, SceneSpec, make_scenes, render, render_scene

__all__ = [
    "Camera",
    "MultiTaskDataset",
    "NormalsDataset",
    "Sample",
    "Scene",
    "SceneSpec",
    "decode_normal_png",
    "encode_normal_png",
    "list_ids",
    "make_scenes",
    "read_sample",
    "render",
    "render_scene",
    "write_sample",
]
