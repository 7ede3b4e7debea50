"""The procedural scenes' depth and normals against an independent ray caster: trimesh with Embree
on triangle meshes of the same rooms and objects. Skips when trimesh or embreex is absent.

Planar surfaces (room, boxes) must agree to float32 rounding; spheres and cylinders are compared
with their tessellations (an icosphere of 20480 faces, 256-sided cylinders), so there the bound is
the facet geometry: the inscribed facets are up to ~1.3 degrees off the true normal and a few mm
off the true surface.
"""

from __future__ import annotations

import numpy as np
import pytest

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("embreex")  # without Embree trimesh's ray casting takes minutes here

from diff2in1.data.scenes import (  # noqa: E402
    FIRST_OBJECT,
    WINDOW,
    Box,
    Sphere,
    random_spec,
    render,
    room_uv,
    rot_y,
)


def scene_meshes(spec) -> list[tuple[object, float, str]]:
    """(mesh, sign that turns its face normals toward the viewer's side, kind) per surface owner:
    the room first (seen from inside: flipped), then every object in order."""
    r = spec.room
    t = np.eye(4)
    t[:3, 3] = [(r.x0 + r.x1) / 2, r.height / 2, (r.z0 + r.z1) / 2]
    out = [(trimesh.creation.box(extents=(r.x1 - r.x0, r.height, r.z1 - r.z0), transform=t), -1.0, "room")]
    for obj in spec.objects:
        if isinstance(obj, Box):
            t = np.eye(4)
            t[:3, :3], t[:3, 3] = rot_y(obj.yaw), obj.center
            out.append((trimesh.creation.box(extents=2 * np.asarray(obj.half), transform=t), 1.0, "box"))
        elif isinstance(obj, Sphere):
            m = trimesh.creation.icosphere(subdivisions=5, radius=obj.radius)
            m.apply_translation(obj.center)
            out.append((m, 1.0, "sphere"))
        else:
            m = trimesh.creation.cylinder(radius=obj.radius, height=obj.y1 - obj.y0, sections=256)
            m.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # z -> y axis
            m.apply_translation([obj.center_xz[0], (obj.y0 + obj.y1) / 2, obj.center_xz[1]])
            out.append((m, 1.0, "cylinder"))
    return out


def ray_cast(spec, camera, h: int, w: int):
    """z-depth, normals (dataset convention), owner index and hit points from trimesh, with the
    pixel rays built here from the pinhole intrinsics (f = W / 2 / tan(fov / 2), centre W/2, H/2)."""
    parts = scene_meshes(spec)
    mesh = trimesh.util.concatenate([m for m, _, _ in parts])
    owner_of_face = np.concatenate([np.full(len(m.faces), i) for i, (m, _, _) in enumerate(parts)])
    sign = np.array([s for _, s, _ in parts])
    f = (w / 2) / np.tan(np.radians(camera.fov_deg) / 2)
    u, v = (np.arange(w) + 0.5 - w / 2) / f, (np.arange(h) + 0.5 - h / 2) / f
    d_cam = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((h, w))), -1).reshape(-1, 3)
    rot = camera.rotation()  # columns: the camera's right, down, forward axes in the world
    d = d_cam @ rot.T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    o = np.asarray(camera.position, np.float64)
    loc, ray, tri = mesh.ray.intersects_location(np.repeat(o[None], len(d), 0), d, multiple_hits=False)
    assert len(ray) == h * w  # a closed room: every ray hits something
    hit = np.empty((h * w, 3))
    face = np.empty(h * w, np.int64)
    hit[ray], face[ray] = loc, tri
    owner = owner_of_face[face]
    n_world = mesh.face_normals[face] * sign[owner][:, None]
    normal = -(n_world @ rot)  # stored convention: camera frame, pointing away from the camera
    return (
        ((hit - o) @ rot[:, 2]).reshape(h, w), normal.reshape(h, w, 3), owner.reshape(h, w),
        hit.reshape(h, w, 3), [k for _, _, k in parts],
    )  # fmt: skip


def compare(seeds, h: int = 48, w: int = 64) -> dict[str, dict[str, float]]:
    """Per surface kind: max / mean |depth difference| (m) and angle between normals (degrees), over
    the pixels where both casters hit the same surface, away from the room's edges."""
    stats: dict[str, dict[str, list]] = {}
    for seed in seeds:
        spec, cam = random_spec(np.random.default_rng(seed))
        s = render(spec, cam, (h, w))
        depth, normal, owner, hit, kinds = ray_cast(spec, cam, h, w)
        ours = np.where(s.surface >= FIRST_OBJECT, s.surface - FIRST_OBJECT + 1, 0)
        window = s.surface == WINDOW
        agree = owner == ours
        assert agree.mean() > 0.99, (seed, agree.mean())  # silhouettes of facets may differ by a pixel
        if window.any():  # window pixels: trimesh's wall has no hole; the hit must lie in the window
            win = spec.room.window
            uv = room_uv(win.wall, hit[window])
            assert (owner[window] == 0).all()
            assert ((uv[:, 0] > win.u0 - 1e-6) & (uv[:, 0] < win.u1 + 1e-6)).all()
            assert ((uv[:, 1] > win.v0 - 1e-6) & (uv[:, 1] < win.v1 + 1e-6)).all()
        # A ray through a room edge hits two faces at the same point: either normal is right.
        r = spec.room
        planes = np.abs(np.stack([hit[..., 0] - r.x0, hit[..., 0] - r.x1, hit[..., 1], hit[..., 1] - r.height,
                                  hit[..., 2] - r.z0, hit[..., 2] - r.z1]))  # fmt: skip
        edge = (owner == 0) & ((planes < 1e-6).sum(0) >= 2)
        ok = agree & ~window & ~edge
        ang = np.degrees(np.arccos(np.clip(np.einsum("hwc,hwc->hw", normal, s.normal), -1, 1)))
        for i, kind in enumerate(kinds):
            sel = ok & (owner == i)
            st = stats.setdefault(kind, {"depth": [], "angle": []})
            st["depth"].append(np.abs(depth - s.depth)[sel])
            st["angle"].append(ang[sel])
    out = {}
    for kind, st in stats.items():
        dd, aa = np.concatenate(st["depth"]), np.concatenate(st["angle"])
        out[kind] = {"pixels": dd.size, "depth_max": dd.max(), "depth_mean": dd.mean(),
                     "angle_max": aa.max(), "angle_mean": aa.mean()}  # fmt: skip
    return out


def test_depth_and_normals_agree_with_trimesh(capsys):
    res = compare(range(8))
    assert {"room", "box", "sphere", "cylinder"} <= set(res)
    for kind in ("room", "box"):  # exact geometry on both sides: float32 rounding only
        assert res[kind]["depth_max"] < 1e-5 and res[kind]["angle_max"] < 0.05, (kind, res[kind])
    for kind in ("sphere", "cylinder"):  # tessellated on trimesh's side
        assert res[kind]["depth_max"] < 1e-2 and res[kind]["angle_max"] < 1.5, (kind, res[kind])
    with capsys.disabled():
        for kind, r in res.items():
            print(f"\n[raycast] {kind:8s} {r['pixels']:6d} px  depth max {r['depth_max']:.2e} m "
                  f"mean {r['depth_mean']:.2e} m  normal max {r['angle_max']:.3f} deg "
                  f"mean {r['angle_mean']:.4f} deg", end="")  # fmt: skip
