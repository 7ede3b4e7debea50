"""Point clouds from depth (+ normals, colours): back-projection with pinhole intrinsics, PLY files.

Camera frame as everywhere in the package: x right, y down, z forward (OpenCV), depth = z in metres.
A pixel (u, v) at depth d (pixel centres at integer + 0.5, as in the scenes' ray caster) becomes
x = (u + 0.5 - cx) d / fx, y = (v + 0.5 - cy) d / fy, z = d.

Intrinsics default to NYUv2's Kinect camera scaled to the image size (the data the heads are trained
on; its horizontal field of view is 63.3 degrees); `Intrinsics.from_fov` or `parse` set others.

The package's normals point into the surface (away from the camera); a PLY's normals point out of it
(toward the camera) because that is what 3D tools (MeshLab, Open3D, CloudCompare) shade and mesh
with, so `point_cloud` flips them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError

# NYUv2's colour camera (Kinect v1) at 640 x 480, the usual published calibration.
NYU_SIZE = (480, 640)
NYU_FX, NYU_FY, NYU_CX, NYU_CY = 518.8579, 519.4696, 325.5824, 253.7362


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels for one image size (principal point from the top-left corner)."""

    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def nyu(cls, height: int, width: int) -> Intrinsics:
        """NYUv2's Kinect camera scaled to (height, width)."""
        sy, sx = height / NYU_SIZE[0], width / NYU_SIZE[1]
        return cls(NYU_FX * sx, NYU_FY * sy, NYU_CX * sx, NYU_CY * sy)

    @classmethod
    def from_fov(cls, height: int, width: int, fov_deg: float) -> Intrinsics:
        """Square pixels, centred principal point, `fov_deg` across the image width."""
        if not 0.0 < fov_deg < 180.0:
            raise InputError(f"--fov: must be between 0 and 180 degrees, got {fov_deg}")
        f = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
        return cls(f, f, width / 2.0, height / 2.0)

    @classmethod
    def parse(cls, text: str) -> Intrinsics:
        """`fx,fy,cx,cy` (pixels of the image as given)."""
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            values = []
        if len(values) != 4 or not all(math.isfinite(v) for v in values) or min(values[:2]) <= 0:
            raise InputError(f"--intrinsics: expected fx,fy,cx,cy with fx, fy > 0, got {text!r}")
        return cls(*values)


@dataclass
class PointCloud:
    """N points: positions (N, 3) float32 metres, colours (N, 3) uint8 or None, normals (N, 3) or None."""

    points: np.ndarray
    colors: np.ndarray | None = None
    normals: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.points.shape[0])


def backproject(depth: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """depth (H, W) metres -> camera-frame points (H, W, 3) float64."""
    h, w = depth.shape
    u = (np.arange(w, dtype=np.float64) + 0.5 - intrinsics.cx) / intrinsics.fx
    v = (np.arange(h, dtype=np.float64) + 0.5 - intrinsics.cy) / intrinsics.fy
    d = depth.astype(np.float64)
    return np.stack([u[None, :] * d, v[:, None] * d, d], axis=-1)


def point_cloud(
    depth: Any,
    normals: Any = None,
    image: Any = None,
    intrinsics: Intrinsics | None = None,
    mask: Any = None,
    max_depth: float | None = None,
) -> PointCloud:
    """One point per valid pixel of `depth` (H, W) metres (valid: finite, > 0, <= max_depth, mask).

    normals (H, W, 3) in the package's convention (into the surface) are written flipped (out of the
    surface); image (H, W, 3) uint8 or float in [0, 1] gives the colours.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise InputError(f"depth: expected an (H, W) map, got shape {depth.shape}")
    h, w = depth.shape
    valid = np.isfinite(depth) & (depth > 0)
    if max_depth is not None:
        valid &= depth <= max_depth
    if mask is not None:
        mask = np.asarray(mask, dtype=bool).reshape(h, w)
        valid &= mask
    k = intrinsics or Intrinsics.nyu(h, w)
    pts = backproject(np.where(valid, depth, 0.0), k)[valid].astype(np.float32)
    cols = nrm = None
    if image is not None:
        img = np.asarray(image)
        if img.shape[:2] != (h, w) or img.ndim != 3 or img.shape[-1] < 3:
            raise InputError(f"image: expected ({h}, {w}, 3) to match the depth map, got {img.shape}")
        img = img[..., :3]
        if img.dtype != np.uint8:
            img = np.clip(np.rint(img.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        cols = img[valid]
    if normals is not None:
        n = np.asarray(normals, dtype=np.float32)
        if n.shape != (h, w, 3):
            raise InputError(f"normals: expected ({h}, {w}, 3) to match the depth map, got {n.shape}")
        nrm = -n[valid]
    return PointCloud(pts, cols, nrm)


def write_ply(path: str | os.PathLike, cloud: PointCloud) -> None:
    """Binary little-endian PLY: x y z (float), then nx ny nz (float), then red green blue (uchar)."""
    n = len(cloud)
    fields: list[tuple[str, str]] = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if cloud.normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if cloud.colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    rows = np.empty(n, dtype=np.dtype(fields))
    rows["x"], rows["y"], rows["z"] = cloud.points.T
    if cloud.normals is not None:
        rows["nx"], rows["ny"], rows["nz"] = cloud.normals.T
    if cloud.colors is not None:
        rows["red"], rows["green"], rows["blue"] = cloud.colors.T
    ply_type = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment made by diff2in1", f"element vertex {n}"]
    header += [f"property {ply_type[t]} {name}" for name, t in fields]
    header += ["end_header"]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(rows.tobytes())


def read_ply(path: str | os.PathLike) -> PointCloud:
    """Read a binary little-endian vertex-only PLY (as `write_ply` writes) back."""
    name = str(path)
    with open(path, "rb") as f:
        data = f.read()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise InputError(f"{name}: not a PLY file")
    fields, n = [], 0
    types = {"float": "<f4", "uchar": "u1", "double": "<f8", "int": "<i4"}
    for line in data[:end].decode("ascii", "replace").splitlines():
        parts = line.split()
        if parts[:1] == ["format"] and parts[1] != "binary_little_endian":
            raise InputError(f"{name}: only binary little-endian PLY is read, got {parts[1]}")
        if parts[:2] == ["element", "vertex"]:
            n = int(parts[2])
        elif parts[:1] == ["property"] and parts[1] in types:
            fields.append((parts[2], types[parts[1]]))
    rows = np.frombuffer(data, dtype=np.dtype(fields), count=n, offset=end + len(b"end_header\n"))
    names = rows.dtype.names or ()
    pts = np.stack([rows["x"], rows["y"], rows["z"]], -1).astype(np.float32)
    nrm = np.stack([rows["nx"], rows["ny"], rows["nz"]], -1) if "nx" in names else None
    col = np.stack([rows["red"], rows["green"], rows["blue"]], -1) if "red" in names else None
    return PointCloud(pts, col, nrm)
