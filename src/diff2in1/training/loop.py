"""The training loop shared by the warm-up and self-improving stages.

Built on `accelerate`, so the same code runs on one CPU, one GPU, or N processes under
`accelerate launch` / `torchrun` (data-parallel). Every random choice of a step is a function
of (seed, epoch or step, sample index), which is what makes `--resume` exact and makes an
image's features independent of which process or batch it lands in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..errors import InputError
from ..limits import cap_workers
from ..termination import quiet_worker
from .run_folder import RunDir, atomic_dir, optimizer_from_tensors, optimizer_to_tensors


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64-style), stable across runs and platforms."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class EpochBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of one epoch: a shuffle fixed by (seed, epoch), sliced for this process.

    Global batch b of the epoch is `order[b*B:(b+1)*B]`; process r of N takes its r-th
    contiguous share, so N processes together see exactly the global batches of one process.
    `start` skips batches already done (resume mid-epoch). `drop_last` leaves out the short last
    batch (the research loader's `drop_last=True`, docs/method.md section 5).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        epoch: int,
        rank: int = 0,
        world: int = 1,
        start: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        self.n, self.batch_size, self.rank, self.world, self.start = n, batch_size, rank, world, start
        self.drop_last = drop_last
        gen = torch.Generator().manual_seed(mix_seed(seed, epoch))
        self.order = torch.randperm(n, generator=gen).tolist() if shuffle else list(range(n))

    def batches(self) -> list[list[int]]:
        out = []
        count = self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)
        for b in range(count):
            batch = self.order[b * self.batch_size : (b + 1) * self.batch_size]
            if len(batch) < self.world:  # too small to give every process a sample
                break
            share = math.ceil(len(batch) / self.world)
            out.append(batch[self.rank * share : (self.rank + 1) * share])
        return out

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.start :]

    def __len__(self) -> int:
        return max(0, len(self.batches()) - self.start)


def check_batches(n: int, cfg: TrainConfig) -> None:
    """Refuse a run whose epochs would have no batch (fewer samples than one batch with drop_last)."""
    if n < (cfg.batch_size if cfg.drop_last else 1):
        raise InputError(
            f"{n} training sample(s) give no batch of {cfg.batch_size} with drop_last "
            "(use a smaller --batch-size or --no-drop-last)"
        )


@dataclass
class LoopResult:
    """What a training run did: steps taken, per-step losses, final head folder(s)."""

    steps: int
    losses: list[float] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason) left out of the data
    label_counts: dict[str, int] = field(default_factory=dict)  # task -> samples carrying its label


def make_accelerator(cfg: TrainConfig):
    """An Accelerator with this run's precision and accumulation. accelerate keeps one precision per
    process; runs in one process (the demo, API users) may differ, so its per-run part is reset
    first. The distributed part (process group, ranks) is kept."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    return Accelerator(
        cpu=cpu, mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum
    )


def _bar_label(cfg: TrainConfig, epoch: int, step: int, by_steps: bool) -> str:
    """The progress bar's label: steps of max_steps when max_steps bounds the run, else epochs."""
    if by_steps:
        return f"epoch {epoch + 1} (step {step}/{cfg.max_steps})"
    return f"epoch {epoch + 1}/{cfg.epochs}"


