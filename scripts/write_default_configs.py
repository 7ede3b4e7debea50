"""Regenerate src/diff2in1/configs/*.yaml from the config dataclasses (a test checks they match)."""

from pathlib import Path

from diff2in1.config import CreateConfig, SelfImproveConfig, WarmupConfig, default_yaml

HEAD = (
    "# Defaults of `diff2in1 {cmd}` (docs/method.md section {spec}).\n"
    "# Copy, edit, pass with --config; flags override it.\n"
)
OUT = Path(__file__).resolve().parents[1] / "src" / "diff2in1" / "configs"

for name, cls, cmd, spec in (
    ("warmup", WarmupConfig, "train-warmup", "6"),
    ("self_improve", SelfImproveConfig, "train-self-improve", "8"),
    ("create", CreateConfig, "create-data", "7"),
):
    (OUT / f"{name}.yaml").write_text(HEAD.format(cmd=cmd, spec=spec) + default_yaml(cls))
    print(f"wrote {OUT / name}.yaml")
