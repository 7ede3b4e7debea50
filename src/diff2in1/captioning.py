"""`diff2in1 caption`: fill missing caption files with a local transformers image-to-text model.

Any captioning model that `AutoModelForImageTextToText` knows and that captions from the image alone
works (BLIP, GIT, vision-encoder-decoder such as ViT-GPT2, BLIP-2, ...). The model is loaded from
a local folder only (`local_files_only=True`); nothing is downloaded. Chat models that need a text
prompt are not supported.

Only missing captions are written: a sample whose `caption/<id>.txt` exists with text is skipped
(an empty or whitespace-only file counts as missing). Each caption is written atomically as one
line, so an interrupted run can simply be started again.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diff2in1.data.layout import IMG_DIR, list_ids, read_caption, sample_paths
from diff2in1.errors import InputError
from diff2in1.imaging.files import load_rgb, save_text

NO_MODEL_MESSAGE = (
    "caption: give --model PATH, a local folder of a transformers image-to-text model (e.g. BLIP); "
    "nothing is downloaded"
)


@dataclass(frozen=True)
class _Job:
    split: str
    id: str
    image: Path
    caption: Path


def _one_line(text: Any, limit: int = 300) -> str:
    """An exception message squeezed onto one line (and cut to `limit` characters)."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _default_splits(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / IMG_DIR).is_dir())


def find_missing(root: str | os.PathLike, splits: list[str] | None = None) -> tuple[list[_Job], int]:
    """(samples without a caption, number of samples that already have one) over `splits`.

    splits: None = every subfolder of `root` holding an `img/` folder.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"caption: {root}: no such dataset folder")
    if splits is None:
        splits = _default_splits(root)
        if not splits:
            raise InputError(f"caption: {root}: no split folder with an {IMG_DIR}/ subfolder")
    missing: list[_Job] = []
    have = 0
    for split in dict.fromkeys(splits):  # keep order, drop repeats
        if not (root / split / IMG_DIR).is_dir():
            raise InputError(f"caption: {root / split / IMG_DIR}: no such folder (split {split!r})")
        for sample_id in list_ids(root, split):
            paths = sample_paths(root, split, sample_id)
            if read_caption(paths.caption):
                have += 1
            else:
                missing.append(_Job(split, sample_id, paths.image, paths.caption))
    return missing, have


def resolve_device(device: str) -> str:
    """The device name for the captioning model (devices.py: checked, `auto` resolved)."""
    from diff2in1.devices import resolve_device as resolve

    return str(resolve(device, "caption: --device"))


class _Captioner:
    """A loaded model plus the callables that turn images into inputs and ids into text."""

    def __init__(self, model_path: str | os.PathLike, device: str):
        import torch
        import transformers as tf

        path = Path(model_path).expanduser()
        if not path.exists():
            raise InputError(f"caption: model {path}: no such folder")
        if not path.is_dir():
            raise InputError(
                f"caption: model {path}: not a folder (expected a transformers model folder with config.json)"
            )
        if not (path / "config.json").is_file():
            raise InputError(f"caption: model {path}: no config.json here (not a transformers model folder)")
        self.path = path
        self.device = device
        dtype = torch.float32
        if torch.device(device).type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        step = "model"
        try:
            self.model = tf.AutoModelForImageTextToText.from_pretrained(
                path, local_files_only=True, dtype=dtype
            )
            step = "processor"
            proc = tf.AutoProcessor.from_pretrained(path, local_files_only=True)
            # Folders without a processor_config (e.g. ViT-GPT2) give only one half: load the other.
            if isinstance(proc, tf.ProcessorMixin):
                self.encode = proc
                self.tokenizer = getattr(proc, "tokenizer", None) or proc
            elif isinstance(proc, tf.PreTrainedTokenizerBase):
                step = "image processor"
                self.encode = tf.AutoImageProcessor.from_pretrained(path, local_files_only=True)
                self.tokenizer = proc
            else:
                step = "tokenizer"
                self.encode = proc
                self.tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
        except InputError:
            raise
        except Exception as e:  # transformers raises OSError, ValueError, KeyError, ... here
            raise InputError(
                f"caption: cannot load {path} as a transformers image-to-text model "
                f"({step}: {type(e).__name__}: {_one_line(e)})"
            ) from None
        try:
            self.model.to(device).eval()
        except (RuntimeError, AssertionError) as e:
            raise InputError(f"caption: cannot move the model to {device} ({_one_line(e)})") from None

    def __call__(self, images: list[Any], max_new_tokens: int) -> list[str]:
        import torch

        try:
            inputs = self.encode(images=images, return_tensors="pt")
            inputs = {
                k: (v.to(self.device, self.model.dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in inputs.items()
                if isinstance(v, torch.Tensor)
            }
            with torch.inference_mode():
                out = self.model.generate(**inputs, max_new_tokens=max_new_tokens)
        except Exception as e:
            raise InputError(
                f"caption: model {self.path} failed to caption images ({type(e).__name__}: {_one_line(e)}); "
                "it must caption from the image alone (chat models that need a prompt are not supported)"
            ) from None
        prompt = inputs.get("input_ids")
        if (
            prompt is not None
            and out.shape[1] >= prompt.shape[1]
            and torch.equal(out[:, : prompt.shape[1]], prompt.to(out.device))
        ):
            out = out[:, prompt.shape[1] :]  # decoder-only models echo their prompt
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]


def caption_dataset(
    root: str | os.PathLike,
    model: str | os.PathLike | None,
    splits: list[str] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 30,
    device: str = "auto",
    progress: bool = True,
) -> int:
    """Write `caption/<id>.txt` for every image of `splits` that has none; return how many were written.

    root: dataset root (`<root>/<split>/img/<id>.png|.jpg`). model: local folder of a transformers
    image-to-text model; needed only when some caption is missing. splits: None = every subfolder
    of root holding an `img/` folder. device: "auto" (cuda if available, else cpu) or a torch
    device name. A model output that is empty after removing special tokens is not written
    (a warning names the samples), so the next run tries them again.
    """
    if batch_size < 1:
        raise InputError(f"caption: --batch-size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise InputError(f"caption: --max-new-tokens must be >= 1, got {max_new_tokens}")
    missing, have = find_missing(root, splits)
    if progress:
        print(f"caption: {have} image(s) already captioned, {len(missing)} missing", file=sys.stderr)
    if not missing:
        return 0
    if model is None or not str(model).strip():
        raise InputError(NO_MODEL_MESSAGE)
    dev = resolve_device(device)
    captioner = _Captioner(model, dev)

    from PIL import Image
    from tqdm.auto import tqdm

    written = 0
    empty: list[str] = []
    with tqdm(total=len(missing), desc="caption", unit="img", disable=not progress) as bar:
        for start in range(0, len(missing), batch_size):
            batch = missing[start : start + batch_size]
            images = [Image.fromarray(load_rgb(job.image)) for job in batch]
            texts = captioner(images, max_new_tokens)
            for job, text in zip(batch, texts, strict=True):
                if text:
                    save_text(job.caption, text + "\n")
                    written += 1
                else:
                    empty.append(f"{job.split}/{job.id}")
            bar.update(len(batch))
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        warnings.warn(
            f"caption: the model gave an empty caption for {len(empty)} image(s) ({shown}); not written",
            stacklevel=2,
        )
    return written


__all__ = ["NO_MODEL_MESSAGE", "caption_dataset", "find_missing", "resolve_device"]
