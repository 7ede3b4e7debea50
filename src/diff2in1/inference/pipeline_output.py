"""What the pipeline returns: one dataclass for perception (a field per task), one for creation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffusers.utils import BaseOutput


@dataclass
class Diff2in1NormalsOutput(BaseOutput):
    """Perception output, one entry per input image; a field is None for a task not asked for or
    without a head (and then left out of the `return_dict=False` tuple).

    output_type "np": normals (N, H, W, 3) float32 unit vectors (camera frame: x right, y down,
    z forward), kappa (N, H, W, 1), uncertainty (N, H, W, 1) expected angular error in degrees;
    depth (N, H, W, 1) metres and depth_uncertainty (N, H, W, 1) its expected absolute error in
    metres; classes (N, H, W) int64 class ids and class_probabilities (N, H, W, C).
    "pt": the same as tensors, channels first ((N, 3, H, W), (N, 1, H, W), ..., classes (N, H, W));
    "pil": lists of pictures (normal map, kappa as its uncertainty picture with a colour bar,
    uncertainty likewise, depth with a colour bar in metres, its uncertainty likewise, class map
    with a legend; no probabilities). When the images differ in size (match_input_resolution=True),
    "np"/"pt" give lists instead.
    """

    normals: Any = None
    kappa: Any = None
    uncertainty: Any = None
    depth: Any = None
    depth_uncertainty: Any = None
    classes: Any = None
    class_probabilities: Any = None


Diff2in1Output = Diff2in1NormalsOutput  # the perception output of every task


@dataclass
class Diff2in1CreateOutput(BaseOutput):
    """Generation output: the new image (N, H, W, 3) in [0, 1] ("np"; (N, 3, H, W) "pt"; PIL list
    "pil"), and its normals, kappa and uncertainty as in `Diff2in1NormalsOutput`, at the model size;
    with depth / segmentation heads also depth, depth_uncertainty, classes and class_probabilities
    as there (None without those heads, and then left out of the tuple)."""

    images: Any
    normals: Any
    kappa: Any
    uncertainty: Any
    depth: Any = None
    depth_uncertainty: Any = None
    classes: Any = None
    class_probabilities: Any = None