def run_training(
    cfg: TrainConfig,
    run: RunDir,
    dataset: Dataset,
    models: dict[str, nn.Module],
    trained: str | list[str],
    step_fn: Callable[[dict[str, nn.Module], dict, int], torch.Tensor],
    accelerator,
    resume: bool = False,
    after_step: Callable[[int], None] | None = None,
    before_epoch: Callable[[int], Dataset | None] | None = None,
    log_extra: Callable[[], dict[str, torch.Tensor]] | None = None,
) -> LoopResult:
    """Train `models[trained]` with Adam on `step_fn(models, batch, global_step) -> loss`.

    `trained` may be a list of names: those models train together, one Adam over their parameters
    in that order (the multi-task warm-up's heads, one per task).

    `models` are all saved in checkpoints and in the resume state (e.g. the creation head of
    the self-improving stage, updated by `after_step(optimizer_steps)` after each optimizer step).
    `step` counts batches (with `grad_accum` > 1, several per optimizer step).
    `before_epoch(epoch)` may return a new dataset (re-created synthetic data).
    `log_extra()` after a step: more scalar tensors for log.csv (e.g. each task's loss), averaged
    over processes like the loss.
    """
    names = [trained] if isinstance(trained, str) else list(trained)
    opt = torch.optim.Adam([p for n in names for p in models[n].parameters()], lr=cfg.lr)
    *prepared, opt = accelerator.prepare(*[models[n] for n in names], opt)
    models.update(zip(names, prepared, strict=True))
    start_epoch, start_batch, step = 0, 0, 0
    losses: list[float] = []
    if resume and run.has_state():
        tensors, meta = run.load_state()
        for name, m in models.items():
            accelerator.unwrap_model(m).load_state_dict(tensors[name])
        optimizer_from_tensors(opt, tensors["optimizer"], meta["optimizer"])
        start_epoch, start_batch, step = meta["epoch"], meta["batch"], meta["step"]
        losses = meta.get("losses", [])
        run.truncate_log(step)

    def save_state(epoch: int, batch: int) -> None:
        if not accelerator.is_main_process:
            return
        tensors = {n: accelerator.unwrap_model(m).state_dict() for n, m in models.items()}
        opt_t, opt_meta = optimizer_to_tensors(opt)
        tensors["optimizer"] = opt_t
        meta = {"epoch": epoch, "batch": batch, "step": step, "optimizer": opt_meta, "losses": losses}
        run.save_state(tensors, meta)

    def save_heads(folder_of: Callable[[str], object]) -> dict[str, str]:
        out = {}
        if accelerator.is_main_process:
            for name, m in models.items():
                target = folder_of(name)
                with atomic_dir(target) as tmp:
                    accelerator.unwrap_model(m).save_pretrained(tmp)
                out[name] = str(target)
        return out

    world, rank = accelerator.num_processes, accelerator.process_index
    workers = cap_workers(cfg.num_workers)
    done = cfg.max_steps and step >= cfg.max_steps
    position = (start_epoch, start_batch)  # the next batch to train: what a resume starts from
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if done:
                break
            if before_epoch is not None:
                dataset = before_epoch(epoch) or dataset
            sampler = EpochBatches(
                len(dataset),
                cfg.batch_size,
                cfg.seed,
                epoch,
                rank,
                world,
                start=start_batch if epoch == start_epoch else 0,
                drop_last=cfg.drop_last,
            )
            check_batches(len(dataset), cfg)
            loader = DataLoader(
                dataset,
                batch_sampler=sampler,
                num_workers=workers,
                pin_memory=accelerator.device.type == "cuda",
                worker_init_fn=quiet_worker,
            )
            first = sampler.start
            # When max_steps ends the run before the epochs do (e.g. epochs=10**6 as "until max_steps"),
            # the bar counts steps of max_steps, not epochs.
            by_steps = bool(cfg.max_steps) and cfg.max_steps < cfg.epochs * (first + len(sampler))
            bar = tqdm(
                loader,
                desc=_bar_label(cfg, epoch, step, by_steps),
                initial=first,
                total=first + (min(len(sampler), cfg.max_steps - step) if by_steps else len(sampler)),
                disable=not (cfg.progress and accelerator.is_main_process),
            )
            for b, batch in enumerate(bar, start=first):
                t0 = time.perf_counter()
                for n in names:
                    models[n].train()
                with accelerator.accumulate(*[models[n] for n in names]):
                    loss = step_fn(models, batch, step)
                    accelerator.backward(loss)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                step += 1
                position = (epoch, b + 1)
                if after_step is not None and accelerator.sync_gradients:
                    # With gradient accumulation, an optimizer step happens every grad_accum batches.
                    after_step(step // cfg.grad_accum)
                value = float(accelerator.reduce(loss.detach(), "mean"))
                extra = {
                    k: float(accelerator.reduce(v.detach().float(), "mean"))
                    for k, v in (log_extra() if log_extra is not None else {}).items()
                }
                losses.append(value)
                if by_steps:
                    bar.set_description(_bar_label(cfg, epoch, step, by_steps), refresh=False)
                bar.set_postfix(loss=f"{value:.4f}")
                if accelerator.is_main_process:
                    run.log(
                        {
                            "step": step,
                            "epoch": epoch + 1,
                            "batch": b + 1,
                            "loss": value,
                            **extra,
                            "seconds": round(time.perf_counter() - t0, 4),
                        }
                    )
                if cfg.max_steps and step >= cfg.max_steps:
                    done = True
                    bar.n = b + 1  # leaving the loop early: tqdm would not count this last batch
                    bar.close()
                    save_state(*position)
                    break
            else:
                save_state(epoch + 1, 0)
                if cfg.checkpoint_every and (epoch + 1) % cfg.checkpoint_every == 0:
                    save_heads(lambda name, e=epoch: run.checkpoint_dir(e + 1, name))
    except KeyboardInterrupt:
        # Keep what was done: the last complete step is resumable.
        save_state(*position)
        raise
    outputs = save_heads(lambda name: run.root / name)
    accelerator.wait_for_everyone()
    return LoopResult(steps=step, losses=losses, outputs=outputs)
