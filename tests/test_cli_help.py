"""The command line's help is complete, and its own mistakes are reported before torch loads."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from diff2in1.cli import build_parser
from diff2in1.cli_help import NEEDED, HelpFormatter


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_option_has_help_and_shows_its_default():
    fmt = HelpFormatter("diff2in1")
    for name, p in subcommands().items():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            what = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{what}: no help text"
            text = fmt._get_help_string(action) % {"default": action.default}
            flag = action.nargs == 0  # a switch: its default is off
            required = action.required or getattr(action, "needed", False) or not action.option_strings
            assert flag or required or "default" in text.lower(), f"{what}: shows no default: {text!r}"


def test_every_command_ends_with_an_example():
    for name, p in subcommands().items():
        text = p.format_help()
        examples = text.split("examples:\n", 1)
        assert len(examples) == 2, f"{name}: no examples"
        assert examples[1].lstrip().startswith(f"diff2in1 {name}"), name


def test_needed_options_are_not_bracketed_in_the_usage_line():
    commands = subcommands()
    for name, (_, needed) in NEEDED.items():
        usage = " ".join(commands[name].format_usage().split())
        for dest in needed:
            flag = "--" + dest.replace("_", "-")
            assert f" {flag} " in usage and f"[{flag} " not in usage, (name, usage)
    predict = " ".join(commands["predict"].format_usage().split())
    assert " --out OUT" in predict and "[--out" not in predict


def _cli_in_fresh_process(argv: list[str], cwd) -> dict:
    """Run main(argv) in a new interpreter; its exit status, stderr lines and whether torch loaded."""
    code = (
        "import contextlib, io, json, sys\n"
        "from diff2in1.cli import main\n"
        "err = io.StringIO()\n"
        "with contextlib.redirect_stderr(err):\n"
        "    try:\n"
        f"        rc = main({argv!r})\n"
        "    except SystemExit as e:\n"
        "        rc = e.code\n"
        "print(json.dumps({'rc': rc, 'err': err.getvalue().strip().splitlines(), "
        "'torch': 'torch' in sys.modules}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["predict", "photo.jpg", "--out", "p", "--pipeline"], "expected one argument"),
        (["predict", "photo.jpg", "--out", "p", "--pipeline", "x", "--backbone", "y"], "not both"),
        (["predict", "photo.jpg", "--out", "p", "--backbone", "tiny-scenes"], "go together"),
        (["predict", "photo.jpg", "--out", "p", "--pipeline", "diff2in1-nyu"], "no such pipeline folder"),
        (["app", "--head", "h"], "go together"),
        (["train-warmup", "--out", "runs/w"], "missing --data, --backbone"),
        (["create-data", "--data", "d", "--backbone", "b", "--out", "o"], "missing --head"),
    ],
)
def test_command_line_mistakes_fail_in_one_line_before_torch_loads(tmp_path, argv, says):
    (tmp_path / "photo.jpg").write_bytes(b"")
    res = _cli_in_fresh_process(argv, tmp_path)
    assert res["rc"] == 2
    last = res["err"][-1]  # argparse's own errors name the command: "diff2in1 predict: error: ..."
    assert says in last and last.startswith("diff2in1") and ": error: " in last, res["err"]
    assert not res["torch"], "torch was imported before a command-line mistake was reported"
