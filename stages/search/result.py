"""What a trial gives back, and the pieces of the trial loop that need no torch: the evaluation schedule and
the stall checks (`plateaued`, `oscillating`). The jobs that only read trials -- scaling's gaps and
contenders, the journal, the search's ranking -- import this, not stages/search/trial.py with torch (about
1.5 s of every such process)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from stages.core.types import Outcome, Steps

PLATEAU_MIN_STEPS = 64  # the first plateau check; fewer steps are too few to tell a floor from a slow start
PLATEAU_CHECKS = 2      # consecutive stalled doublings before a trial stops (a slow start stalls once, a floor twice)


def eval_schedule(max_steps: Steps, resolution: float = 0.05, first: Steps = 1) -> list[Steps]:
    """Steps after which to evaluate: every step at first, then geometrically (ratio 1+resolution),
    so any steps-to-target is known to within `resolution` of its value."""
    steps, s = [], first
    while s < max_steps:
        steps.append(s)
        s = max(s + 1, math.ceil(s * (1 + resolution)))
    steps.append(max_steps)
    return steps


def oscillating(steps: list[Steps], values: list[float], target: float, direction: str,
                tolerance: float) -> tuple[bool, float, float]:
    """Has a trial that keeps crossing the target and falling back stopped progressing? (stalled, the
    best median of an earlier doubling of steps, the median over the last doubling): its typical level
    -- the median over a doubling, which a lucky dip below the target does not move -- is short of the
    target and gained less than `tolerance` x the distance to the target on the best typical level of
    any earlier doubling (a random walk at the edge of stability wanders up and down, never on)."""
    sign = 1.0 if direction == "above" else -1.0  # oriented so that higher is better
    medians, end = [], steps[-1]
    while end >= 1:  # windows (end/2, end], newest first
        window = sorted(sign * v for s, v in zip(steps, values) if end / 2 < s <= end)
        if window:
            medians.append(window[len(window) // 2])
        end /= 2
    if len(medians) < 2:
        return False, math.nan, math.nan
    last, best = medians[0], max(medians[1:])
    # short of the target now, and no better than an earlier doubling by `tolerance` of its distance to
    # the target (an earlier doubling already at the target: then any level short of it is no progress)
    stalled = sign * target - last > 0 and last - best < tolerance * (sign * target - best)
    return bool(stalled), sign * best, sign * last


def plateaued(steps: list[Steps], values: list[float], target: float, direction: str, tolerance: float) -> bool:
    """Has the metric stalled short of the target? The best value over the last half of the steps
    gained less than `tolerance` x the remaining distance to the target over the best of the first
    half (a trial at its noise floor, or crawling so slowly that it cannot matter)."""
    half = steps[-1] / 2
    sign = 1.0 if direction == "above" else -1.0  # oriented so that higher is better
    first = [sign * v for s, v in zip(steps, values) if s <= half]
    second = [sign * v for s, v in zip(steps, values) if s > half]
    if not first or not second:
        return False
    gap = sign * target - max(first)
    return gap > 0 and max(second) - max(first) < tolerance * gap


@dataclass
class TrialResult:
    outcome: Outcome
    steps_to_target: Steps | None   # first evaluated step at which the target was reached
    steps_run: Steps
    examples_run: int
    seconds: float
    final_metrics: dict[str, float]
    curve: list[dict] = field(default_factory=list)  # rows: step, train_loss, <metrics...>, train_seconds
    reason: str = ""
    eval_seconds: float = 0.0       # spent in evaluations, not part of `seconds`
    fell_back_at: Steps | None = None  # the last evaluated step at which a crossing fell back below the target
