"""Per-image seeds: from a seed, a generator or one generator per image, so a result depends only
on its own image and settings, never on its batch."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError


def image_seeds(
    n: int,
    generator: torch.Generator | list[torch.Generator] | None = None,
    seed: int | list[int] | None = None,
) -> list[int]:
    """One seed per image: `seed` (one for all or one each), else drawn from `generator` (one
    generator: one draw for every image; a list: one draw from each), default a generator seeded
    with 0. InputError for both, or for a list of the wrong length."""
    if seed is not None and generator is not None:
        raise InputError("give either seed or generator, not both")
    if seed is not None:
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * n
        ok = all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in seeds)
        if len(seeds) != n or not ok:
            raise InputError(f"seed must be an integer >= 0 or a list of {n} of them, got {seed!r}")
        return [int(s) for s in seeds]
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise InputError(f"{len(generator)} generators for {n} images")
        return [draw_seed(g) for g in generator]
    return [draw_seed(generator if generator is not None else torch.Generator().manual_seed(0))] * n


def draw_seed(generator: torch.Generator) -> int:
    """One seed from a generator (advances it by one draw)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


def member_seed(seed: int, member: int) -> int:
    """Seed of ensemble member `member` (member 0 uses `seed` itself)."""
    return (int(seed) + 0x9E3779B1 * int(member)) & 0x7FFFFFFFFFFFFFFF
