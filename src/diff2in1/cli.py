"""Command line: `diff2in1 <command> --help`. Parses arguments and calls the library; nothing else.

One module, longer than 600 lines, because it has one job: every command's flags are declared here,
each command a short function that parses and calls; their help texts and examples are in
`cli_help.py`. Split by command, the flags shared between commands would be scattered.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

from .errors import InputError, one_line
from .limits import MAX_RESOLUTION, MAX_SCENE_SIZE

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


def _int_at_least(minimum: int, rule: str) -> Callable[[str], int]:
    """An argparse type: an integer >= `minimum`, else the one-line `rule` with the value given."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{rule}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "must be at least 1")
_non_negative_int = _int_at_least(0, "must be 0 or more")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _seed(text: str) -> int:
    """An argparse type: a seed in 0 .. 2^63 - 1 (limits.py)."""
    from .limits import seed_problem

    value = _non_negative_int(text)
    problem = seed_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def _at_most(limit: int, parse: Callable[[str], int]) -> Callable[[str], int]:
    """An argparse type: `parse`, then at most `limit` (limits.py)."""

    def check(text: str) -> int:
        value = parse(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"at most {limit}, got {value}")
        return value

    return check


def _size(text: str) -> tuple[int, int]:
    """ "512" or "480x640" -> (height, width), at most limits.MAX_RESOLUTION a side."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use 512 or 480x640)") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use 512 or 480x640)")
    if max(parts) > MAX_RESOLUTION:
        raise argparse.ArgumentTypeError(f"at most {MAX_RESOLUTION} a side, got {text}")
    return parts[0], parts[1]


def _train_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by both training stages; unset flags keep the config file's / default value."""
    p.add_argument("--data", help="dataset root: <root>/<split>/{img,norm,caption} (see README)")
    p.add_argument("--backbone", help="preset name, diffusers folder or .ckpt/.safetensors")
    p.add_argument("--out", help="run folder (config, logs, checkpoints, final head)")
    p.add_argument("--config", help="YAML file of settings (see diff2in1/configs/); flags override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--split", help="split to train on (default train)")
    p.add_argument("--resolution", type=_size, help="model input size, e.g. 512 or 480x640 (default 512)")
    p.add_argument(
        "--resize",
        choices=["research", "nearest"],
        help="how data reach --resolution: research (default; the research loader's recipe) or nearest",
    )
    p.add_argument(
        "--drop-last",
        action=argparse.BooleanOptionalAction,
        help="leave out each epoch's short last batch (default: yes, as the research loader)",
    )
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument(
        "--max-steps", type=_non_negative_int, help="stop after this many optimizer steps (0 = no limit)"
    )
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=_seed)
    p.add_argument("--loss", choices=["ug_nll", "angular", "l2"])
    p.add_argument("--checkpoint-every", type=_non_negative_int, help="keep a head checkpoint every k epochs")
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"])
    p.add_argument("--grad-accum", type=_positive_int, help="gradient accumulation steps")
    p.add_argument(
        "--feature-cache",
        choices=["none", "memory", "disk"],
        help="reuse each image's taps across epochs (fixes its noise; see README)",
    )
    p.add_argument("--num-workers", type=_non_negative_int)
    p.add_argument(
        "--skip-bad-samples",
        action="store_const",
        const=True,
        help="leave out unreadable or unpaired samples (listed) instead of stopping",
    )
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False)


def _overrides(a: argparse.Namespace, config_class: type) -> dict:
    """The flags given on the command line for the fields of `config_class` (None = not given)."""
    import dataclasses

    return {f.name: getattr(a, f.name) for f in dataclasses.fields(config_class) if hasattr(a, f.name)}


def _require(cfg, names: list[str], command: str) -> None:
    missing = [n for n in names if not getattr(cfg, n)]
    if missing:
        raise InputError(f"{command}: missing " + ", ".join("--" + m.replace("_", "-") for m in missing))


