"""Write a backbone as a diffusers folder (the layout `load_backbone` reads)."""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import umask_mode
from .backbone import Backbone


def save_diffusers_folder(backbone: Backbone, out: str | Path) -> Path:
    """Save VAE, UNet, text encoder, tokenizer and scheduler config under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    backbone.vae.save_pretrained(out / "vae")
    backbone.unet.save_pretrained(out / "unet")
    backbone.text_encoder.save_pretrained(out / "text_encoder")
    backbone.tokenizer.save_pretrained(out / "tokenizer")
    backbone.scheduler.save_pretrained(out / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "vae": ["diffusers", "AutoencoderKL"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=1))
    umask_mode(out)  # safetensors writes its files private to their owner
    return out
