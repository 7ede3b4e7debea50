"""`diff2in1 app` in a real browser: the page is served on a free localhost port (in this process)
and driven by headless Chromium (Debian's /usr/bin/chromium) through playwright.

Skipped, with the reason, only when Chromium, gradio or playwright is missing and the `CI`
variable is unset; under CI a missing piece fails the tests (`.ci/run` installs Chromium).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 60_000
pytestmark = [  # pandas 3 deprecations inside gradio's queue, not ours
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


def _missing(what: str) -> None:
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{what} (the browser tests must run under CI)")
    pytest.skip(f"{what}; the browser tests are skipped outside CI")


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        _missing("chromium is not installed (apt-get install -y chromium chromium-driver)")
    return path


@pytest.fixture(scope="module")
def server():
    try:
        import gradio  # noqa: F401
    except ImportError:
        _missing("gradio is not installed (pip install -e '.[dev,app]')")
    from diff2in1.app import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The demo weights: tiny-scenes + its shipped head.
    srv = serve(port=port, block=False, quiet=True)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(server, browser):
    pg = browser.new_page(viewport={"width": 1280, "height": 1000})
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(server.url)
    pg.wait_for_selector("#normals-run")
    yield pg
    pg.close()


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def test_bad_uploads_give_one_line_and_the_server_goes_on(page, server, tmp_path):
    from playwright.sync_api import expect

    text = tmp_path / "notes.txt"
    text.write_text("not a picture\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    page.locator("#normals-upload input[type=file]").set_input_files([str(text), str(empty)])
    expect(page.locator("#normals-upload a[href$='/empty.png']")).to_have_count(1)  # uploaded
    page.click("#normals-run")
    status = page.locator("#normals-status textarea")
    expect(status).to_have_value(re.compile("notes.txt"))
    msg = status.input_value()
    assert msg.startswith("Error: ") and "\n" not in msg, msg
    assert "notes.txt: not an image" in msg and "empty.png: empty file" in msg, msg
    assert "Traceback" not in page.content()
    assert page.locator(".toast-body").count() == 0  # the message is in the status box, not over the page
    assert "Demo weights" in page.locator("#demo-note").inner_text()  # the page says what it runs
    with urllib.request.urlopen(server.url, timeout=30) as r:  # still serving
        assert r.status == 200


def test_normal_map_of_an_uploaded_picture(page, tmp_path):
    from playwright.sync_api import expect

    from diff2in1.data.scenes import render_scene
    from diff2in1.inference.image_processor import read_normals_16bit_png

    photo = tmp_path / "room.png"
    Image.fromarray(render_scene(3, (80, 96)).image).save(photo)
    page.locator("#normals-upload input[type=file]").set_input_files(str(photo))
    expect(page.locator("#normals-upload a[href$='/room.png']")).to_have_count(1)
    page.click("#normals-run")
    expect(page.locator("#normals-status textarea")).to_have_value(re.compile(r"1 image\(s\) done"))
    img = page.locator("#normals-map img")
    expect(img).to_have_attribute("src", re.compile(r"room_normal\.png"))
    normal = np.asarray(Image.open(io.BytesIO(_fetch(img.get_attribute("src")))).convert("RGB"))
    assert normal.shape == (80, 96, 3)  # at the upload's size
    assert (
        normal.reshape(-1, 3).std(axis=0).max() > 1.0 and len(np.unique(normal.reshape(-1, 3), axis=0)) > 50
    )
    unc = Image.open(io.BytesIO(_fetch(page.locator("#normals-uncertainty img").get_attribute("src"))))
    assert unc.height == 80 and unc.width > 96  # with its colour bar
    assert page.locator("#normals-slider img").count() == 2  # upload | normals
    links = {
        Path(a.get_attribute("href")).name: a.get_attribute("href")
        for a in page.locator("#normals-downloads a").all()
    }
    assert {"room_normal16.png", "room_normal.npy", "room_uncertainty_deg.npy"} <= set(links), links
    png16 = tmp_path / "n16.png"
    png16.write_bytes(_fetch(links["room_normal16.png"]))
    n = read_normals_16bit_png(png16)
    assert n.shape == (80, 96, 3) and np.allclose(np.linalg.norm(n, axis=-1), 1, atol=1e-3)
    npy = np.load(io.BytesIO(_fetch(links["room_normal.npy"])), allow_pickle=False)
    assert npy.shape == (80, 96, 3) and np.abs(npy - n).max() < 1e-4
    key = page.locator("#normals-key img")  # the colour key of the normal maps
    expect(key).to_have_count(1)
    assert Image.open(io.BytesIO(_fetch(key.get_attribute("src")))).width > 60
    # A new upload replaces the previous set (the file box alone would add to it).
    other = [tmp_path / "a.png", tmp_path / "b.png"]
    for i, p in enumerate(other):
        Image.fromarray(render_scene(10 + i, (64, 64)).image).save(p)
    page.locator("#normals-upload input[type=file]").set_input_files([str(p) for p in other])
    expect(page.locator("#normals-upload a[href$='/b.png']")).to_have_count(1)
    expect(page.locator("#normals-upload a[href$='/room.png']")).to_have_count(0)
    page.click("#normals-run")
    expect(page.locator("#normals-status textarea")).to_have_value(re.compile(r"^2 image\(s\) done"))


def test_backend_messages_and_create(server, tmp_path):
    """The Create job with its progress callback, DDIM step counts, the pixel limit (no browser)."""
    from diff2in1.app.backend import valid_step_counts
    from diff2in1.data.scenes import render_scene
    from diff2in1.errors import InputError

    backend = server.backend
    steps = valid_step_counts(1000, 600)
    assert steps[:4] == [3, 6, 9, 12] and set(range(15, 61)) <= set(steps) and 7 not in steps
    photo = tmp_path / "room.jpg"
    Image.fromarray(render_scene(5, (100, 140)).image).save(photo)
    with pytest.raises(InputError, match="nearby step counts that can: .*6"):
        backend.create(photo, "a room", 600, 7)
    seen = []
    r = backend.create(photo, "a room", 600, 6, progress=lambda d, t, w: seen.append((d, t)))
    assert seen[0] == (0, 6) and seen[-1] == (6, 6)
    assert Image.open(r.image).size == (128, 128) and Image.open(r.normals).size == (128, 128)
    note = "The 140x100 upload was squashed to the model's 128x128, the size of the new image."
    assert r.squash_note() == note
    assert {p.suffix for p in r.downloads} == {".png", ".npy"}
    limit = backend.pipe.image_processor.max_pixels
    backend.pipe.image_processor.max_pixels = 100 * 139
    try:
        with pytest.raises(InputError, match=r"^room.jpg: image too large \(140x100 pixels, limit 13900\)$"):
            backend.normals([photo])
    finally:
        backend.pipe.image_processor.max_pixels = limit


@pytest.fixture(scope="module")
def three_head_server(tmp_path_factory, tiny_backbone):
    """`diff2in1 app --backbone tiny --head H --head D --head S`: a tiny three-head pipeline (random
    `small` heads for normals, depth and segmentation at 64 px)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        _missing("gradio is not installed (pip install -e '.[dev,app]')")
    import torch

    from diff2in1.app import serve
    from diff2in1.data.scenes import scene_classes
    from diff2in1.heads import build_head

    root = tmp_path_factory.mktemp("three_heads")
    torch.manual_seed(0)
    heads = []
    for task in ("normals", "depth", "segmentation"):
        classes = scene_classes() if task == "segmentation" else None
        head = build_head("small", tiny_backbone, 64, task=task, class_list=classes)
        head.save_pretrained(root / task)
        heads.append(str(root / task))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = serve(backbone="tiny", head=heads, port=port, block=False, quiet=True)
    yield srv
    srv.close()


