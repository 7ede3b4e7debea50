"""Keep the page's server from growing request by request.

Every request decodes an upload of its own size and makes pictures of that size; the memory is
freed, but glibc keeps freed blocks in the heap arena of the worker thread that ran the request
(gradio runs each on one of its threads), so with uploads of varying sizes the server's resident
size only grows. After each request the heap is trimmed back (`malloc_trim`, Linux); elsewhere
this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
        return None


def trim_heap() -> None:
    """Collect garbage and hand the heap's free memory back to the system."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def trims_heap(fn: F) -> F:
    """Decorator: `trim_heap()` after `fn` returns or raises."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            trim_heap()

    return run  # type: ignore[return-value]
