"""`diff2in1 demo --quick` end to end: every stage runs and the report has all its parts."""

from __future__ import annotations

import json

from PIL import Image

from diff2in1.backbone import PRESETS
from diff2in1.cli import main


def test_demo_quick_writes_report_with_figures(tmp_path, capsys):
    backbone = "tiny-scenes" if _shipped() else "tiny"
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--backbone", backbone, "--no-progress"]) == 0
    report = (out / "report.md").read_text()
    for part in (
        "## Verdict",
        "| warm-up |",
        "| self-improved (exploitation) |",
        "| control",
        "<11.25",
        "fig_samples.png",
        "fig_losses.png",
        "synthetic/preview_0_0.png",
    ):
        assert part in report, part
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {
        "warm-up",
        "self-improved (exploitation)",
        "self-improved (creation)",
        "control (warm-up + same steps, original data)",
    }
    for m in metrics.values():
        assert 0 <= m["mean"] <= 180 and 0 <= m["a30"] <= 100
    for fig in ("fig_samples.png", "fig_losses.png", "synthetic/preview_0_0.png"):
        assert Image.open(out / fig).size[0] > 200
    # The control ran exactly as many steps as the self-improving stage.
    si = (out / "self_improve" / "log.csv").read_text().strip().splitlines()
    control = (out / "control" / "log.csv").read_text().strip().splitlines()
    assert len(si) == len(control) > 1
    # Running again resumes: nothing is re-trained, the same report comes back.
    assert main(["demo", "--quick", "--out", str(out), "--backbone", backbone, "--no-progress"]) == 0
    assert (out / "self_improve" / "log.csv").read_text().strip().splitlines() == si
    assert "report written to" in capsys.readouterr().out


def _shipped() -> bool:
    from importlib import resources

    return (
        "tiny-scenes" in PRESETS
        and (
            resources.files("diff2in1.presets")
            / "tiny-scenes"
            / "unet"
            / "diffusion_pytorch_model.safetensors"
        ).is_file()
    )
