"""Measure a trained tiny backbone (default: the `tiny-scenes` preset) on held-out procedural scenes.

Prints
- VAE reconstruction PSNR (posterior mean, decoded) over `--n` held-out scenes;
- for `--rows` of them: PSNR vs the source of the image made by the generation of docs/method.md
  section 7 (encode, noise to t=600, 50-step DDIM with the scene's caption, guidance 1, decode), next
  to two baselines: the noised latent x_600 decoded directly, and a different held-out scene;
and writes a picture grid to `--out`: one row per scene, columns
original | VAE reconstruction | re-noised to t=600 + DDIM, decoded.

Held-out scene i is `render_scene(scene_seed(seed, "test", i))`; the training script renders its
training scenes from the "train" stream of the same seed, so they never coincide.

    .venv/bin/python scripts/check_tiny_backbone.py --out docs/tiny_scenes_quality.png
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def heldout(seed: int, n: int, size: int) -> tuple[np.ndarray, list[str]]:
    from diff2in1.data.scenes import render_scene, scene_seed

    images, captions, i = [], [], 0
    while len(images) < n:
        try:
            scene = render_scene(np.random.default_rng(scene_seed(seed, "test", i)), size)
        except ValueError:  # the rare seed whose random room cannot hold its objects
            i += 1
            continue
        images.append(scene.image)
        captions.append(scene.caption)
        i += 1
    return np.stack(images), captions


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [-1, 1]."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Quality of a tiny backbone on held-out scenes.")
    p.add_argument("--backbone", default="tiny-scenes")
    p.add_argument("--out", default="tiny_scenes_quality.png", help="PNG grid path")
    p.add_argument("--n", type=int, default=64, help="held-out scenes for the VAE PSNR")
    p.add_argument("--rows", type=int, default=8, help="scenes generated with DDIM (and shown)")
    p.add_argument("--t-start", type=int, default=600)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diff2in1.backbone import load_backbone

    t0 = time.time()
    bb = load_backbone(args.backbone)
    images, captions = heldout(args.seed, max(args.n, args.rows), args.size)
    x = to_tensor(images)

    recs = torch.cat([bb.decode(bb.encode(x[i : i + 16], sample=False)) for i in range(0, len(x), 16)])
    vae_psnr = psnr(recs[: args.n], x[: args.n])

    rows = args.rows
    gen = torch.Generator().manual_seed(args.seed)
    z = bb.encode(x[:rows], sample=True, generator=gen)
    noise = torch.randn(z.shape, generator=gen)
    x_t = bb.q_sample(z, args.t_start, noise)
    res = bb.ddim_sample(
        x_t,
        bb.embed(captions[:rows]),
        t_start=args.t_start,
        steps=args.steps,
        guidance=1.0,
        return_features=False,
    )
    gen_img = bb.decode(res.latents)
    noisy_img = bb.decode(x_t)
    ddim_psnr = psnr(gen_img, x[:rows])
    noisy_psnr = psnr(noisy_img, x[:rows])
    other_psnr = psnr(x[:rows].roll(1, dims=0), x[:rows])  # a different scene, as a reference

    print(f"backbone {args.backbone}: scaling_factor {bb.scaling_factor:.5f}")
    print(
        f"VAE reconstruction PSNR over {args.n} held-out scenes: {vae_psnr.mean():.2f} dB "
        f"(min {vae_psnr.min():.2f}, max {vae_psnr.max():.2f})"
    )
    print(
        f"t={args.t_start} + {args.steps}-step DDIM (caption, guidance 1), PSNR vs source over {rows} "
        f"scenes: {ddim_psnr.mean():.2f} dB; x_t decoded directly: {noisy_psnr.mean():.2f} dB; "
        f"another held-out scene: {other_psnr.mean():.2f} dB"
    )
    for i in range(rows):
        print(f"  [{i}] ddim {ddim_psnr[i]:.2f} dB  vae {vae_psnr[i]:.2f} dB  {captions[i]}")

    grid = np.concatenate(
        [
            np.concatenate([a, b, c], axis=1)
            for a, b, c in zip(images[:rows], to_uint8(recs[:rows]), to_uint8(gen_img), strict=True)
        ],
        axis=0,
    )
    Image.fromarray(grid).save(args.out)
    print(
        f"wrote {args.out} (rows: scenes; columns: original | VAE reconstruction | "
        f"t={args.t_start} + DDIM) in {time.time() - t0:.0f} s"
    )
    return {
        "vae_psnr": vae_psnr.mean().item(),
        "ddim_psnr": ddim_psnr.mean().item(),
        "noisy_psnr": noisy_psnr.mean().item(),
        "other_psnr": other_psnr.mean().item(),
    }


if __name__ == "__main__":
    main()
