"""The gradio page: a Normals tab and a Create tab on one `AppBackend` (see backend.py).

Every job of both tabs runs in one queue with concurrency 1 (one model, one request at a time).
A user's mistake is a one-line message in the tab's status box (no toast over the page); the server
goes on. Each upload replaces the files of the previous one. Both tabs show every task the pipeline
has a head for: beside the normals, depth with its uncertainty (colour bars in metres) and the
class map with its legend; the pictures of a task without a head are not on the page at all.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from ..errors import InputError
from ..inference.image_processor import RESIZE_MODES
from .backend import AppBackend, CreateResult, NormalsItem, TaskPictures

log = logging.getLogger("diff2in1.app")

IMAGE_HEIGHT = 320  # pixels on the page (the downloads are full size)
RESOLUTIONS = [64 * k for k in range(1, 17)]  # 64 .. 1024
CSS = """
#demo-note { border: 2px solid #d97706; border-radius: 8px; padding: 4px 12px; background: #fffbeb; }
#demo-note p { color: #78350f; }
"""


def _fail(e: Exception) -> str:
    """A one-line message for the status box (no toast: it would cover the page); internal errors
    are logged in full."""
    if isinstance(e, InputError):
        msg = str(e).strip().splitlines()[0] if str(e).strip() else "bad input"
    else:
        log.exception("internal error")
        first = (str(e).strip().splitlines() or [""])[0]
        msg = f"internal error ({type(e).__name__}: {first[:200]}); the page still works, see the server log"
    return f"Error: {msg}"


def keep_new_uploads(value: list | None, previous: list | None) -> tuple[list, list]:
    """The file box adds a new upload to the files already in it; keep only the new ones, so each
    upload replaces the previous set. Returns (files to show, files to remember)."""
    value = [str(v) for v in (value or [])]
    seen = {str(v) for v in (previous or [])}
    new = [v for v in value if v not in seen] or value
    return new, new


def _progress(progress: gr.Progress):
    def report(done: int, total: int, what: str) -> None:
        progress((done, total), desc=what, unit="steps" if "DDIM" in what else "images")

    return report


def _result_image(label: str, elem_id: str) -> gr.Image:
    """An output picture of the page: a PNG file shown at IMAGE_HEIGHT, not editable."""
    return gr.Image(
        label=label, type="filepath", format="png", interactive=False, height=IMAGE_HEIGHT, elem_id=elem_id
    )


def _key_image(backend: AppBackend, elem_id: str) -> gr.Image:
    """The colour key of the normal maps (x right, y down, z into the picture), small."""
    return gr.Image(
        value=str(backend.normal_key()),
        label="Normal colour key",
        type="filepath",
        interactive=False,
        height=150,
        elem_id=elem_id,
    )


def _path(p) -> str | None:
    return None if p is None else str(p)


def _task_images(tasks: tuple[str, ...], prefix: str) -> list[gr.Image]:
    """The pictures of the depth and segmentation heads (only those the pipeline has), in the order
    `_task_view` fills them."""
    images = []
    if "depth" in tasks:
        with gr.Row():
            images.append(_result_image("Depth (metres)", f"{prefix}-depth"))
            label = "Depth uncertainty (expected absolute error, metres)"
            images.append(_result_image(label, f"{prefix}-depth-uncertainty"))
    if "segmentation" in tasks:
        images.append(_result_image("Classes", f"{prefix}-segmentation"))
    return images


def _task_view(tasks: tuple[str, ...], pictures: TaskPictures) -> tuple:
    view: tuple = ()
    if "depth" in tasks:
        view += (_path(pictures.depth), _path(pictures.depth_uncertainty))
    if "segmentation" in tasks:
        view += (_path(pictures.segmentation),)
    return view


def _item_view(item: NormalsItem, tasks: tuple[str, ...]) -> tuple:
    view: tuple = ()
    if "normals" in tasks:
        view = (str(item.normals), str(item.uncertainty), (str(item.image), str(item.normals)))
    return view + _task_view(tasks, item.tasks)


def _downloads_label(tasks: tuple[str, ...], first: str) -> str:
    what = [first] if "normals" in tasks else []
    if "depth" in tasks:
        what.append(".npy depth and its uncertainty in metres, .ply point cloud")
    if "segmentation" in tasks:
        what.append("class-id PNG")
    return f"Downloads ({', '.join(what)})"


def build_page(backend: AppBackend) -> gr.Blocks:
    """The Blocks of the page (call `.queue(...)` and `.launch(...)` on it; see `serve`)."""
    head_res = backend.head_resolution
    res_label = "x".join(map(str, head_res)) if isinstance(head_res, (list, tuple)) else str(head_res or 512)
    res_choices = [(f"head's own ({res_label})", 0)] + [(str(r), r) for r in RESOLUTIONS]
    t_train = backend.num_train_timesteps
    steps0 = backend.step_choices(600)
    tasks = backend.tasks
    has_normals = "normals" in tasks
    run_label = "Predict normals" if tasks == ("normals",) else "Predict " + ", ".join(tasks)

    with gr.Blocks(title="diff2in1", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(
            "## diff2in1: surface normals and new training pairs from one Stable Diffusion model\n"
            + backend.describe()
        )
        if backend.demo_note:
            gr.Markdown(backend.demo_note, elem_id="demo-note")
        with gr.Tabs():
            # ------------------------------------------------------------ Normals
            with gr.Tab("Normals", id="normals", elem_id="tab-normals"):
                items = gr.State([])
                with gr.Row():
                    with gr.Column(scale=1):
                        files = gr.File(
                            label="Images (one or more)", file_count="multiple", elem_id="normals-upload"
                        )
                        resolution = gr.Dropdown(
                            res_choices, value=0, label="Processing resolution (model input size)"
                        )
                        resize_mode = gr.Radio(
                            list(RESIZE_MODES),
                            value=backend.head_resize_mode,
                            label="Resize mode",
                            info="squash to a square as in training, or keep the aspect ratio and pad",
                        )
                        ensemble = gr.Slider(
                            1, 8, value=1, step=1, label="Ensemble size", info="noise draws + flips combined"
                        )
                        run = gr.Button(run_label, variant="primary", elem_id="normals-run")
                        status = gr.Textbox(
                            label="Status", interactive=False, max_lines=6, elem_id="normals-status"
                        )
                        downloads = gr.File(
                            label=_downloads_label(
                                tasks, "16-bit PNG normals, .npy normals, .npy uncertainty in degrees"
                            ),
                            file_count="multiple",
                            interactive=False,
                            elem_id="normals-downloads",
                        )
                    with gr.Column(scale=2):
                        shown = gr.Dropdown(
                            [], label="Result shown", visible=False, interactive=True, elem_id="normals-shown"
                        )
                        views: list = []  # in the order `_item_view` fills them
                        if has_normals:
                            with gr.Row():
                                normal_map = _result_image("Normal map", "normals-map")
                                uncertainty = _result_image(
                                    "Uncertainty (expected angular error, degrees)", "normals-uncertainty"
                                )
                            _key_image(backend, "normals-key")
                        task_views = _task_images(tasks, "normals")
                        if has_normals:
                            slider = gr.ImageSlider(
                                label="Image | normals (drag the handle)",
                                type="filepath",
                                elem_id="normals-slider",
                            )
                            views = [normal_map, uncertainty, slider]
                        views += task_views

                def predict(paths, res, mode, ens, progress=gr.Progress()) -> tuple:  # noqa: B008
                    try:
                        result = backend.normals(
                            list(paths or []),
                            int(res or 0) or None,
                            mode,
                            int(ens),
                            progress=_progress(progress),
                        )
                    except Exception as e:  # every failure becomes one line on the page
                        return (
                            [],
                            _fail(e),
                            None,
                            gr.update(choices=[], value=None, visible=False),
                            *[None] * len(views),
                        )
                    lines = [f"{len(result.items)} image(s) done in {result.seconds:.1f} s."]
                    if result.errors:
                        lines += [f"Left out: {m}" for m in result.errors]
                    names = [it.name for it in result.items]
                    files_out = [str(p) for it in result.items for p in it.downloads]
                    view = _item_view(result.items[0], tasks)
                    picker = gr.update(choices=names, value=names[0], visible=len(names) > 1)
                    return result.items, "\n".join(lines), files_out, picker, *view

                def show(items_state: list, name: Any) -> tuple:
                    for it in items_state or []:
                        if it.name == name:
                            return _item_view(it, tasks)
                    return tuple(gr.update() for _ in views)

                uploaded = gr.State([])
                files.upload(keep_new_uploads, [files, uploaded], [files, uploaded], queue=False)
                files.clear(lambda: [], None, uploaded, queue=False)
                run.click(
                    predict,
                    [files, resolution, resize_mode, ensemble],
                    [items, status, downloads, shown, *views],
                    concurrency_limit=1,
                    concurrency_id="model",
                )
                shown.input(show, [items, shown], views, queue=False)

            # ------------------------------------------------------------ Create
            with gr.Tab("Create", id="create", elem_id="tab-create"):
                with gr.Row():
                    with gr.Column(scale=1):
                        cfile = gr.File(label="Image", file_count="single", elem_id="create-upload")
                        caption = gr.Textbox(
                            label="Caption", placeholder="a living room with a sofa", elem_id="create-caption"
                        )
                        t_start = gr.Slider(
                            10,
                            t_train,
                            value=600,
                            step=10,
                            label="t_start (noise level to start from)",
                            elem_id="create-tstart",
                        )
                        steps = gr.Dropdown(
                            steps0,
                            value=50 if 50 in steps0 else steps0[-1],
                            label="DDIM steps (the counts the scheduler can take below t_start)",
                            elem_id="create-steps",
                        )
                        guidance = gr.Slider(
                            1, 10, value=1, step=0.5, label="Guidance (1 = no classifier-free)"
                        )
                        seed = gr.Number(value=0, precision=0, label="Seed")
                        crun = gr.Button("Create", variant="primary", elem_id="create-run")
                        cstatus = gr.Textbox(
                            label="Status", interactive=False, max_lines=4, elem_id="create-status"
                        )
                        cdownloads = gr.File(
                            label=_downloads_label(tasks, "new image, 16-bit PNG normals, .npy normals"),
                            file_count="multiple",
                            interactive=False,
                            elem_id="create-downloads",
                        )
                    with gr.Column(scale=2):
                        with gr.Row():
                            new_image = _result_image("New image", "create-image")
                            new_normals = _result_image("Its normals", "create-normals")
                            new_unc = _result_image("Its uncertainty (degrees)", "create-uncertainty")
                        _key_image(backend, "create-key")
                        cviews = _task_images(tasks, "create")
                        cslider = gr.ImageSlider(
                            label="Source (at model size) | new image",
                            type="filepath",
                            elem_id="create-slider",
                        )

                def update_steps(t: float, current: Any) -> Any:
                    choices = backend.step_choices(int(t))
                    if not choices:
                        return gr.update(choices=[], value=None)
                    cur = int(current) if current else 50
                    value = cur if cur in choices else min(choices, key=lambda s: abs(s - cur))
                    return gr.update(choices=choices, value=value)

                def create(path, text, t, n, g, s, progress=gr.Progress()) -> tuple:  # noqa: B008
                    try:
                        if n is None:
                            raise InputError(f"no DDIM step count can be taken below t_start={int(t)}")
                        r: CreateResult = backend.create(
                            path, text, int(t), int(n), float(g), int(s or 0), progress=_progress(progress)
                        )
                    except Exception as e:  # every failure becomes one line on the page
                        return _fail(e), None, None, None, None, None, *[None] * len(cviews)
                    msg = f"New image made with {int(n)} DDIM steps from t={int(t)} in {r.seconds:.1f} s."
                    msg = f"{msg} {r.squash_note()}".strip()
                    return (
                        msg,
                        [str(p) for p in r.downloads],
                        str(r.image),
                        str(r.normals),
                        str(r.uncertainty),
                        (str(r.source), str(r.image)),
                        *_task_view(tasks, r.tasks),
                    )

                t_start.change(update_steps, [t_start, steps], steps, queue=False)
                crun.click(
                    create,
                    [cfile, caption, t_start, steps, guidance, seed],
                    [cstatus, cdownloads, new_image, new_normals, new_unc, cslider, *cviews],
                    concurrency_limit=1,
                    concurrency_id="model",
                )
    return page
