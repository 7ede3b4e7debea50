"""`caption_dataset` with a tiny random BLIP built here (no network, no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diff2in1.captioning import caption_dataset
from diff2in1.data.layout import sample_paths
from diff2in1.errors import InputError
from diff2in1.imaging.files import save_png, save_text

RESERVED_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["a", "cat", "dog", "on", "the", "mat", "red", "blue"]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    """A tiny random BlipForConditionalGeneration + BlipProcessor saved as a model folder."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    out = tmp_path_factory.mktemp("tiny_blip")
    vocab_file = out / "vocab.txt"
    vocab_file.write_text("\n".join(RESERVED_TOKENS + WORDS) + "\n", encoding="utf-8")
    tok = BertTokenizer(vocab=str(vocab_file))
    vocab = tok.get_vocab()
    assert all(t in vocab for t in RESERVED_TOKENS)
    text = dict(
        vocab_size=len(RESERVED_TOKENS) + len(WORDS),
        hidden_size=32,
        encoder_hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        sep_token_id=tok.sep_token_id,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    cfg = BlipConfig(text_config=text, vision_config=vision, projection_dim=16, image_text_hidden_size=16)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(cfg).eval()
    # Random weights could pick special tokens (decoded to ""): make the word "cat" win every step.
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[vocab["cat"]] = 100.0
    model.save_pretrained(out)
    BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok
    ).save_pretrained(out)
    vocab_file.unlink()  # the saved tokenizer.json must suffice
    return out


def _dataset(root, captioned: dict[str, str]):
    rng = np.random.default_rng(0)
    for i, name in enumerate(["s0", "s1", "s2"]):
        ext = ".jpg" if i == 1 else ".png"
        pixels = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
        path = root / "train" / "img" / f"{name}{ext}"
        if ext == ".png":
            save_png(path, pixels)
        else:
            from PIL import Image

            Image.fromarray(pixels).save(path)
    for name, text in captioned.items():
        save_text(root / "train" / "caption" / f"{name}.txt", text)
    (root / "other").mkdir()  # no img/: not a split


def test_caption_fills_only_missing(tmp_path, blip_dir):
    root = tmp_path / "data"
    _dataset(root, {"s1": "an existing caption\n"})
    before = sample_paths(root, "train", "s1").caption.stat().st_mtime_ns

    n = caption_dataset(root, str(blip_dir), batch_size=2, max_new_tokens=4, device="cpu", progress=False)
    assert n == 2
    for sid in ("s0", "s2"):
        text = sample_paths(root, "train", sid).caption.read_text(encoding="utf-8")
        assert text.endswith("\n") and text.count("\n") == 1
        assert text.strip() and "cat" in text.split()
    p1 = sample_paths(root, "train", "s1").caption
    assert p1.read_text(encoding="utf-8") == "an existing caption\n"
    assert p1.stat().st_mtime_ns == before
    assert sorted(f.name for f in (root / "train" / "caption").iterdir()) == ["s0.txt", "s1.txt", "s2.txt"]

    # Nothing missing: 0, and no model is needed.
    assert caption_dataset(root, str(blip_dir), progress=False) == 0
    assert caption_dataset(root, None, splits=["train"], progress=False) == 0


def test_caption_errors(tmp_path):
    root = tmp_path / "data"
    _dataset(root, {"s1": "x\n"})
    with pytest.raises(InputError, match="--model") as e:
        caption_dataset(root, None, progress=False)
    assert "\n" not in str(e.value)

    bad = tmp_path / "no_such_model"
    with pytest.raises(InputError, match="no_such_model") as e:
        caption_dataset(root, str(bad), progress=False)
    assert "\n" not in str(e.value)

    not_a_model = tmp_path / "empty_model"
    not_a_model.mkdir()
    with pytest.raises(InputError, match="empty_model.*no config.json") as e:
        caption_dataset(root, str(not_a_model), device="cpu", progress=False)
    assert "\n" not in str(e.value)

    (not_a_model / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")  # not image-to-text
    with pytest.raises(InputError, match="cannot load .*empty_model as a transformers image-to-text") as e:
        caption_dataset(root, str(not_a_model), device="cpu", progress=False)
    assert "\n" not in str(e.value)

    with pytest.raises(InputError, match="nope"):
        caption_dataset(root, None, splits=["nope"], progress=False)