@command("train-warmup", "stage 1: train the normal head on labelled data")
def _train_warmup(p: argparse.ArgumentParser) -> None:
    _train_args(p)
    p.add_argument(
        "--head", help="reference (research widths, default), small, or a head folder to start from"
    )
    p.add_argument(
        "--tasks",
        help="heads to train on one backbone pass, comma-separated from normals, depth, segmentation "
        "(default normals); each task's head is saved in <out>/head (normals), head_depth, "
        "head_segmentation",
    )
    for task in ("normals", "depth", "segmentation"):
        p.add_argument(f"--{task}-weight", type=float, help=f"weight of the {task} loss (default 1)")
    for task in ("depth", "segmentation"):
        p.add_argument(
            f"--{task}-head",
            help=f"reference, small or a {task} head folder to start from (default: --head's preset, "
            "reference when --head is a folder)",
        )
    p.add_argument(
        "--depth-loss",
        choices=["laplace_nll", "gaussian_nll"],
        help="likelihood of ln(depth) with a per-pixel scale (default laplace_nll)",
    )

    def run(a: argparse.Namespace) -> None:
        from .config import WarmupConfig, load_config
        from .stages.warmup import train_warmup

        cfg = load_config(WarmupConfig, a.config, **_overrides(a, WarmupConfig))
        _require(cfg, ["data", "backbone", "out"], "train-warmup")
        result = train_warmup(cfg, resume=a.resume)
        for sample_id, reason in result.skipped:
            print(f"skipped {sample_id}: {reason}")
        if cfg.tasks != "normals":
            print("samples with labels: " + ", ".join(f"{t} {n}" for t, n in result.label_counts.items()))
        saved = ", ".join(result.outputs.values())
        print(f"trained {result.steps} steps; head{'s' if len(result.outputs) > 1 else ''} saved to {saved}")

    p.set_defaults(func=run)


