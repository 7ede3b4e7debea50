"""The generation core (docs/method.md section 7): the one function that makes created samples.

`create_samples` is what `Diff2in1Pipeline.create`, `create-data` (and so the reproduce command,
the demo, the study script and the self-improving stage) and the app's Create tab all run. Every
random draw of a sample comes from that sample's own seed (`Backbone.seeded_draws`: first the VAE
posterior draw, then the noise at t_start), so a sample depends only on its image, caption, seed
and settings: never on the other images of its batch, on the batch size, or on the process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .backbone import Backbone


@dataclass
class CreatedSamples:
    """rgb (B, 3, H, W) in [-1, 1] float32: the new images; `prediction`: the head's output on the
    taps of the last denoising step, at (H, W) (for the normal head: `.normal`, `.kappa`)."""

    rgb: Tensor
    prediction: object


@torch.no_grad()
def create_samples(
    backbone: Backbone,
    head: nn.Module,
    images: Tensor,
    captions: list[str],
    seeds: list[int],
    t_start: int = 600,
    steps: int = 50,
    guidance: float = 1.0,
    autocast: torch.dtype | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> CreatedSamples:
    """New images and their head predictions from `images` (B, 3, H, W) in [-1, 1].

    Encode (the posterior draw from the image's seed), noise to `t_start` (noise from the same
    seed), eta-0 DDIM for `steps` steps conditioned on each image's caption (classifier-free
    guidance with the empty caption when guidance > 1), decode; the head reads the taps of the
    last step in float32. `autocast`: the dtype the backbone passes run under (None: as stored).
    `callback(done, steps)` after each DDIM step.
    """
    if not len(images) == len(captions) == len(seeds):
        raise ValueError(f"{len(images)} images, {len(captions)} captions, {len(seeds)} seeds")
    dev = backbone.device
    images = images.to(dev, torch.float32)
    with torch.autocast(dev.type, dtype=autocast, enabled=autocast is not None):
        mean, std = backbone.posterior(images)
        draws = backbone.seeded_draws(seeds, tuple(mean.shape[1:]), mean)
        z = (mean + std * draws[0]) * backbone.scaling_factor
        x_t = backbone.q_sample(z, t_start, draws[1])
        cond = backbone.embed(list(captions))
        res = backbone.ddim_sample(x_t, cond, t_start, steps, guidance, callback=callback)
        rgb = backbone.decode(res.latents)
    prediction = head.eval()(res.features.to(torch.float32), image_size=tuple(images.shape[-2:]))
    return CreatedSamples(rgb=rgb.float(), prediction=prediction)
