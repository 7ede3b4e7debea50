"""A header line before each stage of a long command: where it is, time spent, time left.

    seed 1 (2/2) - stage 2/5: create data (1 min 12 s so far; about 5 min left)

Printed with or without progress bars (`--no-progress` keeps these lines). The estimate of what
is left uses, for each stage still to run, the time the same stage took for an earlier seed if
there is one, else its weight times the seconds per weight unit of the stages measured so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def duration(seconds: float) -> str:
    """45 s, 3 min 20 s, 2 h 05 min."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class StageClock:
    """Headers for an ordered list of stages `(group, name)`, e.g. ("seed 1", "warm-up"); group "" is
    a stage outside the groups (the shared data before the seeds). `weights[name]`: a stage's
    expected cost, relative."""

    def __init__(
        self,
        stages: list[tuple[str, str]],
        weights: dict[str, float],
        say: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stages = stages
        self.weights = weights
        self.say = say
        self.clock = clock
        self.t0 = clock()
        self.measured: dict[tuple[str, str], float] = {}

    def _label(self, group: str, name: str) -> str:
        """"stage 2/7: warm-up" with no groups; "seed 3 (2/2) - stage 2/5: create data" in a group;
        a stage outside the groups by its name alone."""
        groups = list(dict.fromkeys(g for g, _ in self.stages if g))
        in_group = [n for g, n in self.stages if g == group]
        position = f"stage {in_group.index(name) + 1}/{len(in_group)}: {name}"
        if not group:
            return name if groups else position
        return f"{group} ({groups.index(group) + 1}/{len(groups)}) - {position}"

    def left(self, after: int) -> float | None:
        """Seconds expected for the stages after index `after`, or None before any measurement."""
        units = sum(self.weights.get(n, 1.0) for (_, n), s in self.measured.items() if s > 0)
        spent = sum(s for s in self.measured.values() if s > 0)
        if units <= 0 or spent <= 0:
            return None
        rate = spent / units
        total = 0.0
        for group, name in self.stages[after + 1 :]:
            earlier = [s for (g, n), s in self.measured.items() if n == name and s > 0 and g != group]
            total += earlier[-1] if earlier else self.weights.get(name, 1.0) * rate
        return total

    def start(self, group: str, name: str) -> None:
        """Print the header of a stage that starts now."""
        i = self.stages.index((group, name))
        so_far = f"{duration(self.clock() - self.t0)} so far"
        left = self.left(i - 1)
        estimate = "estimate after the first stage" if left is None else f"about {duration(left)} left"
        self.say(f"{self._label(group, name)} ({so_far}; {estimate})")

    def done(self, group: str, name: str, seconds: float | None) -> None:
        """Record what the stage took (its recorded time if it was done by an earlier run)."""
        if seconds is not None:
            self.measured[(group, name)] = float(seconds)