def test_backend_gives_every_task_of_a_three_head_pipeline(three_head_server, tmp_path):
    """Depth (colour bar), its uncertainty, the class map (legend), the PLY point cloud that reads
    back with one point per pixel, the depth .npy and the class ids; and Create gives them too."""
    import torch

    from diff2in1.data.scenes import render_scene
    from diff2in1.inference.point_cloud import Intrinsics, backproject, read_ply

    backend = three_head_server.backend
    assert backend.tasks == ("normals", "depth", "segmentation")
    assert "Tasks: normals, depth, segmentation." in backend.describe()
    photo = tmp_path / "room.png"
    Image.fromarray(render_scene(3, (48, 56)).image).save(photo)
    item = backend.normals([photo]).items[0]
    assert Image.open(item.normals).size == (56, 48)
    depth_pic, unc_pic = Image.open(item.tasks.depth), Image.open(item.tasks.depth_uncertainty)
    assert depth_pic.height == 48 and depth_pic.width > 56  # with its colour bar in metres
    assert unc_pic.height == 48 and unc_pic.width > 56
    seg_pic = Image.open(item.tasks.segmentation)
    assert seg_pic.width > 56  # with its legend
    files = {p.name: p for p in item.downloads}
    assert {"room_normal16.png", "room_depth.npy", "room.ply", "room_classes.png"} <= set(files), files
    depth = np.load(files["room_depth.npy"], allow_pickle=False)
    classes = np.asarray(Image.open(files["room_classes.png"]))
    direct = backend.pipe(str(photo), generator=torch.Generator().manual_seed(0), show_progress_bar=False)
    assert depth.shape == (48, 56) and np.array_equal(depth, direct.depth[0, ..., 0])  # the prediction
    assert np.array_equal(classes, direct.classes[0]) and classes.max() < 6  # the scenes' 6 classes
    cloud = read_ply(files["room.ply"])
    assert len(cloud) == 48 * 56 and cloud.normals is not None and cloud.colors is not None
    expected = backproject(depth, Intrinsics.nyu(48, 56)).reshape(-1, 3)
    assert np.allclose(cloud.points, expected, rtol=1e-5, atol=1e-6)
    normals = np.load(files["room_normal.npy"], allow_pickle=False)
    assert np.allclose(cloud.normals, -normals.reshape(-1, 3), atol=1e-6)  # out of the surface
    assert np.array_equal(cloud.colors, np.asarray(Image.open(item.image).convert("RGB")).reshape(-1, 3))
    r = backend.create(photo, "a room", 600, 6)
    assert Image.open(r.tasks.depth).height == 64 and Image.open(r.tasks.segmentation).width > 64
    names = {p.name for p in r.downloads}
    assert {"room_created_depth.npy", "room_created.ply", "room_created_classes.png"} <= names


