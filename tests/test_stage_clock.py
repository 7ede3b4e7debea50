"""Stage headers of long commands: position, time so far, and an estimate of what is left."""

from __future__ import annotations

from diff2in1.workflows.stage_clock import StageClock, duration


def test_headers_say_where_the_run_is_and_estimate_what_is_left():
    now = [0.0]
    lines: list[str] = []
    stages = [("", "make scenes")] + [(f"seed {s}", n) for s in (0, 7) for n in ("train", "create")]
    weights = {"make scenes": 1.0, "train": 2.0, "create": 4.0}
    clock = StageClock(stages, weights, lines.append, lambda: now[0])

    clock.start("", "make scenes")
    now[0] = 10.0
    clock.done("", "make scenes", 10.0)  # 10 s per weight unit
    clock.start("seed 0", "train")
    now[0] = 30.0
    clock.done("seed 0", "train", 20.0)
    clock.start("seed 0", "create")
    now[0] = 70.0
    clock.done("seed 0", "create", 40.0)
    clock.start("seed 7", "train")
    clock.done("seed 7", "train", None)  # done by an earlier run that kept no time

    assert lines[0] == "make scenes (0 s so far; estimate after the first stage)"
    # left: train 2 + create 4 + train 2 + create 4 units at 10 s each
    assert lines[1] == "seed 0 (1/2) - stage 1/2: train (10 s so far; about 2 min 00 s left)"
    # create of seed 0 by its weight; seed 7's stages as measured for seed 0 (20 + 40 s)
    assert lines[2] == "seed 0 (1/2) - stage 2/2: create (30 s so far; about 1 min 40 s left)"
    assert lines[3] == "seed 7 (2/2) - stage 1/2: train (1 min 10 s so far; about 1 min 00 s left)"


def test_without_groups_the_stages_are_numbered():
    lines: list[str] = []
    clock = StageClock([("", "a"), ("", "b")], {}, lines.append, lambda: 0.0)
    clock.start("", "b")
    assert lines == ["stage 2/2: b (0 s so far; estimate after the first stage)"]
    assert duration(59.4) == "59 s" and duration(7325) == "2 h 02 min"