def _predictor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True, help="preset name, diffusers folder or .ckpt/.safetensors")
    p.add_argument(
        "--head",
        required=True,
        action="append",
        help="head folder (config.json + diffusion_pytorch_model.safetensors); repeat it for a head "
        "set, one head per task (e.g. a train-warmup --tasks run's head, head_depth, head_segmentation)",
    )
    p.add_argument(
        "--resolution", type=_size, help="model input size (default: the size the head was trained at)"
    )
    p.add_argument("--batch-size", type=_positive_int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the t=0 noise")
    p.add_argument(
        "--mixed-precision",
        choices=["no", "bf16", "fp16"],
        default="no",
        help="autocast the backbone (bf16 on recent GPUs and CPUs with bf16 instructions, fp16 on older "
        "GPUs / Apple)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")


def _check_model_flags(a: argparse.Namespace) -> None:
    """--pipeline, or --backbone with --head, or none (the shipped demo): checked before torch loads."""
    from .inference.sources import resolve_pretrained

    if a.pipeline is not None and (a.backbone is not None or a.head is not None):
        raise InputError("--pipeline: give either a pipeline or --backbone and --head, not both")
    if (a.backbone is None) != (a.head is None):
        raise InputError("--backbone and --head go together (or --pipeline; or neither, for the demo)")
    if a.pipeline is not None:
        resolve_pretrained(a.pipeline, local_files_only=True)  # a missing folder: one line, now


def _predictor(a: argparse.Namespace):
    from .backbone import autocast_dtype
    from .inference.predictor import NormalPredictor, TaskPredictor

    amp = autocast_dtype(a.mixed_precision)
    kw = {"device": a.device, "resolution": a.resolution, "seed": a.seed, "autocast_dtype": amp}
    if len(a.head) == 1 and _head_tasks(a.head) == ("normals",):
        return NormalPredictor.from_paths(a.backbone, a.head[0], **kw)
    return TaskPredictor.from_paths(a.backbone, a.head, **kw)


def _head_tasks(heads: list[str]) -> tuple[str, ...]:
    """The tasks of head folders (one-line errors for a folder that is no head, or two of a task)."""
    from .heads.dense_head import folder_task

    tasks = [folder_task(h) for h in heads]
    for i, t in enumerate(tasks):
        if t in tasks[:i]:
            raise InputError(f"--head {heads[i]}: a second {t} head; give one head per task")
    return tuple(t for t in ("normals", "depth", "segmentation") if t in tasks)


@command(
    "evaluate",
    "angular-error metrics (mean, median, rmse, share under 11.25/22.5/30 deg), per-image errors, a grid",
)
def _evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset root (<root>/<split>/{img,norm,caption})")
    p.add_argument("--split", default="test")
    p.add_argument(
        "--out", help="folder for metrics.json, per_image.csv, grid.png (default: <head>_eval_<split>)"
    )
    p.add_argument(
        "--limit", type=_non_negative_int, default=0, help="evaluate only the first N images (0 = all)"
    )
    p.add_argument(
        "--skip-bad-samples",
        action="store_true",
        help="leave out unreadable or unpaired samples (listed at the end) instead of stopping",
    )
    p.add_argument(
        "--max-depth",
        type=float,
        default=10.0,
        help="depth: ground truth beyond this many metres is left out (default 10, as for NYUv2)",
    )
    p.add_argument(
        "--eigen-crop", action="store_true", help="depth: only pixels inside the Eigen crop (default: all)"
    )
    _predictor_args(p)

    def run(a: argparse.Namespace) -> None:
        from pathlib import Path

        from .data import NormalsDataset
        from .data.multitask import MultiTaskDataset
        from .out_folder import check_output_folder, mark_output_folder
        from .path_overlap import refuse_overlap
        from .stages.evaluate import EVAL_FILES, evaluate, format_table, tables_markdown

        if not a.max_depth > 0:
            raise InputError(f"--max-depth: must be a positive number of metres, got {a.max_depth}")
        tasks = _head_tasks(a.head)
        # Bad data fails before any model loads.
        on_error = "skip" if a.skip_bad_samples else "raise"
        if tasks == ("normals",):
            NormalsDataset(a.data, a.split, size=None, on_error=on_error, captions=False)
        else:
            MultiTaskDataset(a.data, a.split, tasks, size=None, on_error=on_error, captions=False)
        first = Path(a.head[0])
        out = a.out or str(first.with_name(f"{first.resolve().name}_eval_{a.split}"))
        refuse_overlap(out, data=a.data, head=a.head, backbone=a.backbone)
        check_output_folder(out, "evaluate", EVAL_FILES.__contains__)  # no file of the user's overwritten
        predictor = _predictor(a)
        mark_output_folder(out, "evaluate")
        result = evaluate(
            predictor,
            a.data,
            a.split,
            out=out,
            batch_size=a.batch_size,
            progress=a.progress,
            limit=a.limit,
            skip_bad_samples=a.skip_bad_samples,
            max_depth=a.max_depth,
            eigen_crop=a.eigen_crop,
        )
        if tasks == ("normals",):
            from .stages.evaluate import format_table

            print(format_table({first.name: result.metrics}))
            print(f"{result.metrics['pixels']} pixels; written to {out}")
        else:
            print(tables_markdown(result, first.name))
            print(f"written to {out}")
        for sample_id, reason in result.skipped:
            print(f"skipped {sample_id}: {reason}")

    p.set_defaults(func=run)


@command("predict", "surface normals + uncertainty for your own images or folders")
def _predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (not inside an input folder)")
    p.add_argument(
        "--pipeline",
        help="pipeline folder (see export-pipeline / convert-research), a Hub id owner/name, or "
        "tiny-scenes (default when no model is given: the shipped demo weights, procedural scenes only)",
    )
    p.add_argument("--backbone", help="preset name, diffusers folder or .ckpt/.safetensors (with --head)")
    p.add_argument(
        "--head",
        action="append",
        help="head folder (with --backbone); repeat it for a head set, one head per task "
        "(normals, depth, segmentation): every task is predicted from one backbone pass",
    )
    p.add_argument(
        "--resolution", type=_at_most(MAX_RESOLUTION, int), help="model input size (default: the head's own)"
    )
    p.add_argument(
        "--resize-mode",
        choices=["squash", "keep_aspect"],
        help="squash to a square as in training (default), or keep the aspect ratio and pad",
    )
    p.add_argument(
        "--ensemble-size", type=_positive_int, default=1, help="noise draws + flips combined (default 1)"
    )
    p.add_argument("--batch-size", type=_positive_int, default=1)
    p.add_argument("--seed", type=_seed, default=0, help="seed of the noise")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--mixed-precision",
        choices=["no", "bf16", "fp16"],
        default="no",
        help="store the backbone in bf16/fp16 (bf16 on recent GPUs and CPUs with bf16 instructions)",
    )
    p.add_argument(
        "--skip-bad-files", action="store_true", help="skip unreadable images (listed) instead of stopping"
    )
    p.add_argument(
        "--uncertainty-max",
        type=_positive_float,
        default=45.0,
        help="colour scale of every uncertainty picture of the run: 0 to this many degrees",
    )
    p.add_argument(
        "--point-cloud",
        action="store_true",
        help="also write <stem>.ply per image: a point per pixel with depth, its colour and normal "
        "(needs a depth head)",
    )
    p.add_argument(
        "--intrinsics",
        help="camera of the point clouds: fx,fy,cx,cy in pixels of the input image (default: NYUv2's "
        "Kinect camera, 518.86,519.47,325.58,253.74 at 640x480, scaled to each image, since the "
        "heads are trained on NYUv2-like data)",
    )
    p.add_argument(
        "--fov", type=float, help="camera of the point clouds: horizontal field of view in degrees instead"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")

    def run(a: argparse.Namespace) -> None:
        from .backbone import weights_dtype
        from .distributed import init_from_launcher
        from .inference.pipeline_loading import load_pipeline
        from .inference.point_cloud import Intrinsics
        from .inference.predict_files import check_images, collect_images, is_prediction_file, predict_files
        from .inference.sources import DEMO_NOTE
        from .out_folder import check_output_folder, mark_output_folder
        from .path_overlap import refuse_overlap

        if a.intrinsics is not None and a.fov is not None:
            raise InputError("--intrinsics and --fov: give one camera, not both")
        if (a.intrinsics is not None or a.fov is not None) and not a.point_cloud:
            raise InputError("--intrinsics / --fov: only used with --point-cloud")
        intrinsics = Intrinsics.parse(a.intrinsics) if a.intrinsics is not None else None
        if a.fov is not None:
            Intrinsics.from_fov(1, 1, a.fov)  # checks the range before any model loads
        if a.point_cloud and a.head and "depth" not in _head_tasks(a.head):
            raise InputError("--point-cloud: needs a depth head (--head of a depth head folder)")
        if a.ensemble_size < 1 or a.batch_size < 1:
            raise InputError("--ensemble-size and --batch-size must be at least 1")
        if a.resolution is not None and (a.resolution <= 0 or a.resolution % 64):
            raise InputError(f"--resolution {a.resolution}: must be a positive multiple of 64")
        files = collect_images(a.inputs, a.out)  # bad input fails before any model loads
        if not a.skip_bad_files:
            check_images(files)
        refuse_overlap(a.out, pipeline=a.pipeline, backbone=a.backbone, head=a.head)
        check_output_folder(a.out, "predict", is_prediction_file)  # no file of the user's overwritten
        if a.pipeline is None and a.backbone is None and a.head is None:
            a.pipeline = "tiny-scenes"
            print(f"note: no model given; using the {DEMO_NOTE}", file=sys.stderr)
        pipe = load_pipeline(
            a.pipeline, a.backbone, a.head, init_from_launcher(a.device), weights_dtype(a.mixed_precision)
        )
        mark_output_folder(a.out, "predict")
        res = predict_files(
            pipe,
            a.inputs,
            a.out,
            processing_resolution=a.resolution,
            resize_mode=a.resize_mode,
            ensemble_size=a.ensemble_size,
            batch_size=a.batch_size,
            seed=a.seed,
            skip_bad_files=a.skip_bad_files,
            progress=a.progress,
            uncertainty_max=a.uncertainty_max,
            point_clouds=a.point_cloud,
            intrinsics=intrinsics,
            fov=a.fov,
        )
        for _path, reason in res.skipped:
            print(f"skipped {reason}")
        if not res.written:
            raise InputError("no image could be predicted")
        print(f"predicted {len(res.written)} image(s) into {a.out}")

    p.set_defaults(func=run, check=_check_model_flags)


@command(
    "export-pipeline", "write a pipeline folder (model_index.json + components) from a backbone and a head"
)
def _export_pipeline(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True, help="preset name, diffusers folder or .ckpt/.safetensors")
    p.add_argument(
        "--head",
        required=True,
        action="append",
        help="head folder; repeat it for a head set, one head per task (normals, depth, segmentation)",
    )
    p.add_argument("--out", required=True, help="pipeline folder to write (must not exist or be empty)")

    def run(a: argparse.Namespace) -> None:
        from .inference.convert import export_pipeline

        out = export_pipeline(a.backbone, a.head, a.out)
        print(f"pipeline written to {out}")

    p.set_defaults(func=run)


@command("convert-research", "turn the released research checkpoints into a pipeline folder")
def _convert_research(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fusion", required=True, help="checkpoint_<epoch>.pth (the fusion module)")
    p.add_argument("--decoder", required=True, help="checkpoint_bae_<epoch>.pth (the decoder)")
    p.add_argument("--backbone", required=True, help="the SD v1.5 model.ckpt / .safetensors / folder")
    p.add_argument("--out", required=True, help="pipeline folder to write (must not exist or be empty)")
    p.add_argument(
        "--resolution",
        type=_at_most(MAX_RESOLUTION, _positive_int),
        default=512,
        help="resolution the heads were trained at",
    )

    def run(a: argparse.Namespace) -> None:
        from .inference.convert import convert_research

        out = convert_research(a.fusion, a.decoder, a.backbone, a.out, resolution=a.resolution)
        print(f"pipeline written to {out}")

    p.set_defaults(func=run)


@command("make-scenes", "render procedural indoor scenes with exact normals as a dataset")
def _make_scenes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="dataset root to write")
    p.add_argument("--train", type=_positive_int, default=200, help="number of training scenes")
    p.add_argument("--test", type=_non_negative_int, default=50, help="number of test scenes")
    p.add_argument(
        "--size", type=_at_most(MAX_SCENE_SIZE, _positive_int), default=128, help="image size (square)"
    )
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--no-progress", dest="progress", action="store_false")

    def run(a: argparse.Namespace) -> None:
        from .data.scenes import make_scenes
        from .out_folder import claim_output_folder

        claim_output_folder(a.out, "make-scenes")  # a user's folder is refused; earlier scenes resumed
        make_scenes(a.out, a.train, a.test, a.size, a.seed, progress=a.progress)
        print(f"scenes written to {a.out}")

    p.set_defaults(func=run)


@command("create-data", "make synthetic RGB + normal pairs by partial noising and DDIM")
def _create_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="source dataset root")
    p.add_argument("--backbone", help="preset name, diffusers folder or .ckpt/.safetensors")
    p.add_argument("--head", help="head folder giving the synthetic normals (creation parameters)")
    p.add_argument(
        "--depth-head",
        help="depth head folder (e.g. a multi-task warm-up's head_depth): also write each sample's depth "
        "and its uncertainty from the same taps (default: none)",
    )
    p.add_argument(
        "--segmentation-head",
        help="segmentation head folder (e.g. head_segmentation): also write each sample's class map and "
        "class confidence from the same taps (default: none)",
    )
    p.add_argument("--out", help="output dataset root")
    p.add_argument("--config", help="YAML file of settings; flags override it")
    p.add_argument("--split", help="source split (default train)")
    p.add_argument("--resolution", type=_size, help="model size, e.g. 512 (default)")
    p.add_argument("--resize", choices=["research", "nearest"], help="how images reach --resolution")
    p.add_argument("--samples-per-image", type=_positive_int)
    p.add_argument("--t-start", type=_positive_int, help="noise level to start from (default 600)")
    p.add_argument("--steps", type=_positive_int, help="DDIM steps below t-start (default 50)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 1 = none)")
    p.add_argument("--seed", type=_seed)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"])
    p.add_argument("--shard", help="i/n: make only this machine's share (each sample exactly once overall)")
    p.add_argument("--preview", type=_non_negative_int, help="side-by-side pictures of the first N samples")
    p.add_argument("--device")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False)

    def run(a: argparse.Namespace) -> None:
        from .config import CreateConfig, load_config
        from .stages.create import run_create

        cfg = load_config(CreateConfig, a.config, **_overrides(a, CreateConfig))
        _require(cfg, ["data", "backbone", "head", "out"], "create-data")
        result = run_create(cfg)
        print(
            f"created {result.created} sample(s), {result.skipped} already there, "
            f"{result.created / max(result.seconds, 1e-9):.2f} samples/s; dataset in {result.out}"
        )

    p.set_defaults(func=run)


