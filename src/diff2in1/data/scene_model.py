"""The procedural scenes as data: surfaces, materials, room, objects, camera (world frame: y up,
the floor at y = 0; yaw 0 looks along +z). Rendering and writing them is `scenes.py`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CV_TO_DATASET = np.array([-1.0, -1.0, -1.0], dtype=np.float32)
"""Multiply an outward normal in the OpenCV camera frame by this to get the stored convention."""

FLOOR, CEILING, WALL_X0, WALL_X1, WALL_Z0, WALL_Z1 = range(6)
WINDOW = -1  # surface id of pixels seen through the window (invalid normals)
FIRST_OBJECT = 6
EPS = 1e-6

# Semantic classes of the scenes (ids = positions); window pixels (no surface) are IGNORE_CLASS.
SCENE_CLASS_NAMES = ("floor", "ceiling", "wall", "box", "sphere", "cylinder")
SCENE_CLASS_COLORS = (
    (150, 100, 50), (235, 235, 220), (120, 160, 210), (220, 60, 50), (60, 180, 75), (240, 200, 40),
)  # fmt: skip
IGNORE_CLASS = 255
OBJECT_CLASS = {"Box": "box", "Sphere": "sphere", "Cylinder": "cylinder"}

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.75, 0.12, 0.10),
    "green": (0.15, 0.55, 0.20),
    "blue": (0.12, 0.25, 0.70),
    "yellow": (0.85, 0.75, 0.15),
    "orange": (0.90, 0.45, 0.10),
    "purple": (0.45, 0.18, 0.60),
    "white": (0.88, 0.88, 0.86),
    "gray": (0.45, 0.45, 0.47),
    "black": (0.08, 0.08, 0.09),
    "brown": (0.42, 0.26, 0.13),
    "pink": (0.90, 0.50, 0.60),
    "teal": (0.10, 0.50, 0.50),
}
WALL_COLORS: dict[str, tuple[float, float, float]] = {
    "white": (0.86, 0.85, 0.82),
    "beige": (0.82, 0.74, 0.60),
    "gray": (0.60, 0.61, 0.63),
    "light blue": (0.62, 0.72, 0.82),
    "pale green": (0.66, 0.76, 0.62),
    "yellow": (0.86, 0.80, 0.52),
}


def cv_to_dataset(normal_cv: np.ndarray) -> np.ndarray:
    """Outward normals in the OpenCV camera frame (..., 3) -> the dataset convention."""
    return (np.asarray(normal_cv, dtype=np.float32) * CV_TO_DATASET).astype(np.float32)


def rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


# ---------------------------------------------------------------------------- description


@dataclass
class Material:
    """A procedural texture. kind: "wood", "tiles", "checker", "noise" or "solid"."""

    kind: str
    color: tuple[float, float, float]
    name: str = ""
    color2: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 0.5  # metres per plank / tile / checker square
    seed: int = 0  # drives the noise pattern

    def albedo(self, uv: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Albedo (M, 3) in [0, 1] at surface coordinates uv (M, 2) / world points p (M, 3)."""
        rng = np.random.default_rng(self.seed)
        c1, c2 = np.asarray(self.color), np.asarray(self.color2)
        u, v = uv[:, 0], uv[:, 1]
        if self.kind == "wood":
            # Planks along u; per-plank tint, wavy grain, dark seams between planks.
            k = np.floor(v / self.scale)
            tint = 0.85 + 0.3 * np.modf(np.abs(np.sin(k * 12.9898 + self.seed) * 43758.5453))[0]
            grain = np.sin(u * rng.uniform(9, 15) + 2.5 * np.sin(v * 7.0 + k) + k * 1.7)
            shade = tint * (0.9 + 0.1 * grain)
            seam = np.modf(np.abs(v / self.scale))[0] < 0.04
            shade = np.where(seam, 0.45, shade)
            return np.clip(c1[None] * shade[:, None], 0, 1)
        if self.kind in ("tiles", "checker"):
            check = (np.floor(u / self.scale) + np.floor(v / self.scale)) % 2 == 0
            out = np.where(check[:, None], c1[None], c2[None])
            if self.kind == "tiles":  # grout lines
                fu, fv = np.modf(np.abs(u / self.scale))[0], np.modf(np.abs(v / self.scale))[0]
                grout = (np.minimum(fu, 1 - fu) < 0.03) | (np.minimum(fv, 1 - fv) < 0.03)
                out = np.where(grout[:, None], 0.8 * np.ones(3)[None], out)
            return out * (1.0 + 0.04 * _sines(p, rng, 3, 3.0))[:, None]
        if self.kind == "noise":
            n = _sines(p, rng, 4, 2.5)
            return np.clip(c1[None] * (1.0 + 0.12 * n)[:, None], 0, 1)
        # "solid": object colour with mild noise
        return np.clip(c1[None] * (1.0 + 0.06 * _sines(p, rng, 3, 6.0))[:, None], 0, 1)