def test_page_shows_depth_and_classes_of_a_three_head_pipeline(three_head_server, browser, tmp_path):
    from playwright.sync_api import expect

    from diff2in1.data.scenes import render_scene

    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(three_head_server.url)
        page.wait_for_selector("#normals-run")
        assert page.locator("#demo-note").count() == 0
        photo = tmp_path / "room.png"
        Image.fromarray(render_scene(4, (40, 48)).image).save(photo)
        page.locator("#normals-upload input[type=file]").set_input_files(str(photo))
        expect(page.locator("#normals-upload a[href$='/room.png']")).to_have_count(1)
        page.click("#normals-run")
        expect(page.locator("#normals-status textarea")).to_have_value(re.compile(r"1 image\(s\) done"))
        expect(page.locator("#normals-map img")).to_have_attribute("src", re.compile(r"room_normal\.png"))
        for elem, name in [
            ("normals-depth", "room_depth.png"),
            ("normals-depth-uncertainty", "room_depth_uncertainty.png"),
            ("normals-segmentation", "room_segmentation.png"),
        ]:
            img = page.locator(f"#{elem} img")
            expect(img).to_have_attribute("src", re.compile(re.escape(name)))
            assert Image.open(io.BytesIO(_fetch(img.get_attribute("src")))).width > 48  # bar / legend
        links = {Path(a.get_attribute("href")).name for a in page.locator("#normals-downloads a").all()}
        assert {"room.ply", "room_depth.npy", "room_classes.png"} <= links, links
        page.get_by_role("tab", name="Create").click()  # a created sample's every modality
        page.locator("#create-upload input[type=file]").set_input_files(str(photo))
        expect(page.locator("#create-upload a[href$='/room.png']")).to_have_count(1)
        page.click("#create-run")
        made = re.compile("^New image made")  # 50 DDIM steps of the tiny backbone at 64 px
        expect(page.locator("#create-status textarea")).to_have_value(made, timeout=TIMEOUT_MS)
        for elem in ("create-image", "create-normals", "create-depth", "create-segmentation"):
            expect(page.locator(f"#{elem} img")).to_have_attribute("src", re.compile(r"room_created"))
    finally:
        page.close()


def test_normals_only_page_has_no_task_pictures(page):
    assert page.locator("#normals-depth, #normals-segmentation, #create-depth").count() == 0
    assert page.locator("#normals-run").inner_text().strip() == "Predict normals"


def test_app_takes_a_head_per_task_like_predict():
    from diff2in1.cli import build_parser

    a = build_parser().parse_args(["app", "--backbone", "tiny", "--head", "h", "--head", "d"])
    assert a.head == ["h", "d"]