@command("train-self-improve", "stage 2: self-improving learning on original + synthetic data")
def _train_self_improve(p: argparse.ArgumentParser) -> None:
    _train_args(p)
    p.add_argument("--synthetic", action="append", help="synthetic dataset root (repeatable)")
    p.add_argument("--init", help="warm-up head folder: start of the creation and exploitation heads")
    p.add_argument(
        "--ema-decay", type=float, help="creation <- decay * creation + (1 - decay) * exploitation"
    )
    p.add_argument("--ema-every", type=_positive_int, help="EMA every k optimizer steps (default 10)")
    p.add_argument(
        "--recreate-every",
        type=_non_negative_int,
        help="re-create the synthetic set with the creation head every k epochs (0 = never)",
    )
    p.add_argument(
        "--pseudo-labels",
        choices=["research", "weighted", "filtered"],
        help="synthetic labels: research (default: every pixel alike), weighted by the creation head's "
        "confidence, or filtered to pixels at or above --pseudo-label-quantile of their image",
    )
    p.add_argument(
        "--pseudo-label-quantile",
        type=float,
        help="with --pseudo-labels filtered: the confidence quantile a pixel must reach (default 0.5)",
    )
    p.add_argument(
        "--tasks",
        help="tasks to self-improve on one backbone pass, comma-separated from normals, depth, "
        "segmentation (default normals); each gets a creation and an exploitation head",
    )
    for task in ("depth", "segmentation"):
        p.add_argument(
            f"--{task}-init",
            help=f"warm-up {task} head folder (default: head_{task} beside --init, as train-warmup "
            "--tasks saves it)",
        )
    for task in ("normals", "depth", "segmentation"):
        p.add_argument(f"--{task}-weight", type=float, help=f"weight of the {task} loss (default 1)")
    p.add_argument(
        "--depth-loss",
        choices=["laplace_nll", "gaussian_nll"],
        help="likelihood of ln(depth) with a per-pixel scale (default laplace_nll)",
    )

    def run(a: argparse.Namespace) -> None:
        from .config import SelfImproveConfig, load_config
        from .stages.self_improve import train_self_improve

        cfg = load_config(SelfImproveConfig, a.config, **_overrides(a, SelfImproveConfig))
        _require(cfg, ["data", "backbone", "out", "init"], "train-self-improve")
        result = train_self_improve(cfg, resume=a.resume)
        print(
            f"trained {result.steps} steps; heads saved to {result.outputs.get('creation')} and "
            f"{result.outputs.get('exploitation')}"
        )

    p.set_defaults(func=run)


