"""Write a backbone as a diffusers folder (the layout `load_backbone` reads)."""

from __future__ import annotations

import json
from pathlib import Path

from .backbone import Backbone


def save_diffusers_folder(backbone: Backbone, out: str | Path) -> Path:
    """Save VAE, UNet, text encoder, tokenizer and scheduler config under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    backbone.vae.save_pretrained(out / "vae")
    backbone.unet.save_pretrained(out / "unet")
    backbone.text_encoder.save_pretrained(out / "text_encoder")
    backbone.tokenizer.save_pretrained(out / "tokenizer")
    (out / "scheduler").mkdir(exist_ok=True)
    sched = {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": backbone.num_timesteps,
        "beta_start": backbone.beta_range[0],
        "beta_end": backbone.beta_range[1],
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "epsilon",
    }
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=1))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "vae": ["diffusers", "AutoencoderKL"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=1))
    return out
