"""One live command per run folder: a lock file held while the run lives.

The lock is an advisory `flock` on `<folder>/.diff2in1.lock`, so the operating system releases it
on any exit, kill -9 included. The file also records the holder's process id: a second command
names the process it waits for, and a run that finds the id of a process that died without
releasing (the lock itself is free) takes the folder over and says so.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from types import TracebackType

from .errors import InputError

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".diff2in1.lock"


def is_main_process() -> bool:
    """Rank 0 of a launcher (torchrun / accelerate set RANK), or a plain process."""
    return os.environ.get("RANK", "0") == "0"


class RunLock:
    """`with RunLock(folder):` holds `folder`'s lock (making the folder if needed) or raises a
    one-line InputError naming the process that holds it. A folder this lock made is removed
    again on release if nothing but the lock file was written into it."""

    def __init__(self, folder: str | os.PathLike, flag: str = "--out") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.flag = flag
        self._fd: int | None = None
        self._made = False

    def acquire(self) -> RunLock:
        if fcntl is None or not is_main_process():
            return self
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.folder}: exists and is not a folder; choose another {self.flag}")
        self._made = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            who = f"process {holder}" if holder else "another process"
            raise InputError(
                f"{self.folder}: in use by another diff2in1 command ({who}); "
                f"wait for it to end or choose another {self.flag}"
            ) from None
        previous = _read_pid(fd)
        if previous and previous != os.getpid():
            print(
                f"diff2in1: note: {self.folder}: took over the lock of process {previous}, "
                "which ended without releasing it",
                file=sys.stderr,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # released cleanly: no process id left for the next run to report
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        if self._made and [p.name for p in self.folder.iterdir()] == [LOCK_NAME]:
            self.path.unlink(missing_ok=True)  # a run refused before writing anything leaves no folder
            self.folder.rmdir()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
