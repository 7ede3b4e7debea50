"""Write src/diff2in1/presets/clip-tokenizer/ (SD v1.x's CLIP ViT-L/14 tokenizer) from OpenAI's BPE merges.

Run once; the output is committed and loaded by `diff2in1.tokenizer.clip_tokenizer()` with
`CLIPTokenizer.from_pretrained`. Input: scripts/data/bpe_simple_vocab_16e6.txt.gz, the merges file
OpenAI ships with CLIP (its first line is a header, then one merge per line, most frequent first).

The vocabulary is derived from the merges exactly as the original CLIP tokenizer does it: 256
byte symbols, the same with an end-of-word marker, one token per merge (the first 48894 merges),
then the two special tokens: 49408 ids. The four files have the layout and contents of the
`tokenizer/` folder of openai/clip-vit-large-patch14 (and of SD v1.5): vocab.json (keys sorted,
one line), merges.txt (`#version: 0.2` then the merges), tokenizer_config.json,
special_tokens_map.json. Nothing is fetched from a hub.

    python scripts/make_tokenizer_files.py [--out DIR] [--check]

`--check` compares the written folder with what would be written and exits 1 on a difference.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MERGES_GZ = ROOT / "scripts" / "data" / "bpe_simple_vocab_16e6.txt.gz"
OUT = ROOT / "src" / "diff2in1" / "presets" / "clip-tokenizer"
N_MERGES = 49152 - 256 - 2  # CLIP's vocabulary is 49408 = 2 * 256 + merges + 2 specials
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins CLIP uses for raw bytes, in vocabulary order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in keep] + [table[b] for b in range(256) if b not in keep]


def vocab_and_merges(path: Path = MERGES_GZ) -> tuple[dict[str, int], list[str]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : N_MERGES + 1]
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens) or len(vocab) != 49408:
        raise SystemExit(f"{path}: expected 49408 distinct tokens, got {len(vocab)} of {len(tokens)}")
    return vocab, merges


def _added(content: str, typed: bool) -> dict:
    tok = {"content": content, "single_word": False, "lstrip": False, "rstrip": False, "normalized": True}
    return {**tok, "__type": "AddedToken"} if typed else tok


def files() -> dict[str, str]:
    """File name -> exact text."""
    vocab, merges = vocab_and_merges()
    config = {
        "unk_token": _added(EOS, True),
        "bos_token": _added(BOS, True),
        "eos_token": _added(EOS, True),
        "pad_token": EOS,
        "add_prefix_space": False,
        "errors": "replace",
        "do_lower_case": True,
        "name_or_path": "openai/clip-vit-large-patch14",
        "model_max_length": 77,
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
    }
    special = {
        "bos_token": _added(BOS, False),
        "eos_token": _added(EOS, False),
        "unk_token": _added(EOS, False),
        "pad_token": EOS,
    }
    return {
        "vocab.json": json.dumps(vocab, sort_keys=True, ensure_ascii=False),
        "merges.txt": "\n".join(["#version: 0.2", *merges]),  # no newline after the last merge
        "tokenizer_config.json": json.dumps(config, indent=2),
        "special_tokens_map.json": json.dumps(special),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = p.parse_args(argv)
    bad = 0
    for name, text in files().items():
        path = args.out / name
        if args.check:
            same = path.is_file() and path.read_text(encoding="utf-8") == text
            print(f"{'ok  ' if same else 'DIFF'} {path}")
            bad += not same
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="\n")
            print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
