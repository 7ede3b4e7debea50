"""Stable Diffusion v1.x backbone: loading (folder / single file / preset), encode, decode,
caption embedding, forward noising, feature taps and a DDIM sampler
(docs/method.md sections 1, 2 and 7).

Everything loads offline: model configs and the CLIP tokenizer ship inside the package.
"""

from __future__ import annotations

import contextlib
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .devices import warn_if_emulated
from .errors import InputError
from .memory_alignment import realign_
from .taps import FeatureTaps, TapFeatures
from .tokenizer import clip_tokenizer

PRESETS = {
    "sd15": "Stable Diffusion v1.5 architecture with random weights (benchmarks; no download)",
    "tiny": "a tiny SD-architecture model with random weights (tests)",
    "tiny-scenes": "a tiny SD-architecture model trained on procedural scenes (the demo)",
}
SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pth", ".pt", ".bin")


def scaled_linear_alphas_cumprod(
    beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000
) -> torch.Tensor:
    """alpha_bar_t of SD's "scaled linear" schedule, float64 (1000,)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_timesteps(t_start: int = 600, steps: int = 50) -> list[int]:
    """Descending DDIM timesteps over [0, t_start): stride t_start // steps, offset +1.

    (600, 50) -> 589, 577, ..., 13, 1 (docs/method.md section 7).
    """
    if not 0 < steps <= t_start:
        raise ValueError(f"need 0 < steps <= t_start, got steps={steps}, t_start={t_start}")
    stride = t_start // steps
    return [i * stride + 1 for i in range(steps)][::-1]


def ddim_inference_steps(num_train_timesteps: int, t_start: int, steps: int) -> int:
    """The `num_inference_steps` for which diffusers' DDIMScheduler steps by our stride t_start // steps.

    Its step goes from t to t - T // num_inference_steps; some strides have no such count (e.g. 60
    for T = 1000), and those are refused rather than stepped differently.
    """
    stride = t_start // steps
    n = num_train_timesteps // stride
    if n < 1 or num_train_timesteps // n != stride:
        ok = [s for s in range(1, t_start + 1) if _stride_ok(num_train_timesteps, t_start // s)]
        near = sorted(ok, key=lambda s: abs(s - steps))[:4]
        raise InputError(
            f"{steps} DDIM steps below t={t_start} (stride {stride}) cannot be stepped by the DDIM "
            f"scheduler of {num_train_timesteps} timesteps; nearby step counts that can: "
            + ", ".join(map(str, sorted(near)))
        )
    return n


def _stride_ok(num_train_timesteps: int, stride: int) -> bool:
    n = num_train_timesteps // stride if stride else 0
    return n >= 1 and num_train_timesteps // n == stride


def method_scheduler(scheduler: DDIMScheduler | dict | None, source: str = "") -> DDIMScheduler:
    """diffusers' DDIMScheduler set as the method needs it (docs/method.md section 7).

    Any scheduler or config of the scaled-linear SD schedule is accepted; the sampling settings the
    method fixes are imposed: eta-0 DDIM, epsilon prediction, no clipping or thresholding, offset 1,
    and alpha_bar_0 after the last step (set_alpha_to_one=False).
    """
    cfg = (
        dict(scheduler.config)
        if scheduler is not None and hasattr(scheduler, "config")
        else dict(scheduler or {})
    )
    if cfg.get("beta_schedule", "scaled_linear") != "scaled_linear":
        raise InputError(f"{source}: only the scaled_linear noise schedule is supported")
    if cfg.get("prediction_type", "epsilon") != "epsilon":
        raise InputError(f"{source}: the UNet must predict noise (prediction_type epsilon)")
    fixed = dict(
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        thresholding=False,
        timestep_spacing="leading",
        rescale_betas_zero_snr=False,
        prediction_type="epsilon",
    )
    if isinstance(scheduler, DDIMScheduler) and all(cfg.get(k) == v for k, v in fixed.items()):
        return scheduler  # already the method's: share it
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg.update(fixed)
    try:
        return DDIMScheduler.from_config(cfg)
    except (TypeError, ValueError) as e:
        raise InputError(f"{source}: bad scheduler config ({' '.join(str(e).split())})") from None


@dataclass
class DDIMResult:
    """Output of `Backbone.ddim_sample`.

    latents: (B, 4, L, L) final latent; features: taps of the last denoising step (or None).
    """

    latents: torch.Tensor
    features: TapFeatures | None


class Backbone(nn.Module):
    """VAE + UNet + CLIP text encoder + tokenizer + noise schedule, with feature taps.

    The backbone is frozen: parameters never require grad.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler: DDIMScheduler | dict | None = None,
        source: str = "",
    ) -> None:
        super().__init__()
        self.vae, self.unet, self.text_encoder, self.tokenizer = vae, unet, text_encoder, tokenizer
        self.scheduler = method_scheduler(scheduler, source)
        # Kept outside the module's buffers so a dtype cast (bf16) never rounds the schedule.
        self._alphas_cumprod = self.scheduler.alphas_cumprod.float()
        self.scaling_factor = float(vae.config.get("scaling_factor", 0.18215) or 0.18215)
        self.source = source
        self.requires_grad_(False)
        self.eval()
        self.taps = FeatureTaps(unet)
        self._empty: dict[tuple, torch.Tensor] = {}

    @property
    def beta_range(self) -> tuple[float, float]:
        return float(self.scheduler.config.beta_start), float(self.scheduler.config.beta_end)

    # ----------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """alpha_bar_t, float32 (T,), on the backbone's device."""
        if self._alphas_cumprod.device != self.device:
            self._alphas_cumprod = self._alphas_cumprod.to(self.device)
        return self._alphas_cumprod

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def tap_channels(self) -> dict[str, int]:
        """Channel totals per tap group (low, mid, high, highest): what heads size from."""
        return dict(self.taps.channels)

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def train(self, mode: bool = True) -> Backbone:
        # Frozen backbone: always in eval mode (no dropout), whatever the caller asks.
        return super().train(False)

    # ----------------------------------------------------------------- VAE
    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> latents (B, 4, H/8, W/8), times the scaling factor.

        `sample=True` draws from the posterior as the research code does; False takes its mean.
        """
        images = images.to(self.device, self.vae.dtype)
        posterior = self.vae.encode(images).latent_dist
        z = posterior.sample(generator) if sample else posterior.mean
        return z * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, 4, h, w) -> images (B, 3, 8h, 8w) clipped to [-1, 1]."""
        out = self.vae.decode(latents.to(self.vae.dtype) / self.scaling_factor).sample
        return out.clamp(-1, 1)

    # ----------------------------------------------------------------- text
    @torch.no_grad()
    def embed(self, captions: list[str]) -> torch.Tensor:
        """Captions -> CLIP last hidden states (B, 77, D)."""
        ids = self.tokenizer(
            list(captions),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    def empty_embedding(self, batch: int) -> torch.Tensor:
        """Embedding of the empty caption "" (computed once per device/dtype), (B, 77, D)."""
        key = (self.device, self.dtype)
        if key not in self._empty:
            self._empty = {key: self.embed([""])}
        return self._empty[key].expand(batch, -1, -1)

    # ----------------------------------------------------------------- diffusion
    def _acp(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.device).long().reshape(-1)
        return self.alphas_cumprod[t].to(like.dtype).reshape(-1, 1, 1, 1)

    def q_sample(self, z: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """Forward noising: sqrt(a_t) z + sqrt(1 - a_t) noise, t scalar or (B,)."""
        a = self._acp(t, z)
        return a.sqrt() * z + (1 - a).sqrt() * noise

    def _timestep(self, t: torch.Tensor | int, batch: int) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.device).long().reshape(-1)
        return t.expand(batch) if t.numel() == 1 else t

    @torch.no_grad()
    def unet_forward(
        self, z_t: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor, features: bool = False
    ) -> tuple[torch.Tensor, TapFeatures | None]:
        """One UNet pass: predicted noise (B, 4, h, w) and, if asked, the 25 taps of this pass."""
        z_t = z_t.to(self.dtype)
        t = self._timestep(t, z_t.shape[0])
        if not features:
            return self.unet(z_t, t, encoder_hidden_states=cond).sample, None
        with self.taps.capture() as maps:
            eps = self.unet(z_t, t, encoder_hidden_states=cond).sample
        return eps, self.taps.collect(maps)

    @torch.no_grad()
    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior (mean, std) of images (B, 3, H, W) in [-1, 1], each (B, 4, H/8, W/8).

        Deterministic per image, so training may cache it and skip the encoder (see `perceive`).
        """
        dist = self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist
        return dist.mean, dist.std

    @staticmethod
    def seeded_draws(seeds: list[int], shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """(2, B, *shape) standard normal draws, two per image from its own seed: the image's
        result then does not depend on its batch or process."""
        draws = [torch.randn((2, *shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(draws, dim=1).to(like.device, like.dtype)

    @torch.no_grad()
    def perceive(
        self,
        images: torch.Tensor | None,
        generator: torch.Generator | None = None,
        sample_posterior: bool = True,
        seeds: list[int] | None = None,
        posterior: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> TapFeatures:
        """Perception features (docs/method.md section 2): encode, noise to t=0, one UNet pass with the
        empty caption.

        Randomness (posterior sample, t=0 noise) comes from `generator`, or, with `seeds`, from
        one seed per image, so an image's features do not depend on how it was batched.
        A precomputed `posterior` (mean, std) skips the VAE encoder (then `images` may be None).
        """
        mean, std = posterior if posterior is not None else self.posterior(images)
        if seeds is not None:  # per image: its posterior draw, then its t=0 noise
            draws = self.seeded_draws(seeds, tuple(mean.shape[1:]), mean)
        else:
            draws = torch.randn((2, *mean.shape), generator=generator, device=mean.device, dtype=mean.dtype)
        z = (mean + std * draws[0] if sample_posterior else mean) * self.scaling_factor
        z0 = self.q_sample(z, 0, draws[1])
        _, feats = self.unet_forward(z0, 0, self.empty_embedding(z.shape[0]), features=True)
        return feats

    @torch.no_grad()
    def ddim_sample(
        self,
        latents: torch.Tensor,
        cond: torch.Tensor,
        t_start: int = 600,
        steps: int = 50,
        guidance: float = 1.0,
        uncond: torch.Tensor | None = None,
        return_features: bool = True,
        progress: bool = False,
        callback: Callable[[int, int], None] | None = None,
    ) -> DDIMResult:
        """Deterministic DDIM (eta 0) from a latent noised to `t_start` (docs/method.md section 7).

        `latents` (B, 4, h, w) is x_{t_start} (see `q_sample`); `cond` (B, 77, D) the caption
        embeddings. With guidance > 1, classifier-free guidance uses `uncond` (default: the
        empty caption). The taps of the last step (t = 1) come from the same UNet pass that
        makes its noise prediction, so the head needs no extra pass. Steps are diffusers'
        `DDIMScheduler.step` (eta 0); `callback(done, total)` is called after each.
        """
        from tqdm.auto import tqdm

        times = ddim_timesteps(t_start, steps)
        sched = self.scheduler
        # diffusers' DDIM steps from t to t - T // num_inference_steps: pick the count whose stride
        # is ours; the step after t = 1 goes to alpha_bar_0 (set_alpha_to_one=False, as SD's DDIM).
        sched.set_timesteps(ddim_inference_steps(sched.config.num_train_timesteps, t_start, steps))
        x = latents.to(self.dtype)
        b = x.shape[0]
        if guidance != 1.0:
            uncond = self.empty_embedding(b) if uncond is None else uncond
        feats = None
        # The UNet reads its timesteps from one device tensor made here: a Python int would be copied
        # to a GPU every step, and that copy waits for the GPU (a host synchronisation per step).
        t_device = torch.tensor(times, device=self.device)
        for k, t in enumerate(tqdm(times, desc="DDIM", leave=False, disable=not progress)):
            last = k == len(times) - 1
            want = return_features and last
            if guidance != 1.0:
                x2, c2 = torch.cat([x, x]), torch.cat([uncond, cond])
                eps2, f2 = self.unet_forward(x2, t_device[k], c2, features=want)
                eps_u, eps_c = eps2.chunk(2)
                eps = eps_u + guidance * (eps_c - eps_u)
                feats = f2.index(slice(b, 2 * b)) if f2 is not None else None
            else:
                eps, f = self.unet_forward(x, t_device[k], cond, features=want)
                feats = f if want else feats
            x = sched.step(eps.float(), t, x.float(), eta=0.0).prev_sample.to(self.dtype)
            if callback is not None:
                callback(k + 1, len(times))
        return DDIMResult(latents=x, features=feats)


# --------------------------------------------------------------------- loading
def _preset_dir(name: str) -> Path:
    return Path(str(resources.files("diff2in1.presets") / name))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: missing") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable config ({e})") from None


def _configs(folder: Path) -> tuple[dict, dict, dict, dict]:
    unet = _read_json(folder / "unet" / "config.json")
    vae = _read_json(folder / "vae" / "config.json")
    text = _read_json(folder / "text_encoder" / "config.json")
    sched_path = folder / "scheduler" / "scheduler_config.json"
    sched = _read_json(sched_path) if sched_path.exists() else {}
    return unet, vae, text, sched


def _build_random(folder: Path, seed: int) -> tuple[AutoencoderKL, UNet2DConditionModel, CLIPTextModel, dict]:
    unet_c, vae_c, text_c, sched = _configs(folder)
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(vae_c)
    unet = UNet2DConditionModel.from_config(unet_c)
    text = CLIPTextModel(CLIPTextConfig(**text_c))
    return vae, unet, text, sched


def _component_error(where: Path, e: BaseException) -> InputError:
    """One line for a component that would not load; a pickle refusal says only that."""
    text = " ".join(str(e).split())
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in text or "Weights only load failed" in text:
        return InputError(
            f"{where}: refused: its weights are a pickle that would run code to load "
            "(only safetensors or plain tensor files are loaded); convert it to safetensors"
        )
    first = text.split(". ")[0] if text else type(e).__name__
    return InputError(f"{where}: cannot load ({type(e).__name__}: {first[:300]})")


def _load_folder(folder: Path, dtype: torch.dtype) -> tuple:
    for sub in ("unet", "vae", "text_encoder"):
        if not (folder / sub).is_dir():
            raise InputError(f"{folder}: not a diffusers Stable Diffusion folder (no {sub}/ subfolder)")
    loaders = {
        "vae": lambda: AutoencoderKL.from_pretrained(
            folder, subfolder="vae", dtype=dtype, local_files_only=True
        ),
        "unet": lambda: UNet2DConditionModel.from_pretrained(
            folder, subfolder="unet", dtype=dtype, local_files_only=True
        ),
        "text_encoder": lambda: CLIPTextModel.from_pretrained(
            folder / "text_encoder", dtype=dtype, local_files_only=True, use_safetensors=None
        ),
    }
    models = {}
    for sub, load in loaders.items():
        try:
            models[sub] = load()
        except Exception as e:  # safetensors, torch and the libraries raise many kinds: name the part
            raise _component_error(folder / sub, e) from None
    sched_path = folder / "scheduler" / "scheduler_config.json"
    sched = _read_json(sched_path) if sched_path.exists() else {}
    tok_dir = folder / "tokenizer"
    try:
        tokenizer = (
            CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
            if (tok_dir / "tokenizer_config.json").exists() or (tok_dir / "vocab.json").exists()
            else clip_tokenizer()
        )
    except Exception as e:
        raise _component_error(tok_dir, e) from None
    return models["vae"], models["unet"], models["text_encoder"], tokenizer, sched


def autocast_dtype(mixed_precision: str) -> torch.dtype | None:
    """The autocast dtype of a run's `mixed_precision` (no | bf16 | fp16); None for "no"."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)


def weights_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype to store the frozen backbone in for a run's `mixed_precision` (no | bf16 | fp16).

    The backbone never trains, so under mixed precision its weights are simply cast once: autocast
    would re-cast every weight on every call (frozen weights are not in its cache), about 7% of a
    bf16 UNet pass on CPU, and hold both copies in memory.
    """
    return autocast_dtype(mixed_precision) or torch.float32


def load_backbone(
    source: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    config: str | Path = "sd15",
) -> Backbone:
    """Load a Stable Diffusion v1.x backbone, offline.

    `source`: a preset name (see `PRESETS`), a diffusers folder, or a single-file checkpoint
    (`.ckpt` / `.safetensors` with the original LDM key layout). Random-weight presets are
    seeded with `seed`. `device="meta"` builds the architecture without memory. A single
    file holds weights only: `config` (a preset name or a folder with unet/vae/text_encoder
    configs) gives its architecture, SD v1.5 by default.
    """
    src = str(source)
    path = Path(src).expanduser()
    if src in PRESETS:
        folder = _preset_dir(src)
        if (folder / "unet" / "diffusion_pytorch_model.safetensors").exists():
            vae, unet, text, tokenizer, sched = _load_folder(folder, dtype)
        else:
            if src == "tiny-scenes":
                raise InputError("tiny-scenes: the trained weights are not installed in this package")
            with torch.device("meta") if str(device) == "meta" else contextlib.nullcontext():
                vae, unet, text, sched = _build_random(folder, seed)
            tokenizer = clip_tokenizer()
    elif not path.exists():
        raise InputError(f"{src}: no such file, folder or preset (presets: {', '.join(PRESETS)})")
    elif path.is_dir():
        vae, unet, text, tokenizer, sched = _load_folder(path, dtype)
    elif path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        from .checkpoint import load_components_from_single_file

        cfg_dir = _preset_dir(str(config)) if str(config) in PRESETS else Path(config)
        unet_c, vae_c, text_c, sched = _configs(cfg_dir)
        unet, vae, text = load_components_from_single_file(path, unet_c, vae_c, text_c)
        tokenizer = clip_tokenizer()
    else:
        raise InputError(f"{src}: not a diffusers folder or a .ckpt/.safetensors checkpoint")
    bb = Backbone(vae, unet, text, tokenizer, sched, source=src)
    if str(device) != "meta":
        warn_if_emulated(device, dtype)
        bb = realign_(bb.to(device=device, dtype=dtype))  # after the cast: a cast already copies
    return bb
