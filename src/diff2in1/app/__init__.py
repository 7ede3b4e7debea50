"""`diff2in1 app`: a local web page for normals and data creation (gradio, the `app` extra).

Nothing else in the package imports this module; gradio is imported only here, when the page is
started. `serve(...)` loads the model (your pipeline folder, a backbone + head or a list of heads,
one per task, or the demo weights), builds the page (`page.build_page`) and serves it on
127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from .backend import DEMO_TRAIN_STEPS, AppBackend, open_pipeline

MAX_FILE_SIZE = 256 * 1024**2  # bytes per upload (the pixel limit is the image processor's)


def _import_gradio():
    # No telemetry and no update checks: the page works offline.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gradio
    except ImportError:
        raise InputError(
            "the web page needs gradio: pip install 'diff2in1[app]' (or pip install gradio)"
        ) from None
    return gradio


@dataclass
class AppServer:
    """A running page: its URL, the gradio Blocks and the backend (`close()` stops it)."""

    url: str
    page: Any
    backend: AppBackend

    def close(self) -> None:
        self.page.close()
        self.backend.close()


def build(
    pipeline: str | None = None,
    backbone: str | None = None,
    head: str | list[str] | None = None,
    device: str = "auto",
    mixed_precision: str = "no",
    demo_train_steps: int | None = DEMO_TRAIN_STEPS,
    log: Callable[[str], None] | None = None,
):
    """Load the model and build the page (queued, concurrency 1); returns (Blocks, AppBackend)."""
    _import_gradio()
    from .page import build_page

    pipe, note, what = open_pipeline(
        pipeline, backbone, head, device, mixed_precision, demo_train_steps, log=log
    )
    backend = AppBackend(pipe, note, source=what)
    page = build_page(backend)
    page.queue(default_concurrency_limit=1, max_size=64)
    return page, backend


def serve(
    pipeline: str | None = None,
    backbone: str | None = None,
    head: str | list[str] | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    device: str = "auto",
    mixed_precision: str = "no",
    demo_train_steps: int | None = DEMO_TRAIN_STEPS,
    block: bool = True,
    quiet: bool = False,
) -> AppServer:
    """Start the page; with block=True serve until interrupted, else return the running server."""
    if port is not None and not 0 < int(port) < 65536:
        raise InputError(f"--port {port}: must be in 1..65535")

    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    page, backend = build(pipeline, backbone, head, device, mixed_precision, demo_train_steps, log=say)
    from .page import CSS

    try:
        _, url, _ = page.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=True,
            share=False,
            inbrowser=False,
            show_error=False,
            quiet=True,  # gradio's own lines (and its share=True hint) mean nothing here: ours below
            max_file_size=MAX_FILE_SIZE,
            ssr_mode=False,
            pwa=False,
            mcp_server=False,
            footer_links=[],
            css=CSS,
        )
    except OSError as e:
        backend.close()
        where = f"{host}:{port}" if port else f"{host} (ports 7860-7959)"
        why = (str(e).splitlines() or [""])[0]
        if "empty port" in why:
            why = "the port is in use (choose another with --port)"
        raise InputError(f"cannot serve on {where}: {why}") from None
    server = AppServer(url=url, page=page, backend=backend)
    if host not in ("127.0.0.1", "localhost", "::1"):
        say(f"note: serving on {host}: anyone who can reach this machine can use the page (no login)")
    say(f"diff2in1 page on {url}" + (" (Ctrl+C stops it)" if block else ""))
    if block:
        try:
            page.block_thread()
        finally:
            server.close()
    return server


__all__ = ["AppServer", "build", "serve"]
