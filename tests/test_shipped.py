"""The demo pipeline that ships in the package, and where `from_pretrained` looks for a name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diff2in1.errors import InputError
from diff2in1.inference.sources import SHIPPED, resolve_pretrained, shipped_head_dir


@pytest.fixture(scope="module")
def demo_pipe():
    from diff2in1 import Diff2in1Pipeline

    return Diff2in1Pipeline.from_pretrained("tiny-scenes")


def test_the_shipped_head_is_small_safetensors_with_its_recipe():
    folder = shipped_head_dir("tiny-scenes")
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert set(files) == {"config.json", "diffusion_pytorch_model.safetensors", "training.json"}
    assert files["diffusion_pytorch_model.safetensors"] < 4 * 1024**2
    record = json.loads((folder / "training.json").read_text())
    assert record["script"] == "scripts/train_demo_head.py"
    assert record["settings"]["backbone"] == SHIPPED["tiny-scenes"][0]


def test_the_demo_pipeline_gives_good_normals_on_a_procedural_scene(demo_pipe):
    from diff2in1.data.scenes import render_scene

    scene = render_scene(12345, 128)  # a scene none of the training seeds draws
    out = demo_pipe(Image.fromarray(scene.image), show_progress_bar=False)
    n = out.normals[0]
    assert n.shape == (128, 128, 3)
    cos = np.clip((n * scene.normal).sum(-1), -1, 1)[scene.mask]
    err = np.degrees(np.arccos(cos)).mean()
    assert err < 35, err  # an untrained head is near 90 deg; the recipe's held-out mean is far lower
    assert demo_pipe.head.config.processing_resolution in (128, [128, 128], (128, 128))


def test_a_missing_local_name_fails_in_one_line_without_the_hub():
    from diff2in1 import Diff2in1Pipeline

    for name in ("diff2in1-nyu", "./runs/nothing-here", "/no/such/folder", "~/nope"):
        with pytest.raises(InputError, match="no such pipeline folder") as e:
            Diff2in1Pipeline.from_pretrained(name)
        assert "\n" not in str(e.value)


def test_names_resolve_local_first_then_shipped_then_hub(tmp_path, monkeypatch):
    assert resolve_pretrained("tiny-scenes").kind == "shipped"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-scenes").mkdir()  # an existing folder wins over the shipped name
    assert resolve_pretrained("tiny-scenes").kind == "local"
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="a file, not a pipeline folder"):
        resolve_pretrained("file.bin")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = resolve_pretrained("someone/some-model")
    assert hub.kind == "hub" and hub.local_files_only


def test_an_uncached_hub_id_offline_is_one_line(monkeypatch):
    from diff2in1 import Diff2in1Pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="not in the Hugging Face cache") as e:
        Diff2in1Pipeline.from_pretrained("diff2in1-test/no-such-model")
    assert "\n" not in str(e.value)


def test_predict_with_no_model_uses_the_demo_weights_and_says_so(tmp_path):
    from diff2in1.data.scenes import render_scene

    photo = tmp_path / "photo.jpg"
    Image.fromarray(render_scene(7, (96, 160)).image).save(photo)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "diff2in1.cli", "predict", str(photo), "--out", str(tmp_path / "p")]
        + ["--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "demo weights" in line]
    assert len(notes) == 1 and "procedural scenes" in notes[0]
    written = sorted(p.name for p in Path(tmp_path / "p").iterdir())
    assert "photo_normal.png" in written and "photo_normal.npy" in written
    assert np.load(tmp_path / "p" / "photo_normal.npy").shape == (96, 160, 3)
