"""diff2in1: one Stable Diffusion model for dense perception and multi-modal data generation."""

import os

# Large CPU tensors on transparent huge pages: a 512x512 training step allocates several GB of
# short-lived buffers, and with 4 KB pages it spends 1-2 s in page faults (1-2 million per step).
# torch reads this once, at its first allocation, so it only takes effect when diff2in1 is imported
# before torch (always so for the `diff2in1` command and `benchmarks/bench.py`). An explicit
# setting, e.g. THP_MEM_ALLOC_ENABLE=0, wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.2.0"

__all__ = [
    "Diff2in1Pipeline",
    "Diff2in1NormalsOutput",
    "Diff2in1CreateOutput",
    "NormalHead",
    "read_normals_png",
    "__version__",
]


def read_normals_png(path: str | os.PathLike):
    """A `*_normal16.png` file (16-bit RGB, (n + 1) / 2 * 65535) -> float32 (H, W, 3) unit normals.

    PIL opens these files as 8-bit RGB without a word (an error of up to 2 / 255 per component);
    this reads all 16 bits. Also reads an 8-bit normals PNG of the data layout (n = pixel / 255 * 2
    - 1). Any other PNG is an InputError.
    """
    import numpy as np

    from .errors import InputError
    from .imaging.png16 import read_png_16bit

    raw = read_png_16bit(path)
    if raw.ndim != 3 or raw.shape[-1] != 3:
        raise InputError(f"{path}: expected an RGB normals PNG, got {raw.shape[-1]} channel(s)")
    scale = 65535.0 if raw.dtype == np.uint16 else 255.0
    return (raw.astype(np.float32) / scale) * 2.0 - 1.0


def __getattr__(name: str):
    # Lazy, so `import diff2in1` (and the CLI's --help) stays fast and torch starts after THP is set.
    if name in ("Diff2in1Pipeline", "Diff2in1NormalsOutput", "Diff2in1CreateOutput"):
        from .inference import pipeline

        return getattr(pipeline, name)
    if name == "NormalHead":
        from .heads import NormalHead

        return NormalHead
    raise AttributeError(f"module 'diff2in1' has no attribute {name!r}")
