"""SIGTERM (what `kill` and job schedulers send) handled as Ctrl-C: the command stops at once,
keeps what it finished (a training run saves its last finished step) and says how to continue.
DataLoader workers leave quietly on SIGTERM and ignore SIGINT (`quiet_worker`): a signal to the
whole process group is reported once, by the main process."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM; every `except KeyboardInterrupt` handles it."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread; the old handler after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _leave_quietly(signum: int, frame: object) -> None:
    os._exit(0)


def quiet_worker(worker_id: int) -> None:
    """A DataLoader `worker_init_fn`: SIGTERM ends the worker quietly (exit status 0) whoever sent
    it, and SIGINT is ignored, so a signal to the whole process group is reported once, by the
    main process, and not again by torch for each worker it killed. (torch's own worker handler
    is quiet only for a SIGTERM from the main process, e.g. its shutdown; that still ends it.)"""
    signal.signal(signal.SIGTERM, _leave_quietly)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
