"""Upper bounds checked before any model loads, so a number past what a machine can hold is a
one-line error instead of an overflow or an allocation failure deep inside torch.

- seeds: 0 .. 2^63 - 1 (torch generators take a signed 64-bit seed);
- model resolution (training, creation, prediction): at most 2048 pixels a side, 16 times the
  pixels of SD v1.5's native 512 x 512 (one such image needs several GB in the UNet);
- procedural scenes (`make-scenes --size`): at most 2048 pixels a side;
- images read from data folders, given to `predict` or uploaded to the web page: at most
  64,000,000 pixels (8000 x 8000; a 12000 x 12000 image alone takes 1.7 GB as float32); larger
  ones are refused before decoding, or skipped and listed with `--skip-bad-samples` /
  `--skip-bad-files`.
"""

from __future__ import annotations

MAX_SEED = 2**63 - 1
MAX_RESOLUTION = 2048
MAX_SCENE_SIZE = 2048
MAX_IMAGE_PIXELS = 64_000_000


def seed_problem(value: int) -> str | None:
    """Why `value` is no seed, or None."""
    if not 0 <= value <= MAX_SEED:
        return f"must be between 0 and 2^63 - 1 ({MAX_SEED}), got {value}"
    return None


def cpu_count() -> int:
    """CPUs this process may use (its affinity where the platform says so)."""
    import os

    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cap_workers(requested: int, flag: str = "--num-workers") -> int:
    """Data-loading workers: at most one per CPU (each is a process holding a copy of the dataset;
    thousands get the run killed by the system). A capped request gets a note on stderr."""
    import sys

    cpus = cpu_count()
    if requested <= cpus:
        return requested
    print(f"diff2in1: note: {flag} {requested}: capped at {cpus}, the CPUs of this machine", file=sys.stderr)
    return cpus
