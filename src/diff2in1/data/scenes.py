"""Procedural indoor scenes with exact surface normals, for tests and small offline experiments.

A room (axis-aligned box: floor, ceiling, four walls; the camera inside) holds a few objects
(boxes rotated about the vertical, spheres, vertical cylinders). Pixels are ray cast with numpy,
vectorised over all pixels (the only Python loops are over objects and materials), shaded with
procedural textures and Lambert lighting from one point light plus ambient.

Normal convention (the one of the NYUv2 ground truth used by Bae et al. 2021 and the research
code, i.e. GeoNet's PNGs): camera frame x right, y down, z forward (the OpenCV / "RDF" frame),
with every normal oriented AWAY from the camera (into the surface), so n . ray > 0 on every
visible pixel. Examples for a level camera: floor (0, 1, 0) -> PNG (128, 255, 128); a wall facing
the camera (0, 0, 1) -> (128, 128, 255); the wall on the right of the image (1, 0, 0).
Evidence: GeoNet fits n with n . p = 1 to back-projected OpenCV points (n points from the camera
to the plane); Bae & Davison's DSINE, which evaluates on the same PNGs, forces predictions to
cos(n, ray) > 0 with OpenCV rays and documents a fronto-parallel wall as (0, 0, 1).
The renderer works with outward normals in the OpenCV frame; `cv_to_dataset` (one constant,
`CV_TO_DATASET`) is the only place the dataset orientation is applied.

World frame of the scene description: y up, the floor at y = 0; yaw 0 looks along +z.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .scene_model import (
    CEILING,
    CV_TO_DATASET,
    EPS,
    FIRST_OBJECT,
    FLOOR,
    IGNORE_CLASS,
    OBJECT_CLASS,
    PALETTE,
    ROOM_NORMALS,
    SCENE_CLASS_COLORS,
    SCENE_CLASS_NAMES,
    WALL_COLORS,
    WALL_X0,
    WALL_X1,
    WALL_Z0,
    WALL_Z1,
    WINDOW,
    Box,
    Camera,
    Cylinder,
    Material,
    Room,
    Scene,
    SceneObject,
    SceneSpec,
    Sphere,
    Window,
    cv_to_dataset,
    room_uv,
    rot_y,
)

# ---------------------------------------------------------------------------- rendering


def _as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def render(spec: SceneSpec, camera: Camera, size: int | tuple[int, int], invalid_border: int = 0) -> Scene:
    """Ray cast `spec` from `camera` at size (H, W) (or an int for square).

    invalid_border: width in pixels of a frame whose normals are marked invalid (NYUv2's ground
    truth is only defined inside such a border).
    """
    h, w = _as_hw(size)
    o = np.asarray(camera.position, dtype=np.float64)
    if not spec.room.contains(o):
        raise ValueError(f"camera at {camera.position} is not inside the room")
    rot = camera.rotation()
    d_cam = camera.rays_camera(h, w)
    d = d_cam @ rot.T  # world directions

    t, surf = spec.room.intersect(o, d)
    surf = surf.astype(np.int16)
    n_world = np.asarray([ROOM_NORMALS[s] for s in range(6)])[surf]
    for i, obj in enumerate(spec.objects):
        t_obj, n_obj = obj.intersect(o, d)
        closer = t_obj < t
        t = np.where(closer, t_obj, t)
        n_world[closer] = n_obj[closer]
        surf[closer] = FIRST_OBJECT + i
    p = o + t[:, None] * d

    win = spec.room.window
    if win is not None:
        uv = room_uv(win.wall, p)
        through = (surf == win.wall) & (uv[:, 0] >= win.u0) & (uv[:, 0] <= win.u1)
        through &= (uv[:, 1] >= win.v0) & (uv[:, 1] <= win.v1)
        surf[through] = WINDOW

    albedo = np.zeros((h * w, 3))
    for s in np.unique(surf):
        sel = surf == s
        if s == WINDOW:
            continue
        if s < FIRST_OBJECT:
            albedo[sel] = spec.room.material(int(s)).albedo(room_uv(int(s), p[sel]), p[sel])
        else:
            albedo[sel] = spec.objects[s - FIRST_OBJECT].material.albedo(p[sel][:, [0, 1]], p[sel])

    radiance = albedo * _lighting(spec, p, n_world, surf)[:, None]
    rgb = np.clip(radiance, 0.0, 1.0) ** (1 / 2.2)  # display gamma
    sky = surf == WINDOW
    if sky.any():  # bright sky gradient through the window
        up = np.clip(d[sky, 1] * 1.5 + 0.5, 0.0, 1.0)[:, None]
        rgb[sky] = (1 - up) * np.array([0.95, 0.95, 0.92]) + up * np.array([0.55, 0.72, 0.95])
    if spec.noise_seed is not None:
        rgb = rgb + np.random.default_rng(spec.noise_seed).normal(0.0, 0.01, size=rgb.shape)
    image = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8).reshape(h, w, 3)

    mask = (surf != WINDOW).reshape(h, w)
    if invalid_border > 0:
        b = int(invalid_border)
        mask[:b], mask[-b:], mask[:, :b], mask[:, -b:] = False, False, False, False
    n_cv = n_world @ rot  # camera frame: R^T n for row vectors
    normal = cv_to_dataset(n_cv).reshape(h, w, 3)
    normal[~mask] = 0.0
    depth = np.where(sky, np.inf, t * d_cam[:, 2]).astype(np.float32).reshape(h, w)
    surface = surf.reshape(h, w)
    classes = class_map(spec, surface)
    return Scene(image, normal, mask, caption_for(spec, surface), depth, surface, classes)


def _lighting(spec: SceneSpec, p: np.ndarray, n: np.ndarray, surf: np.ndarray) -> np.ndarray:
    """Ambient + Lambert from the point light, with soft distance falloff and object shadows."""
    to_light = np.asarray(spec.light) - p
    dist = np.linalg.norm(to_light, axis=1)
    ldir = to_light / np.maximum(dist, 1e-9)[:, None]
    lambert = np.clip(np.einsum("ij,ij->i", n, ldir), 0.0, None)
    if spec.shadows and spec.objects:
        lit = lambert > 0
        start = p[lit] + n[lit] * 1e-4  # offset along the normal avoids self-hits
        blocked = np.zeros(int(lit.sum()), dtype=bool)
        for obj in spec.objects:
            t_obj = _intersect_many(obj, start, ldir[lit])
            blocked |= t_obj < dist[lit]
        lambert[np.flatnonzero(lit)[blocked]] = 0.0
    falloff = 1.0 / (1.0 + 0.04 * dist**2)
    return spec.ambient + spec.light_power * lambert * falloff


def _intersect_many(obj: SceneObject, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Intersection distances for rays with per-ray origins (shadow rays)."""
    if isinstance(obj, Sphere):
        oc = origins - np.asarray(obj.center)
        b = np.einsum("ij,ij->i", dirs, oc)
        disc = b * b - (np.einsum("ij,ij->i", oc, oc) - obj.radius**2)
        t = -b - np.sqrt(np.maximum(disc, 0.0))
        return np.where((disc >= 0) & (t > EPS), t, np.inf)
    if isinstance(obj, Box):
        r = rot_y(obj.yaw)
        ol, dl, hh = (origins - np.asarray(obj.center)) @ r, dirs @ r, np.asarray(obj.half)
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (-hh - ol) / dl, (hh - ol) / dl
        tnear = np.nan_to_num(np.minimum(t1, t2), nan=-np.inf).max(axis=1)
        tfar = np.nan_to_num(np.maximum(t1, t2), nan=np.inf).min(axis=1)
        return np.where((tnear <= tfar) & (tnear > EPS), tnear, np.inf)
    # Cylinder: the side test suffices for shadows cast onto the floor and walls.
    cx, cz = obj.center_xz
    ox, oz = origins[:, 0] - cx, origins[:, 2] - cz
    dx, dz = dirs[:, 0], dirs[:, 2]
    a = dx * dx + dz * dz
    b = ox * dx + oz * dz
    disc = b * b - a * (ox * ox + oz * oz - obj.radius**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    y = origins[:, 1] + t * dirs[:, 1]
    ok = (disc >= 0) & (a > 1e-12) & (t > EPS) & (y >= obj.y0) & (y <= obj.y1)
    return np.where(ok, t, np.inf)


def class_map(spec: SceneSpec, surface: np.ndarray) -> np.ndarray:
    """Semantic classes (uint8, ids of SCENE_CLASSES) of a surface-id map; 255 through the window.

    All four walls are one class ("wall"); objects are classed by kind (box, sphere, cylinder).
    """
    lut = np.full(FIRST_OBJECT + 1 + len(spec.objects), IGNORE_CLASS, np.uint8)  # index = surface id + 1
    lut[FLOOR + 1], lut[CEILING + 1] = SCENE_CLASS_NAMES.index("floor"), SCENE_CLASS_NAMES.index("ceiling")
    for face in (WALL_X0, WALL_X1, WALL_Z0, WALL_Z1):
        lut[face + 1] = SCENE_CLASS_NAMES.index("wall")
    for i, obj in enumerate(spec.objects):
        lut[FIRST_OBJECT + 1 + i] = SCENE_CLASS_NAMES.index(OBJECT_CLASS[type(obj).__name__])
    return lut[surface.astype(np.int64) + 1]


def caption_for(spec: SceneSpec, surface: np.ndarray, min_fraction: float = 0.002) -> str:
    """Caption from what is visible: objects by decreasing area, floor, walls, window."""
    counts = np.bincount(
        (surface.ravel().astype(np.int64) + 1), minlength=FIRST_OBJECT + 1 + len(spec.objects)
    )
    total = surface.size
    threshold = max(4, int(min_fraction * total))
    visible = [(counts[FIRST_OBJECT + 1 + i], obj) for i, obj in enumerate(spec.objects)]
    visible = [obj for c, obj in sorted(visible, key=lambda x: -x[0]) if c >= threshold]
    phrases = [f"a {obj.material.name} {obj.noun}".strip() for obj in visible]
    room = spec.room
    floor = {"wood": "wooden", "tiles": "tiled"}.get(room.floor.kind, room.floor.name)
    walls = f"{room.walls.name} {'checkered ' if room.walls.kind == 'checker' else ''}walls"
    extras = [walls] + (["a window"] if counts[WINDOW + 1] >= threshold else [])
    tail = f"on a {floor} floor, with {_join(extras)}"
    if not phrases:
        return f"an empty room {tail}"
    return f"a room with {_join(phrases)} {tail}"


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


# ---------------------------------------------------------------------------- random scenes


def _pick(rng: np.random.Generator, names: list[str]) -> str:
    return names[int(rng.integers(len(names)))]


def random_spec(rng: np.random.Generator) -> tuple[SceneSpec, Camera]:
    """A random room, a camera near one end looking into it, and 1-4 objects in view."""
    width, depth, height = rng.uniform(3.0, 6.0), rng.uniform(3.5, 7.0), rng.uniform(2.4, 3.2)
    x0, z0 = -width / 2, 0.0
    x1, z1 = width / 2, depth
    wood = ["brown", "light brown", "dark brown"]
    wood_rgb = {
        "brown": (0.55, 0.35, 0.18),
        "light brown": (0.72, 0.52, 0.30),
        "dark brown": (0.35, 0.20, 0.10),
    }
    if rng.random() < 0.7:
        wn = _pick(rng, wood)
        floor = Material(
            "wood", wood_rgb[wn], wn, scale=rng.uniform(0.12, 0.25), seed=int(rng.integers(1 << 30))
        )
    else:
        floor = Material(
            "tiles",
            (0.80, 0.80, 0.78),
            "tiled",
            color2=(0.55, 0.55, 0.56),
            scale=rng.uniform(0.25, 0.6),
            seed=int(rng.integers(1 << 30)),
        )
    wall_name = _pick(rng, list(WALL_COLORS))
    wall_rgb = WALL_COLORS[wall_name]
    if rng.random() < 0.35:
        walls = Material(
            "checker",
            wall_rgb,
            wall_name,
            color2=tuple(0.8 * c for c in wall_rgb),
            scale=rng.uniform(0.3, 0.8),
            seed=int(rng.integers(1 << 30)),
        )
    else:
        walls = Material("noise", wall_rgb, wall_name, seed=int(rng.integers(1 << 30)))
    ceiling = Material("noise", (0.92, 0.92, 0.90), "white", seed=int(rng.integers(1 << 30)))

    window = None
    if rng.random() < 0.8:
        wall = int(rng.choice([WALL_X0, WALL_X1, WALL_Z1]))  # walls the camera tends to see
        span = (z0, z1) if wall in (WALL_X0, WALL_X1) else (x0, x1)
        ww = rng.uniform(0.6, min(2.0, span[1] - span[0] - 0.4))
        u0 = rng.uniform(span[0] + 0.2, span[1] - 0.2 - ww)
        v0 = rng.uniform(0.7, 1.1)
        window = Window(wall, u0, u0 + ww, v0, min(height - 0.2, v0 + rng.uniform(0.8, 1.4)))
    room = Room(x0, x1, z0, z1, height, floor, walls, ceiling, window)

    cam_pos = np.array(
        [rng.uniform(x0 + 0.4, x1 - 0.4), rng.uniform(1.1, 1.7), rng.uniform(z0 + 0.3, z0 + 1.2)]
    )
    camera = Camera(
        tuple(cam_pos),
        yaw=rng.uniform(-0.6, 0.6),
        pitch=np.radians(rng.uniform(-22.0, 5.0)),
        roll=np.radians(rng.uniform(-3.0, 3.0)),
        fov_deg=rng.uniform(55.0, 70.0),
    )

    objects: list[SceneObject] = []
    footprints: list[tuple[float, float, float]] = [(cam_pos[0], cam_pos[2], 0.5)]
    names = list(PALETTE)
    for _ in range(int(rng.integers(1, 5))):
        kind = _pick(rng, ["box", "sphere", "cylinder"])
        cname = _pick(rng, names)
        mat = Material("solid", PALETTE[cname], cname, seed=int(rng.integers(1 << 30)))
        if kind == "box":
            half = (rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.6))
            radius = float(np.hypot(half[0], half[2]))
        elif kind == "sphere":
            radius = rng.uniform(0.15, 0.5)
        else:
            radius = rng.uniform(0.1, 0.4)
        x_lo, x_hi = x0 + radius + 0.05, x1 - radius - 0.05
        z_lo, z_hi = cam_pos[2] + 1.0 + radius, z1 - radius - 0.05
        if x_lo >= x_hi or z_lo >= z_hi:  # no room in front of the camera for this object
            continue
        for _attempt in range(30):  # rejection sampling of a free spot in front of the camera
            x = rng.uniform(x_lo, x_hi)
            z = rng.uniform(z_lo, z_hi)
            if all(np.hypot(x - fx, z - fz) > radius + fr + 0.05 for fx, fz, fr in footprints):
                break
        else:
            continue
        footprints.append((x, z, radius))
        if kind == "box":
            objects.append(Box((x, half[1], z), half, rng.uniform(0, np.pi), mat))
        elif kind == "sphere":
            objects.append(Sphere((x, radius, z), radius, mat))
        else:
            objects.append(Cylinder((x, z), radius, 0.0, rng.uniform(0.3, 1.3), mat))

    light = (rng.uniform(x0 + 0.3, x1 - 0.3), height - 0.15, rng.uniform(z0 + 0.5, z1 - 0.5))
    spec = SceneSpec(
        room,
        objects,
        light,
        light_power=rng.uniform(0.8, 1.3),
        ambient=rng.uniform(0.15, 0.35),
        noise_seed=int(rng.integers(1 << 30)),
    )
    return spec, camera


