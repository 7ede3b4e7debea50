"""What `diff2in1 <command> --help` says beyond each flag's own text, and the command line's own checks.

- every option shows its default (`HelpFormatter`; for flags whose value comes from the stage's
  config file, the config class's default);
- options a command needs but that `--config` may also give (`NEEDED`) appear without brackets in
  the usage line and say so in their help;
- options shared by several commands take their help from `OPTION_HELP` when they have none;
- each command's help ends with examples (`EXAMPLES`).

`check_command_line(args)` runs a command's checks that need no model (missing or conflicting
options, a pipeline folder that does not exist) before torch is imported. Imports no torch.
"""

from __future__ import annotations

import argparse
import dataclasses

from .errors import InputError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" ("none": unset) to options whose help does not state a default, and
    writes the options in `NEEDED` (marked `needed`) as required in the usage line."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = action.nargs == 0 or action.default is argparse.SUPPRESS or action.required
        if quiet or "default" in text.lower() or not action.option_strings or getattr(action, "needed", 0):
            return text
        return f"{text} (default: {'none' if action.default is None else '%(default)s'})"

    def _format_usage(self, usage, actions, groups, prefix):  # type: ignore[override]
        needed = [a for a in actions if getattr(a, "needed", False) and not a.required]
        for a in needed:
            a.required = True
        try:
            return super()._format_usage(usage, actions, groups, prefix)
        finally:
            for a in needed:
                a.required = False


# Help of options that several commands share, where the command gives none ("command --flag" first).
OPTION_HELP = {
    "--epochs": "training epochs (passes over the data)",
    "--batch-size": "images per batch",
    "train-warmup --batch-size": "images per optimizer step, over all processes together",
    "train-self-improve --batch-size": "images per optimizer step, over all processes together",
    "--lr": "learning rate (Adam)",
    "--seed": "random seed",
    "train-warmup --seed": "seed of the head's initialisation, the noise and the batch order",
    "train-self-improve --seed": "seed of the noise and the batch order",
    "create-data --seed": "seed of the noise (each sample's noise depends only on it and the sample)",
    "make-scenes --seed": "seed of the scenes (the same seed gives the same scenes)",
    "--loss": "training loss: ug_nll (uncertainty-guided NLL, the research loss), angular or l2",
    "--mixed-precision": "autocast: no, bf16 (recent GPUs, CPUs with bf16 instructions) or fp16 (older "
    "GPUs, Apple)",
    "--num-workers": "data-loading processes (0 = load in the training process)",
    "--device": "auto, cpu, cuda, cuda:1 or mps",
    "--no-progress": "no progress bars",
    "demo --no-progress": "no progress bars (still one line per stage)",
    "reproduce --no-progress": "no progress bars (still one line per stage)",
    "--split": "split of the dataset to use",
    "--samples-per-image": "synthetic samples made from each source image",
    "--max-new-tokens": "longest caption, in tokens",
    "--threads": "CPU threads for torch",
}

# command -> (config class in diff2in1.config, settings it needs from the flags or --config)
NEEDED = {
    "train-warmup": ("WarmupConfig", ("data", "backbone", "out")),
    "train-self-improve": ("SelfImproveConfig", ("data", "backbone", "out", "init")),
    "create-data": ("CreateConfig", ("data", "backbone", "head", "out")),
}
CONFIG_CLASSES = {**{k: v[0] for k, v in NEEDED.items()}, "reproduce": "ReproduceConfig"}