@command("merge", "write original + synthetic datasets as one dataset folder (hard links where possible)")
def _merge(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="original dataset root (all its splits are kept)")
    p.add_argument("--synthetic", action="append", required=True, help="synthetic dataset root (repeatable)")
    p.add_argument("--out", required=True, help="merged dataset root")

    def run(a: argparse.Namespace) -> None:
        from .data.merge import merge_datasets

        n = merge_datasets(a.data, a.synthetic, a.out)
        print(f"merged {n} file(s) into {a.out}")

    p.set_defaults(func=run)


@command("caption", "fill missing caption files with a local image-to-text model (e.g. BLIP)")
def _caption(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--model", help="local folder of a transformers image-to-text model")
    p.add_argument("--split", action="append", help="split(s) to caption (default: every split)")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--max-new-tokens", type=_positive_int, default=30)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", dest="progress", action="store_false")

    def run(a: argparse.Namespace) -> None:
        from .captioning import caption_dataset

        n = caption_dataset(
            a.data,
            a.model,
            splits=a.split,
            batch_size=a.batch_size,
            max_new_tokens=a.max_new_tokens,
            device=a.device,
            progress=a.progress,
        )
        print(f"wrote {n} caption(s)")

    p.set_defaults(func=run)


@command("reproduce", "the whole method with the research recipe in one resumable command (NYUv2)")
def _reproduce(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        help="dataset root: <root>/{train,test}/{img,norm,caption} (with --tasks also depth/, seg/), "
        "or a NYUD-MT folder (images/, normals/, depth/, segmentation/, gt_sets/)",
    )
    p.add_argument("--backbone", help="SD v1.5 model.ckpt / .safetensors or diffusers folder")
    p.add_argument("--out", help="folder of the reproduction; run again to continue it")
    p.add_argument("--config", help="YAML of settings (default: diff2in1/configs/reproduce.yaml, the recipe)")
    p.add_argument("--caption-model", help="local image-to-text model folder (e.g. BLIP) if captions miss")
    p.add_argument("--dry-run", action="store_true", help="all stages on a few 64x64 images, in OUT/dry_run")
    p.add_argument("--plan", action="store_true", help="print each stage's passes, FLOPs, time, memory; exit")
    p.add_argument(
        "--tasks",
        help="comma-separated from normals, depth, segmentation (default normals, the research recipe): "
        "every stage trains, creates and evaluates one head per task on one backbone pass",
    )
    p.add_argument(
        "--pseudo-labels",
        choices=["research", "weighted", "filtered"],
        help="synthetic labels of the self-improvement (default research: every pixel alike)",
    )
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"])
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False)

    def run(a: argparse.Namespace) -> None:
        from .config import ReproduceConfig, load_config
        from .workflows.reproduce import plan, run_reproduce, with_flags

        cfg = load_config(ReproduceConfig, a.config, **_overrides(a, ReproduceConfig))
        cfg = with_flags(cfg, tasks=a.tasks, pseudo_labels=a.pseudo_labels)
        if a.plan:
            print(plan(cfg))
            return
        result = run_reproduce(cfg, dry_run=a.dry_run)
        if result.is_main:
            print(result.report.read_text())

    p.set_defaults(func=run)


