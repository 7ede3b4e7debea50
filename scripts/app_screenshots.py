"""Screenshots of `diff2in1 app` after real runs, and the time a 512x512 picture takes on the page.

Starts the page in this process (the demo weights: tiny-scenes + its shipped head, or one trained
`--demo-steps` steps, or `--pipeline` / `--backbone --head`), drives headless Chromium
(/usr/bin/chromium) with playwright: the Normals tab with a 512x512 JPEG of a procedural room
(default settings; the time from the click to the normal map on the page, `--repeats` times),
then the Create tab (caption, t_start 600, 50 DDIM steps), and writes a screenshot of each tab.

    .venv/bin/python scripts/app_screenshots.py --normals docs/app_normals.png --create docs/app_create.png
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

SCENES = (0, 2, 4)  # procedural rooms with a few objects in view
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--normals", default="docs/app_normals.png")
    ap.add_argument("--create", default="docs/app_create.png")
    ap.add_argument("--pipeline")
    ap.add_argument("--backbone")
    ap.add_argument("--head")
    ap.add_argument("--demo-steps", type=int, default=None, help="train a fresh demo head (default: shipped)")
    ap.add_argument("--size", type=int, default=512, help="side of the uploaded picture")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    a = ap.parse_args()

    import torch
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    from diff2in1.app import serve
    from diff2in1.data.scenes import render_scene

    torch.set_num_threads(a.threads)
    expect.set_options(timeout=600_000)
    t = time.perf_counter()
    srv = serve(a.pipeline, a.backbone, a.head, port=None, block=False, demo_train_steps=a.demo_steps)
    print(f"page up at {srv.url} in {time.perf_counter() - t:.1f} s")
    tmp = Path(tempfile.mkdtemp(prefix="diff2in1-shots-"))
    photos = []
    runs = max(1, a.repeats)
    for k in range(runs):  # a new picture each run, so each result is seen to arrive
        photos.append(tmp / f"living_room_{k + 1}.jpg")
        seed = SCENES[(runs - 1 - k) % len(SCENES)]  # the last run (the screenshot) shows SCENES[0]
        Image.fromarray(render_scene(seed, a.size).image).save(photos[-1], quality=92)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=a.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(600_000)
            page.goto(srv.url)
            page.wait_for_selector("#normals-run")
            # ---------------------------------------------------------------- Normals
            status = page.locator("#normals-status textarea")
            times = []
            for photo in photos:
                clear = page.locator("#normals-upload").get_by_role("button", name="Clear")
                if clear.count():  # the file box adds uploads to its list: one picture per run
                    clear.first.click()
                page.locator("#normals-upload input[type=file]").set_input_files(str(photo))
                expect(page.locator(f"#normals-upload a[href$='/{photo.name}']")).to_have_count(1)
                t = time.perf_counter()
                page.click("#normals-run")
                img = page.locator(f"#normals-map img[src*='{photo.stem}_normal']")
                expect(img).to_have_count(1)
                img.evaluate("img => img.decode()")
                times.append(time.perf_counter() - t)
                print(f"Normals {photo.name}: {times[-1]:.2f} s on the page ({status.input_value()})")
            med = statistics.median(times)
            print(f"Normals, {a.size}x{a.size} upload, default settings: median {med:.2f} s")
            page.wait_for_timeout(500)
            page.screenshot(path=a.normals, full_page=True)
            photo = photos[-1]
            # ---------------------------------------------------------------- Create
            page.get_by_role("tab", name="Create").click()
            page.locator("#create-upload input[type=file]").set_input_files(str(photo))
            expect(page.locator(f"#create-upload a[href$='/{photo.name}']")).to_have_count(1)
            page.locator("#create-caption textarea").fill("a living room with a sofa and a lamp")
            t = time.perf_counter()
            page.click("#create-run")
            page.wait_for_selector(".progress-text, .progress-level", timeout=60_000)
            expect(page.locator("#create-status textarea")).to_have_value(re.compile("New image made"))
            page.locator("#create-image img").evaluate("img => img.decode()")
            print(f"Create (t_start 600, 50 DDIM steps): {time.perf_counter() - t:.1f} s on the page")
            page.wait_for_timeout(500)
            page.screenshot(path=a.create, full_page=True)
            browser.close()
    finally:
        srv.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {a.normals} and {a.create}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
