"""Regenerate src/diff2in1/configs/*.yaml from the config dataclasses (a test checks they match)."""

from pathlib import Path

from diff2in1.config import CreateConfig, ReproduceConfig, SelfImproveConfig, WarmupConfig, default_yaml

HEAD = (
    "# Defaults of `diff2in1 {cmd}` (docs/method.md {spec}).\n"
    "# Copy, edit, pass with --config; flags override it.\n"
)
REPRODUCE_NOTE = (
    "# The research recipe of Diff-2-in-1 on NYUv2 in one file. The top settings apply to every\n"
    "# stage; each section holds one stage's own settings (those of train-warmup, create-data,\n"
    "# train-self-improve, evaluate), and a setting left out takes that stage's default.\n"
    "# `diff2in1 reproduce` copies the resolved file to <out>/reproduce.yaml.\n"
)
OUT = Path(__file__).resolve().parents[1] / "src" / "diff2in1" / "configs"

for name, cls, cmd, spec in (
    ("warmup", WarmupConfig, "train-warmup", "section 6"),
    ("self_improve", SelfImproveConfig, "train-self-improve", "section 8"),
    ("create", CreateConfig, "create-data", "section 7"),
    ("reproduce", ReproduceConfig, "reproduce", "sections 5-9"),
):
    note = REPRODUCE_NOTE if name == "reproduce" else ""
    (OUT / f"{name}.yaml").write_text(HEAD.format(cmd=cmd, spec=spec) + note + default_yaml(cls))
    print(f"wrote {OUT / name}.yaml")
