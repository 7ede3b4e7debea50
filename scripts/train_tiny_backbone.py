"""Train the `tiny-scenes` backbone: a tiny Stable-Diffusion-architecture model on procedural scenes.

Reproduce (the shipped weights; then the quality check that wrote docs/tiny_scenes_quality.png):
    .venv/bin/python scripts/train_tiny_backbone.py --out src/diff2in1/presets/tiny-scenes \
        --size 128 --seed 0 --threads 2
    .venv/bin/python scripts/check_tiny_backbone.py --out docs/tiny_scenes_quality.png

Measured on the shipped run (shared 2-core Intel Xeon, torch 2.13, 2 threads):
- wall time 41.8 min: render 3000 + 64 scenes 0.6, VAE 9.3, encode 1.2, UNet + text 30.7.
- widths: VAE (16, 32, 64, 64), 1.32M parameters; UNet (32, 64, 96, 96), 4 heads, cross-attention
  32, 5.46M; CLIP text encoder hidden 32, 2 layers, 1.61M. Preset 16.1 MB (float16 safetensors).
- final training losses (mean of the last 50 steps): VAE L1 0.0572 (images in [-1, 1]), KL 8.3 per
  latent element; UNet epsilon MSE 0.084. Held-out epsilon MSE at t = 50 / 200 / 400 / 600 / 900:
  0.161 / 0.089 / 0.054 / 0.033 / 0.009.
- latents: posterior-mean std 3.06 (mean -0.14) -> scaling_factor 0.32674.
- held-out (check script): VAE reconstruction PSNR 27.21 dB over 64 scenes (min 24.0, max 34.1);
  noise to t=600 + 50-step DDIM (caption, guidance 1), PSNR vs source 22.08 dB over 8 scenes
  (x_600 decoded as it is: 18.13 dB; a different held-out scene: 15.23 dB). The DDIM images are
  rooms (walls, floor, windows, blob-like objects), not noise; the VAE still shifts some colours
  (greens and purples toward grey/blue) and blurs textures.
- 2200 UNet steps, twice the first release's 1100 (27.7 min to train; held-out epsilon MSE at
  t = 600 0.039, DDIM PSNR 21.45 dB): the longer run is the better generator and the better feature
  extractor (docs/self_improvement_study.md, "A better generator").
Bit-exact reproduction needs the same thread count and CPU kernels (bfloat16 autocast in the VAE).

What it trains, in order, on 128x128 scenes from `diff2in1.data.scenes.render_scene` (pre-rendered
into memory as uint8; scene i of the training set uses seed `scene_seed(seed, "train", i)`, held-out
scene i uses `scene_seed(seed, "test", i)`, so the two never overlap):

1. VAE (diffusers AutoencoderKL, downsampling 8, 4 latent channels): L1 + image-gradient L1 +
   chroma L1 (each pixel minus its channel mean: without it the short run reconstructs shapes
   but washes colours out) + a small KL (1e-5 per latent element), on random 64x64 crops
   (horizontal flips, bfloat16 autocast), then a short phase on
   whole 128x128 images so the mid-block attention sees full-size latents. Afterwards the std of
   the posterior means over the training scenes is measured and `scaling_factor = 1 / std` is
   written into the VAE config (what SD did to get 0.18215).
2. UNet (UNet2DConditionModel with SD v1.5's block types: 3 CrossAttnDownBlock2D + DownBlock2D,
   UNetMidBlock2DCrossAttn, UpBlock2D + 3 CrossAttnUpBlock2D, 2 layers per block) by epsilon
   prediction on SD's scaled-linear 1000-step schedule (`Backbone.q_sample`), jointly with a small
   CLIPTextModel, on posterior samples of the (pre-encoded, also flipped) training scenes.
   Captions are dropped to "" 10% of the time, so the empty caption used by perception is a
   meaningful (unconditional) input. Timesteps: 80% uniform in [0, 600) (generation only ever
   denoises from t=600), 20% uniform in [0, 1000) so the whole schedule stays trained.
   The text encoder is trained jointly (not frozen-random): it costs little next to the UNet and
   lets the caption embeddings (and the empty caption's) organise themselves for the UNet rather
   than being a fixed random projection of the token ids.

The folder is written with `diff2in1.diffusers_folder.save_diffusers_folder` with weights in float16 (the
whole preset stays under 20 MB); its `tokenizer/` subfolder is removed, so loading falls back to
the CLIP tokenizer shipped in the package (the same vocabulary). Load it with
`load_backbone("tiny-scenes")` (weights are cast to the requested dtype, float32 by default).

Threads: OMP_WAIT_POLICY defaults to PASSIVE here. On a shared 2-core machine, OpenMP's default
spin-waiting made 2-thread steps up to 20x slower than 1-thread ones when another process held a
core; with passive waiting `--threads 2` is never much worse than 1.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the OpenMP runtime start (torch)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "src" / "diff2in1" / "presets" / "tiny"


# ---------------------------------------------------------------------------- data
def render_images(seed: int, split: str, n: int, size: int, desc: str) -> tuple[np.ndarray, list[str]]:
    """n scenes of `split` as uint8 (n, size, size, 3) and their captions."""
    from diff2in1.data.scenes import render_scene, scene_seed

    images = np.empty((n, size, size, 3), dtype=np.uint8)
    captions: list[str] = []
    i = 0
    with tqdm(total=n, desc=desc, unit="scene", mininterval=5) as bar:
        while len(captions) < n:
            try:
                scene = render_scene(np.random.default_rng(scene_seed(seed, split, i)), size)
            except ValueError:
                # A few seeds (about 1 in 600) make random_spec draw from an empty interval when
                # an object does not fit in the room; skip them.
                i += 1
                continue
            images[len(captions)] = scene.image
            captions.append(scene.caption)
            i += 1
            bar.update(1)
    return images, captions


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)


# ---------------------------------------------------------------------------- configs
def model_configs(args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """VAE / UNet / text-encoder configs: the `tiny` preset's, with this run's widths."""
    vae_c = json.loads((TINY / "vae" / "config.json").read_text())
    unet_c = json.loads((TINY / "unet" / "config.json").read_text())
    text_c = json.loads((TINY / "text_encoder" / "config.json").read_text())
    vae_c.update(
        block_out_channels=list(args.vae_channels),
        sample_size=args.size,
        norm_num_groups=args.vae_groups,
        layers_per_block=args.vae_layers,
    )
    unet_c.update(
        block_out_channels=list(args.unet_channels),
        cross_attention_dim=args.text_width,
        attention_head_dim=args.heads,
        norm_num_groups=8,
        sample_size=args.size // 8,
    )
    text_c.update(
        hidden_size=args.text_width,
        projection_dim=args.text_width,
        intermediate_size=4 * args.text_width,
        num_hidden_layers=args.text_layers,
        num_attention_heads=2,
    )
    return vae_c, unet_c, text_c


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 5% of `base`."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


class Running:
    """Mean of the last `n` values of a scalar."""

    def __init__(self, n: int = 50) -> None:
        self.n, self.values = n, []

    def add(self, v: float) -> float:
        self.values = (self.values + [v])[-self.n :]
        return self.mean

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")


# ---------------------------------------------------------------------------- VAE
def train_vae(vae, images: np.ndarray, args: argparse.Namespace, gen: torch.Generator) -> dict:
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.vae_bf16 else contextlib.nullcontext
    n, size = len(images), images.shape[1]
    total = args.vae_steps + args.vae_full_steps
    rec_avg, kl_avg = Running(), Running()
    bar = tqdm(range(total), desc="VAE", mininterval=10)
    for step in bar:
        full = step >= args.vae_steps
        bs = args.vae_full_batch if full else args.vae_batch
        crop = size if full else args.vae_crop
        idx = torch.randint(0, n, (bs,), generator=gen).numpy()
        ys = torch.randint(0, size - crop + 1, (bs,), generator=gen).tolist()
        xs = torch.randint(0, size - crop + 1, (bs,), generator=gen).tolist()
        batch = np.stack([images[i, y : y + crop, x : x + crop] for i, y, x in zip(idx, ys, xs, strict=True)])
        x = to_tensor(batch)
        flip = torch.rand(bs, generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, args.vae_lr, 100)
        with amp():
            post = vae.encode(x).latent_dist
            y = vae.decode(post.sample()).sample.float()
        rec = (y - x).abs().mean()
        grad = (y.diff(dim=-1) - x.diff(dim=-1)).abs().mean() + (y.diff(dim=-2) - x.diff(dim=-2)).abs().mean()
        # KL per latent element (posterior.kl() sums over C, h, w).
        kl = post.kl().float().mean() / float(post.mean[0].numel())
        # Chroma: each pixel minus its channel mean. Plain L1 learns luminance long before colour.
        chroma = (y - y.mean(1, keepdim=True) - (x - x.mean(1, keepdim=True))).abs().mean()
        loss = rec + args.grad_weight * grad + args.chroma_weight * chroma + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        rec_avg.add(rec.item())
        kl_avg.add(kl.item())
        if step % 20 == 0 or step == total - 1:
            bar.set_postfix(l1=f"{rec_avg.mean:.4f}", kl=f"{kl_avg.mean:.1f}", full=int(full))
    vae.eval().requires_grad_(False)
    return {"vae_l1": rec_avg.mean, "vae_kl_per_elem": kl_avg.mean}


@torch.no_grad()
def encode_all(vae, images: np.ndarray, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and stds (unscaled) of images and their horizontal flips: (2N, 4, h, w)."""
    means, stds = [], []
    for flip in (False, True):
        for i in tqdm(range(0, len(images), batch), desc=f"encode (flip={flip})", mininterval=10):
            x = to_tensor(images[i : i + batch])
            x = x.flip(-1) if flip else x
            post = vae.encode(x).latent_dist
            means.append(post.mean.float())
            stds.append(post.std.float())
    return torch.cat(means), torch.cat(stds)