EXAMPLES = {
    "info": ["diff2in1 info", "diff2in1 info v1-5-pruned.safetensors"],
    "train-warmup": [
        "diff2in1 train-warmup --data nyu --backbone model.ckpt --out runs/warmup",
        "diff2in1 train-warmup --data scenes --backbone tiny-scenes --head small --resolution 128 "
        "--out runs/w --epochs 8",
    ],
    "evaluate": ["diff2in1 evaluate --data nyu --backbone model.ckpt --head runs/si/exploitation"],
    "predict": [
        "diff2in1 predict photo.jpg --out preds/      # the shipped demo weights",
        "diff2in1 predict photos/ --pipeline diff2in1-nyu --out preds/ --resize-mode keep_aspect",
    ],
    "export-pipeline": [
        "diff2in1 export-pipeline --backbone model.ckpt --head runs/si/exploitation --out my-pipeline"
    ],
    "convert-research": [
        "diff2in1 convert-research --fusion checkpoint_N.pth --decoder checkpoint_bae_N.pth "
        "--backbone v1-5-pruned.safetensors --out diff2in1-nyu"
    ],
    "make-scenes": ["diff2in1 make-scenes --out scenes --train 200 --test 50"],
    "create-data": [
        "diff2in1 create-data --data nyu --backbone model.ckpt --head runs/warmup/head --out syn",
        "diff2in1 create-data --data nyu --backbone model.ckpt --head runs/mt/head "
        "--depth-head runs/mt/head_depth --segmentation-head runs/mt/head_segmentation --out syn_mt",
    ],
    "train-self-improve": [
        "diff2in1 train-self-improve --data nyu --synthetic syn --backbone model.ckpt "
        "--init runs/warmup/head --out runs/si",
        "diff2in1 train-self-improve --data nyu --synthetic syn_mt --backbone model.ckpt "
        "--init runs/mt/head --tasks normals,depth,segmentation --out runs/si_mt",
    ],
    "merge": ["diff2in1 merge --data nyu --synthetic syn --out nyu_plus_syn"],
    "caption": ["diff2in1 caption --data nyu --model path/to/local/blip"],
    "reproduce": [
        "diff2in1 reproduce --data nyu --backbone model.ckpt --out runs/repro",
        "diff2in1 reproduce --data nyu --backbone model.ckpt --out runs/repro --plan",
    ],
    "demo": [
        "diff2in1 demo",
        "diff2in1 demo --quick --out runs/quick",
        "diff2in1 demo --tasks normals --out runs/demo_normals",
        "diff2in1 demo --pseudo-labels weighted --out runs/demo_weighted",
    ],
    "app": ["diff2in1 app", "diff2in1 app --pipeline diff2in1-nyu --host 0.0.0.0 --port 8080"],
}
TOP_EXAMPLES = ["diff2in1 predict photo.jpg --out preds/", "diff2in1 demo", "diff2in1 predict --help"]


def epilog(lines: list[str]) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _shown(value) -> str | None:
    """A config default as the help shows it; None for an unset one ("", [], {})."""
    if value in ("", None) or isinstance(value, (bool, dict)) or (isinstance(value, list) and not value):
        return None
    if isinstance(value, tuple) and len(value) == 2:
        return str(value[0]) if value[0] == value[1] else f"{value[0]}x{value[1]}"
    return str(value)


def document(name: str, parser: argparse.ArgumentParser) -> None:
    """Give `parser` (the subcommand `name`) the formatter, shared help, defaults, marks and examples."""
    parser.formatter_class = HelpFormatter
    parser.epilog = epilog(EXAMPLES[name])
    defaults = {}
    if name in CONFIG_CLASSES:  # plain defaults only: a default factory may import torch
        from . import config

        fields = dataclasses.fields(getattr(config, CONFIG_CLASSES[name]))
        defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    needed = NEEDED.get(name, ("", ()))[1]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[-1] if action.option_strings else action.dest
        if not action.help:
            action.help = OPTION_HELP.get(f"{name} {flag}") or OPTION_HELP.get(flag)
        if action.dest in needed:
            action.needed = True
            action.help = f"{action.help} (required: here or in --config)"
        elif action.default is None and "default" not in (action.help or "").lower():
            shown = _shown(defaults.get(action.dest))
            if shown is not None:
                action.help = f"{action.help} (default: {shown.replace('%', '%%')})"


def check_command_line(args: argparse.Namespace) -> None:
    """The command's checks that need no model, before torch loads: InputError in one line."""
    check = getattr(args, "check", None)
    if check is not None:
        check(args)
    if args.command in NEEDED:
        from . import config

        cls_name, needed = NEEDED[args.command]
        cls = getattr(config, cls_name)
        given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
        cfg = config.load_config(cls, args.config, **given)
        missing = [n for n in needed if not getattr(cfg, n)]
        if missing:
            flags = ", ".join("--" + m.replace("_", "-") for m in missing)
            raise InputError(f"{args.command}: missing {flags} (give it as a flag or in --config)")