@command("demo", "the whole method end to end on procedural scenes with the shipped tiny backbone")
def _demo(p: argparse.ArgumentParser) -> None:
    from .workflows.demo_settings import DEFAULT_PSEUDO_LABELS  # no torch: the parser stays fast

    p.add_argument(
        "--out", default="runs/demo", help="demo folder (resumes one made with the same settings)"
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run (~1 min): tiny sizes, checks every stage, no verdict"
    )
    p.add_argument("--backbone", help="backbone (default: the shipped tiny-scenes preset)")
    p.add_argument("--seed", type=_seed, help="seed of the procedural scenes (default 0)")
    p.add_argument(
        "--seeds", type=_seed, nargs="+", help="training seeds, one run of every stage each (default: 0 1)"
    )
    p.add_argument(
        "--tasks",
        help="tasks shown, comma-separated from normals, depth, segmentation; normals always (its head "
        "creates the data) (default: all three; normals alone is the quicker normals-only demo)",
    )
    p.add_argument(
        "--pseudo-labels",
        choices=["research", "weighted", "filtered"],
        help="synthetic labels of the self-improving stage: research (every pixel alike, the paper's), "
        "weighted by the creation head's confidence, or filtered to its confident pixels (default: "
        f"{DEFAULT_PSEUDO_LABELS})",
    )
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False)

    def run(a: argparse.Namespace) -> None:
        from .workflows.demo import DemoConfig, pick_threads, run_demo

        print(pick_threads(a.threads), flush=True)

        given = {
            "out": a.out,
            "backbone": a.backbone,
            "seed": a.seed,
            "seeds": a.seeds,
            "tasks": a.tasks,
            "pseudo_labels": a.pseudo_labels,
            "progress": a.progress,
        }
        kw = {k: v for k, v in given.items() if v is not None}
        cfg = DemoConfig.quick(**kw) if a.quick else DemoConfig(**kw)
        report = run_demo(cfg)
        print(report.read_text())
        if cfg.smoke:
            print("smoke run (--quick): every stage ran; too small to compare the arms, so no verdict")
        print(f"report written to {report}")

    p.set_defaults(func=run)