def _sines(p: np.ndarray, rng: np.random.Generator, n: int, freq: float) -> np.ndarray:
    """Cheap smooth noise in [-1, 1]: the mean of n random 3-D plane waves."""
    dirs = rng.normal(size=(n, 3))
    dirs *= (freq * rng.uniform(0.5, 1.5, size=n) / np.linalg.norm(dirs, axis=1))[:, None]
    phase = rng.uniform(0, 2 * np.pi, size=n)
    return np.sin(p @ dirs.T + phase).mean(axis=1)


@dataclass
class Window:
    """A rectangular opening in a wall; rays through it escape (invalid normals).

    u: horizontal wall coordinate (x for z-walls, z for x-walls), v: height; both in metres.
    """

    wall: int
    u0: float
    u1: float
    v0: float
    v1: float


@dataclass
class Room:
    x0: float
    x1: float
    z0: float
    z1: float
    height: float
    floor: Material
    walls: Material
    ceiling: Material
    window: Window | None = None

    def material(self, face: int) -> Material:
        return self.floor if face == FLOOR else self.ceiling if face == CEILING else self.walls

    def contains(self, p: np.ndarray) -> bool:
        x, y, z = p
        return self.x0 < x < self.x1 and 0.0 < y < self.height and self.z0 < z < self.z1

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exit distance t (N,) and face id (N,) of rays starting inside the room."""
        lo = np.array([self.x0, 0.0, self.z0])
        hi = np.array([self.x1, self.height, self.z1])
        with np.errstate(divide="ignore", invalid="ignore"):
            t_axes = np.where(d > 0, (hi - o) / d, np.where(d < 0, (lo - o) / d, np.inf))
        axis = np.argmin(t_axes, axis=1)
        t = t_axes[np.arange(len(d)), axis]
        positive = d[np.arange(len(d)), axis] > 0
        # axis 0 -> x walls, 1 -> floor/ceiling, 2 -> z walls; "positive" means the hi side.
        face_lo = np.array([WALL_X0, FLOOR, WALL_Z0])
        face_hi = np.array([WALL_X1, CEILING, WALL_Z1])
        face = np.where(positive, face_hi[axis], face_lo[axis])
        return t, face


ROOM_NORMALS = {  # outward normal of each room surface as seen from inside (pointing into the room)
    FLOOR: (0.0, 1.0, 0.0),
    CEILING: (0.0, -1.0, 0.0),
    WALL_X0: (1.0, 0.0, 0.0),
    WALL_X1: (-1.0, 0.0, 0.0),
    WALL_Z0: (0.0, 0.0, 1.0),
    WALL_Z1: (0.0, 0.0, -1.0),
}


def room_uv(face: int, p: np.ndarray) -> np.ndarray:
    if face in (FLOOR, CEILING):
        return p[:, [0, 2]]
    if face in (WALL_X0, WALL_X1):
        return p[:, [2, 1]]
    return p[:, [0, 1]]


@dataclass
class Box:
    """A box resting on its base; rotated by `yaw` (radians) about the vertical axis."""

    center: tuple[float, float, float]
    half: tuple[float, float, float]
    yaw: float
    material: Material
    noun: str = "box"

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = rot_y(self.yaw)  # world_from_local
        ol = (o - np.asarray(self.center)) @ r  # row vectors: x @ R == R^T x
        dl = d @ r
        h = np.asarray(self.half)
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-h - ol) / dl
            t2 = (h - ol) / dl
        tmin = np.nan_to_num(np.minimum(t1, t2), nan=-np.inf)
        tmax = np.nan_to_num(np.maximum(t1, t2), nan=np.inf)
        axis = np.argmax(tmin, axis=1)
        idx = np.arange(len(d))
        tnear, tfar = tmin[idx, axis], tmax.min(axis=1)
        hit = (tnear <= tfar) & (tnear > EPS)
        n_local = np.zeros_like(dl)
        n_local[idx, axis] = -np.sign(dl[idx, axis])
        return np.where(hit, tnear, np.inf), n_local @ r.T


@dataclass
class Sphere:
    center: tuple[float, float, float]
    radius: float
    material: Material
    noun: str = "sphere"

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = np.asarray(self.center)
        oc = o - c
        b = d @ oc
        disc = b * b - (oc @ oc - self.radius**2)
        t = -b - np.sqrt(np.maximum(disc, 0.0))
        hit = (disc >= 0) & (t > EPS)
        t = np.where(hit, t, np.inf)
        p = o + np.where(hit, t, 0.0)[:, None] * d
        return t, (p - c) / self.radius


@dataclass
class Cylinder:
    """A vertical cylinder: axis through (x, z) = center_xz, from height y0 to y1."""

    center_xz: tuple[float, float]
    radius: float
    y0: float
    y1: float
    material: Material
    noun: str = "cylinder"

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cx, cz = self.center_xz
        ox, oz = o[0] - cx, o[2] - cz
        dx, dz = d[:, 0], d[:, 2]
        a = dx * dx + dz * dz
        b = ox * dx + oz * dz
        disc = b * b - a * (ox * ox + oz * oz - self.radius**2)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
            y_side = o[1] + t_side * d[:, 1]
            side = (disc >= 0) & (a > 1e-12) & (t_side > EPS) & (y_side >= self.y0) & (y_side <= self.y1)
            t_side = np.where(side, t_side, np.inf)
            caps = []
            for y_cap in (self.y1, self.y0):
                t_cap = (y_cap - o[1]) / d[:, 1]
                px, pz = ox + t_cap * dx, oz + t_cap * dz
                ok = (t_cap > EPS) & (px * px + pz * pz <= self.radius**2)
                caps.append(np.where(ok, t_cap, np.inf))
        t_all = np.stack([t_side, caps[0], caps[1]], axis=1)
        which = np.argmin(t_all, axis=1)
        t = t_all[np.arange(len(d)), which]
        t_fin = np.where(np.isfinite(t), t, 0.0)
        n = np.zeros_like(d)
        n[:, 0] = (ox + t_fin * dx) / self.radius
        n[:, 2] = (oz + t_fin * dz) / self.radius
        n[which == 1] = (0.0, 1.0, 0.0)
        n[which == 2] = (0.0, -1.0, 0.0)
        return t, n


SceneObject = Box | Sphere | Cylinder


@dataclass
class Camera:
    """Pinhole camera. yaw about world +y (0 looks along +z), pitch > 0 looks up, roll about the view axis."""

    position: tuple[float, float, float]
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    fov_deg: float = 60.0  # horizontal field of view

    def rotation(self) -> np.ndarray:
        """world_from_camera 3x3; its columns are the camera's x (right), y (down), z (forward)."""
        cp, sp = np.cos(self.pitch), np.sin(self.pitch)
        fwd = np.array([np.sin(self.yaw) * cp, sp, np.cos(self.yaw) * cp])
        right = np.cross(fwd, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        cr, sr = np.cos(self.roll), np.sin(self.roll)
        right, down = cr * right + sr * down, -sr * right + cr * down
        return np.stack([right, down, fwd], axis=1)

    def focal(self, width: int) -> float:
        return (width / 2.0) / np.tan(np.radians(self.fov_deg) / 2.0)

    def rays_camera(self, height: int, width: int) -> np.ndarray:
        """Unit ray directions in the camera (OpenCV) frame, (H*W, 3), row-major over pixels."""
        f = self.focal(width)
        u = (np.arange(width) + 0.5 - width / 2.0) / f
        v = (np.arange(height) + 0.5 - height / 2.0) / f
        d = np.empty((height, width, 3))
        d[..., 0] = u[None, :]
        d[..., 1] = v[:, None]
        d[..., 2] = 1.0
        d = d.reshape(-1, 3)
        return d / np.linalg.norm(d, axis=1, keepdims=True)


@dataclass
class SceneSpec:
    room: Room
    objects: list[SceneObject] = field(default_factory=list)
    light: tuple[float, float, float] = (0.0, 2.5, 2.0)
    light_power: float = 1.0
    ambient: float = 0.25
    shadows: bool = True
    noise_seed: int | None = None  # per-pixel sensor noise; None = no noise


@dataclass
class Scene:
    """A rendered sample. normal: float32 HxWx3 in the dataset convention, zeros where mask is False."""

    image: np.ndarray  # uint8 HxWx3
    normal: np.ndarray  # float32 HxWx3
    mask: np.ndarray  # bool HxW
    caption: str
    depth: np.ndarray  # float32 HxW, metres along the camera's z axis (inf through the window)
    surface: np.ndarray  # int16 HxW: room face id, FIRST_OBJECT + object index, or WINDOW
    classes: np.ndarray | None = None  # uint8 HxW class ids of SCENE_CLASSES, 255 through the window
