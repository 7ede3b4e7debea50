"""README.md's Python blocks run as written, in order, on a CPU with the shipped demo pipeline."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch):
    from diff2in1.data.scenes import render_scene

    blocks = python_blocks()
    assert blocks, "README.md has no ```python block"
    monkeypatch.chdir(tmp_path)
    Image.fromarray(render_scene(3, (96, 128)).image).save("photo.jpg")  # the README's photo.jpg
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    out = namespace["out"]
    assert out.normals.shape == (1, 96, 128, 3)
    assert np.allclose(np.linalg.norm(out.normals, axis=-1), 1, atol=1e-4)
    assert out.uncertainty.shape == (1, 96, 128, 1)
    assert (tmp_path / "my-pipeline" / "model_index.json").exists()
