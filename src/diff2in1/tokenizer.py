"""Offline CLIP tokenizer built from the BPE merges shipped in the package.

The vocabulary is derived from the merges exactly as the original CLIP tokenizer does it:
256 byte symbols, the same with an end-of-word marker, one token per merge, then the two
special tokens. No file is fetched from a hub.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources

from transformers import CLIPTokenizer

N_MERGES = 49152 - 256 - 2  # CLIP's vocabulary is 49408 = 2 * 256 + merges + 2 specials


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins CLIP uses for raw bytes, in vocabulary order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in keep] + [table[b] for b in range(256) if b not in keep]


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    path = resources.files("diff2in1.assets") / "bpe_simple_vocab_16e6.txt.gz"
    with resources.as_file(path) as p, gzip.open(p, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : N_MERGES + 1]
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """The standard CLIP ViT-L/14 tokenizer (ids as in SD v1.x), built offline."""
    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab), merges=[tuple(m.split()) for m in merges], model_max_length=max_length
    )
