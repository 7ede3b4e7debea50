"""Process-group helpers for commands launched with `accelerate launch` / `torchrun`.

Training uses accelerate's Accelerator; inference commands only need a rank, a world size,
the local device and a gather, which `accelerate.PartialState` provides (it initialises the
process group from the launcher's environment, gloo on CPU, nccl on GPUs).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from .info import best_device


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_launcher(device: str = "auto") -> torch.device:
    """Join the launcher's process group (if any) and pick this process's device."""
    from accelerate import PartialState

    from .devices import check_device, resolve_device

    device = check_device(device)
    state = PartialState(cpu=device == "cpu")
    if device != "auto":
        return resolve_device(device)
    return state.device if state.num_processes > 1 else torch.device(best_device())


def gather_objects(obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order (just `[obj]` with one process)."""
    _, world = rank_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()