@command("app", "a local web page: normals of uploaded images, and new image + normal pairs (gradio)")
def _app(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pipeline", help="pipeline folder or shipped name (default: the demo weights, see --demo-steps)"
    )
    p.add_argument("--backbone", help="preset name, diffusers folder or .ckpt/.safetensors (with --head)")
    p.add_argument(
        "--head",
        action="append",
        help="head folder (with --backbone); repeat it for a head set, one head per task",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    p.add_argument(
        "--port", type=_at_most(65535, _positive_int), help="port (default: the first free one from 7860)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    p.add_argument(
        "--demo-steps",
        type=_non_negative_int,
        help="with no weights given: train a fresh demo head this many steps first (~0.5 s a step on "
        "CPU; 0 = untrained) instead of using the shipped demo head (the default)",
    )

    def run(a: argparse.Namespace) -> None:
        from .app import serve

        serve(a.pipeline, a.backbone, a.head, a.host, a.port, a.device, a.mixed_precision, a.demo_steps)

    p.set_defaults(func=run, check=_check_model_flags)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .cli_help import TOP_EXAMPLES, HelpFormatter, document, epilog

    parser = argparse.ArgumentParser(
        prog="diff2in1",
        description="One Stable Diffusion model for surface normals with uncertainty and "
        "multi-modal data generation (Diff-2-in-1).",
        epilog=epilog(TOP_EXAMPLES),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"diff2in1 {__version__}")
    parser.add_argument(
        "--threads", type=_positive_int, help="CPU threads for torch (default: torch's choice)"
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (help_text, add) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        document(name, p)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as `diff2in1: warning: ...` on one line (Python's form adds a file, line and source)."""
    print(f"diff2in1: warning: {one_line(message) or category.__name__}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from .cli_help import check_command_line
    from .termination import Terminated, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt(), warnings.catch_warnings():
            warnings.showwarning = _one_line_warning  # restored on leaving: main() may run in-process
            check_command_line(args)  # the command line's own mistakes: before torch and the models load
            if getattr(args, "device", None) is not None:  # before any model loads
                from .devices import check_device

                args.device = check_device(args.device)
            if args.command != "info":  # info says the same after its own look at the folder
                from .model_files import refuse_pickled_components

                for flag in ("backbone", "pipeline"):
                    refuse_pickled_components(getattr(args, flag, None))
            _quiet_library_bars()
            if args.threads:
                import torch

                torch.set_num_threads(args.threads)
            args.func(args)
    except InputError as e:
        print(f"diff2in1: error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a file system problem that no check above caught: still one line
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"diff2in1: error: {where}{e.strerror or one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"diff2in1: {how} ({INTERRUPTED.get(args.command, 'nothing was kept')})", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    return 0


def _quiet_library_bars() -> None:
    """The libraries' weight-loading bars say nothing a user needs (ours stay)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()


# What an interrupted command kept and how to go on.
INTERRUPTED = {
    "train-warmup": "the last finished step is saved; continue with the same command and --resume",
    "train-self-improve": "the last finished step is saved; continue with the same command and --resume",
    "create-data": "finished samples are kept; run the same command again to make the rest",
    "predict": "pictures written so far are kept; run again to predict all",
    "demo": "finished stages are kept; run the same command again to continue",
    "reproduce": "finished stages are kept; run the same command again to continue",
}


if __name__ == "__main__":
    sys.exit(main())
