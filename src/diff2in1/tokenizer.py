"""Offline CLIP tokenizer: the standard tokenizer files shipped in the package.

`presets/clip-tokenizer/` holds vocab.json, merges.txt, tokenizer_config.json and
special_tokens_map.json as the `tokenizer/` folder of openai/clip-vit-large-patch14 (and SD v1.x)
has them; transformers loads them itself. They were written once by
scripts/make_tokenizer_files.py from OpenAI's BPE merges. No file is fetched from a hub.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from transformers import CLIPTokenizer

FOLDER = "clip-tokenizer"


def tokenizer_dir() -> Path:
    """The shipped tokenizer folder (a real directory: package data is installed as files)."""
    return Path(str(resources.files("diff2in1.presets") / FOLDER))


def clip_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """The standard CLIP ViT-L/14 tokenizer (ids as in SD v1.x), loaded offline (~40 ms)."""
    return CLIPTokenizer.from_pretrained(tokenizer_dir(), local_files_only=True, model_max_length=max_length)
