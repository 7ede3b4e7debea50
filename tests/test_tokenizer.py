"""The shipped CLIP tokenizer files: the ids SD v1.x's text encoder expects.

The expected ids were computed with the package's former tokenizer, which rebuilt the vocabulary
from OpenAI's BPE merges (that rebuild now lives in scripts/make_tokenizer_files.py only).
"""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from diff2in1.tokenizer import clip_tokenizer

ROOT = Path(__file__).resolve().parents[1]
BOS, EOS = 49406, 49407

# caption -> ids without padding or truncation (bos ... eos)
EXPECTED = {
    "a photo of a living room with a sofa and a table": [
        BOS, 320, 1125, 539, 320, 2815, 1530, 593, 320, 15723, 537, 320, 2175, EOS,
    ],
    "": [BOS, EOS],
    "Hello, World!!! It's 3:45pm -- isn't it? (yes) [no] {maybe} #tag @user $9.99 50%": [
        BOS, 3306, 267, 1002, 995, 585, 568, 274, 281, 275, 276, 990, 2432, 2923, 713, 585, 286, 263,
        1958, 264, 314, 871, 316, 346, 3746, 348, 258, 3640, 287, 7031, 259, 280, 269, 280, 280, 276,
        271, 260, EOS,
    ],
    "Café naïve résumé — 東京タワー 🙂 Ünïcödé ﬁ": [
        BOS, 15304, 1097, 35689, 563, 29106, 7054, 4166, 2005, 48338, 21078, 105, 34941, 2429, 107,
        30391, 14860, 6522, 77, 35689, 66, 7255, 67, 4166, 171, 105, 479, EOS,
    ],
    "  Multiple   spaces\tand\nnewlines  ": [BOS, 6470, 9006, 537, 1218, 3418, EOS],
    "<|startoftext|>special tokens in text<|endoftext|>": [BOS, BOS, 1689, 23562, 530, 4160, EOS, EOS],
}  # fmt: skip
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)
LONG_IDS = [BOS] + [518, 3712, 2866, 3240, 18911, 962, 518, 10753, 1929] * 12 + [EOS]


@pytest.fixture(scope="module")
def tok() -> CLIPTokenizer:
    return clip_tokenizer()


@pytest.mark.parametrize("caption", list(EXPECTED))
def test_ids_equal_the_rebuilt_vocabulary(tok, caption):
    assert tok(caption).input_ids == EXPECTED[caption]
    padded = tok(caption, padding="max_length", max_length=77, truncation=True).input_ids
    want = EXPECTED[caption]
    assert padded == want + [EOS] * (77 - len(want))


def test_long_caption_is_truncated_to_77_with_eos_last(tok):
    assert tok(LONG).input_ids == LONG_IDS
    padded = tok(LONG, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    assert padded == LONG_IDS[:76] + [EOS]


def test_it_is_the_standard_clip_tokenizer(tok):
    assert isinstance(tok, CLIPTokenizer) and len(tok) == 49408 and tok.model_max_length == 77
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == (
        "<|startoftext|>",
        "<|endoftext|>",
        "<|endoftext|>",
        "<|endoftext|>",
    )
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (BOS, EOS, EOS)
    assert tok.decode(tok("A Photo of a cat.").input_ids, skip_special_tokens=True) == "a photo of a cat ."
    assert clip_tokenizer(max_length=32).model_max_length == 32


def test_files_ship_in_the_package():
    folder = resources.files("diff2in1.presets") / "clip-tokenizer"
    names = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
    assert all((folder / n).is_file() for n in names)
    merges = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 48894


def test_shipped_files_equal_the_rebuild_from_the_merges():
    script = ROOT / "scripts" / "make_tokenizer_files.py"
    run = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