# ---------------------------------------------------------------------------- UNet
def sample_timesteps(bs: int, gen: torch.Generator, low_frac: float = 0.8) -> torch.Tensor:
    low = torch.randint(0, 600, (bs,), generator=gen)
    full = torch.randint(0, 1000, (bs,), generator=gen)
    return torch.where(torch.rand(bs, generator=gen) < low_frac, low, full)


def train_unet(bb, means, stds, ids, empty_ids, args, gen) -> dict:
    unet, text = bb.unet, bb.text_encoder
    unet.train().requires_grad_(True)
    text.train().requires_grad_(True)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=0.0)
    sf = bb.scaling_factor
    n = means.shape[0]
    loss_avg = Running()
    bar = tqdm(range(args.unet_steps), desc="UNet", mininterval=10)
    for step in bar:
        bs = args.unet_batch
        idx = torch.randint(0, n, (bs,), generator=gen)
        z = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * sf
        tok = ids[idx % ids.shape[0]].clone()  # flipped copies share their caption
        drop = torch.rand(bs, generator=gen) < args.caption_dropout
        tok[drop] = empty_ids
        t = sample_timesteps(bs, gen)
        noise = torch.randn(z.shape, generator=gen)
        z_t = bb.q_sample(z, t, noise)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.unet_steps, args.unet_lr, 100)
        cond = text(tok)[0]
        pred = unet(z_t, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss_avg.add(loss.item())
        if step % 20 == 0 or step == args.unet_steps - 1:
            bar.set_postfix(eps_mse=f"{loss_avg.mean:.4f}")
    unet.eval().requires_grad_(False)
    text.eval().requires_grad_(False)
    return {"unet_eps_mse": loss_avg.mean}


@torch.no_grad()
def heldout_eps_mse(bb, images: np.ndarray, captions: list[str], seed: int) -> dict[int, float]:
    """Epsilon MSE on held-out scenes at a few timesteps (same noise for every t)."""
    gen = torch.Generator().manual_seed(seed)
    x = to_tensor(images)
    z = bb.encode(x, sample=True, generator=gen)
    cond = bb.embed(captions)
    noise = torch.randn(z.shape, generator=gen)
    out = {}
    for t in (50, 200, 400, 600, 900):
        pred, _ = bb.unet_forward(bb.q_sample(z, t, noise), t, cond)
        out[t] = F.mse_loss(pred.float(), noise).item()
    return out


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "src/diff2in1/presets/tiny-scenes"))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-train", type=int, default=3000, help="training scenes rendered into memory")
    p.add_argument("--n-heldout", type=int, default=64)
    # VAE
    p.add_argument("--vae-channels", type=int, nargs=4, default=(16, 32, 64, 64))
    p.add_argument("--vae-steps", type=int, default=1400, help="steps on random crops")
    p.add_argument("--vae-full-steps", type=int, default=150, help="then steps on whole images")
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-crop", type=int, default=64)
    p.add_argument("--vae-full-batch", type=int, default=8)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-bf16", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--kl-weight", type=float, default=1e-5, help="per latent element")
    p.add_argument("--grad-weight", type=float, default=0.5)
    p.add_argument("--chroma-weight", type=float, default=1.0)
    p.add_argument("--vae-layers", type=int, default=2, help="VAE layers_per_block")
    p.add_argument("--vae-groups", type=int, default=8, help="VAE norm_num_groups")
    # UNet + text encoder
    p.add_argument("--unet-channels", type=int, nargs=4, default=(32, 64, 96, 96))
    p.add_argument("--heads", type=int, default=4, help="attention heads (diffusers' attention_head_dim)")
    p.add_argument("--text-width", type=int, default=32)
    p.add_argument("--text-layers", type=int, default=2)
    p.add_argument("--unet-steps", type=int, default=2200)
    p.add_argument("--unet-batch", type=int, default=32)
    p.add_argument("--unet-lr", type=float, default=1e-3)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--save-dtype", choices=["float16", "float32"], default="float16")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diff2in1.backbone import Backbone
    from diff2in1.diffusers_folder import save_diffusers_folder
    from diff2in1.tokenizer import clip_tokenizer

    t0 = time.time()
    times = {}
    images, captions = render_images(args.seed, "train", args.n_train, args.size, "render train")
    held, held_caps = render_images(args.seed, "test", args.n_heldout, args.size, "render held-out")
    times["render"] = time.time() - t0

    vae_c, unet_c, text_c = model_configs(args)
    vae = AutoencoderKL.from_config(vae_c)
    unet = UNet2DConditionModel.from_config(unet_c)
    text = CLIPTextModel(CLIPTextConfig(**text_c))
    count = {
        k: sum(q.numel() for q in m.parameters()) / 1e6
        for k, m in (("vae", vae), ("unet", unet), ("text", text))
    }
    print("parameters (M):", {k: round(v, 2) for k, v in count.items()}, flush=True)

    # ---- 1. VAE
    t1 = time.time()
    stats = train_vae(vae, images, args, gen)
    times["vae"] = time.time() - t1
    t1 = time.time()
    means, stds = encode_all(vae, images)
    std = means.std().item()
    scaling = 1.0 / std
    vae.register_to_config(scaling_factor=scaling)
    stats.update(
        latent_mean=means.mean().item(),
        latent_std=std,
        scaling_factor=scaling,
        posterior_std_mean=stds.mean().item(),
    )
    times["encode"] = time.time() - t1
    print(
        f"latents: mean {stats['latent_mean']:.4f}, std {std:.4f} -> scaling_factor {scaling:.5f}; "
        f"mean posterior std {stats['posterior_std_mean']:.4f}",
        flush=True,
    )

    tokenizer = clip_tokenizer()
    sched = json.loads((TINY / "scheduler" / "scheduler_config.json").read_text())
    bb = Backbone(vae, unet, text, tokenizer, sched, source="tiny-scenes (training)")
    with torch.no_grad():
        x = to_tensor(held)
        rec = bb.decode(bb.encode(x, sample=False))
        stats["heldout_vae_psnr"] = psnr(rec, x).mean().item()
    print(f"held-out VAE PSNR (posterior mean): {stats['heldout_vae_psnr']:.2f} dB", flush=True)

    # ---- 2. UNet + text encoder
    def tokenize(texts: list[str]) -> torch.Tensor:
        return tokenizer(
            texts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    ids, empty_ids = tokenize(captions), tokenize([""])[0]
    t1 = time.time()
    stats.update(train_unet(bb, means, stds, ids, empty_ids, args, gen))
    times["unet"] = time.time() - t1
    bb.eval()
    bb._empty = {}
    stats["heldout_eps_mse"] = heldout_eps_mse(bb, held[:32], held_caps[:32], args.seed)

    # ---- save
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    bb.to(getattr(torch, args.save_dtype))
    save_diffusers_folder(bb, out)
    shutil.rmtree(out / "tokenizer", ignore_errors=True)  # the package's CLIP tokenizer is used
    for f in out.rglob("*"):
        if f.is_file():
            f.chmod(0o644)  # safetensors writes 0600; package data should be world-readable
    index = json.loads((out / "model_index.json").read_text())
    index.pop("tokenizer", None)
    (out / "model_index.json").write_text(json.dumps(index, indent=1))
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    times["total"] = time.time() - t0
    stats.update(
        preset_mb=size_mb,
        minutes={k: round(v / 60, 2) for k, v in times.items()},
        parameters_m={k: round(v, 3) for k, v in count.items()},
    )
    (out / "training_log.json").write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "stats": stats}, indent=1, default=str)
    )
    print("final:", json.dumps(stats, indent=1, default=str), flush=True)
    print(f"wrote {out} ({size_mb:.2f} MB) in {times['total'] / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
