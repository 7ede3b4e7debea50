"""Command line: `diff2in1 <command> --help`. Parses arguments and calls the library; nothing else."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .errors import InputError

COMMANDS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def command(name: str, help: str):
    """Register `fn(parser)` that adds a subcommand's arguments and sets `func`."""

    def wrap(fn: Callable[[argparse.ArgumentParser], None]):
        COMMANDS[name] = (help, fn)
        return fn

    return wrap


# ------------------------------------------------------------------ info
@command("info", "versions, device and what a backbone source holds")
def _info(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", help="preset name, diffusers folder or .ckpt/.safetensors file")

    def run(a: argparse.Namespace) -> None:
        from .info import describe

        print(describe(a.source))

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="diff2in1",
        description="One Stable Diffusion model for surface normals with uncertainty and "
        "multi-modal data generation (Diff-2-in-1).",
    )
    parser.add_argument("--version", action="version", version=f"diff2in1 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (help_text, add) in COMMANDS.items():
        add(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        args.func(args)
    except InputError as e:
        print(f"diff2in1: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diff2in1: interrupted (checkpoints written so far are kept; use --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
