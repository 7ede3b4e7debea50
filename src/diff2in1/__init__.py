"""diff2in1: one Stable Diffusion model for dense perception and multi-modal data generation."""

import os

# Large CPU tensors on transparent huge pages: a 512x512 training step allocates several GB of
# short-lived buffers, and with 4 KB pages it spends 1-2 s in page faults (1-2 million per step).
# torch reads this once, at its first allocation, so it only takes effect when diff2in1 is imported
# before torch (always so for the `diff2in1` command and `benchmarks/bench.py`). An explicit
# setting, e.g. THP_MEM_ALLOC_ENABLE=0, wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.2.0"

__all__ = ["Diff2in1Pipeline", "Diff2in1NormalsOutput", "Diff2in1CreateOutput", "NormalHead", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import diff2in1` (and the CLI's --help) stays fast and torch starts after THP is set.
    if name in ("Diff2in1Pipeline", "Diff2in1NormalsOutput", "Diff2in1CreateOutput"):
        from .inference import pipeline

        return getattr(pipeline, name)
    if name == "NormalHead":
        from .heads import NormalHead

        return NormalHead
    raise AttributeError(f"module 'diff2in1' has no attribute {name!r}")