def render_scene(rng_or_seed: np.random.Generator | int, size: int | tuple[int, int] = 128) -> Scene:
    """A random scene rendered at size (H, W) (or an int for square); deterministic per seed."""
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    spec, camera = random_spec(rng)
    h, w = _as_hw(size)
    # Half the samples get NYU-like invalid borders (about 2% of the short side).
    border = int(round(0.02 * min(h, w))) if rng.random() < 0.5 else 0
    return render(spec, camera, (h, w), invalid_border=border)


# ---------------------------------------------------------------------------- dataset writer

_SPLITS = ("train", "test")


def scene_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """Seed of sample `index` of `split`: independent of how many samples are made."""
    return np.random.SeedSequence(entropy=int(seed), spawn_key=(_SPLITS.index(split), int(index)))


def scene_id(index: int) -> str:
    return f"scene_{index:06d}"


def make_scenes(
    out_root: str | os.PathLike,
    n_train: int,
    n_test: int,
    size: int | tuple[int, int] = 128,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, int]:
    """Write a procedural dataset in the data layout of docs/method.md section 5
    (img, norm, norm_npy, caption; train/test), with exact depth (`depth/<id>.npy`, metres along
    the camera axis, 0 through the window) and class maps (`seg/<id>.png`, 255 through the window)
    of the classes in `<out_root>/classes.json` (SCENE_CLASS_NAMES).

    Resumable: a sample whose files all exist is skipped. Returns {"written": n, "skipped": n}.
    """
    from tqdm import tqdm

    from diff2in1.data.labels import CLASSES_FILE, write_class_list
    from diff2in1.data.layout import is_complete, label_paths, write_sample

    out_root = Path(out_root)
    jobs = [("train", i) for i in range(n_train)] + [("test", i) for i in range(n_test)]
    written = skipped = 0
    if jobs and not (out_root / CLASSES_FILE).is_file():
        write_class_list(out_root / CLASSES_FILE, scene_classes())
    for split, i in tqdm(jobs, desc="scenes", unit="img", disable=not progress):
        sid = scene_id(i)
        lp = label_paths(out_root, split, sid)
        labelled = lp.depth_npy.is_file() and lp.seg.is_file()
        if labelled and is_complete(out_root, split, sid, float_normals=True):
            skipped += 1
            continue
        scene = render_scene(np.random.default_rng(scene_seed(seed, split, i)), size)
        write_sample(
            out_root, split, sid, scene.image, scene.normal, scene.caption, mask=scene.mask,
            depth=scene.depth, classes=scene.classes,
        )  # fmt: skip
        written += 1
    return {"written": written, "skipped": skipped}


def scene_classes():
    """The scenes' class list (a `ClassList`: SCENE_CLASS_NAMES with their colours)."""
    from diff2in1.data.labels import ClassList

    return ClassList(SCENE_CLASS_NAMES, SCENE_CLASS_COLORS)


__all__ = [
    "CV_TO_DATASET",
    "IGNORE_CLASS",
    "SCENE_CLASS_COLORS",
    "SCENE_CLASS_NAMES",
    "Box",
    "Camera",
    "Cylinder",
    "Material",
    "Room",
    "Scene",
    "SceneSpec",
    "Sphere",
    "Window",
    "class_map",
    "cv_to_dataset",
    "make_scenes",
    "random_spec",
    "render",
    "render_scene",
    "scene_classes",
    "scene_id",
    "scene_seed",
]
