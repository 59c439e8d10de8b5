"""Training to a target: the trial loop of the learning-rate search (family, scaling) and of the baseline.

`train_to_target` runs `stages.core.train.train_step` and `evaluate`:
evaluate on a geometric schedule (steps to target resolved within `resolution`), stop when the
target is reached, when the loss or metric is not finite (diverged), at `max_steps` (censored),
when `give_up_after` steps pass without reaching it (stopped early: it can no longer win), or, with a
`plateau_tolerance`, when it makes no progress towards the target (`plateaued`): its metric has stalled
short of the target (a noise floor), or it keeps crossing the target and falling back while its
typical level (the median over a doubling of steps) no longer improves (oscillation, e.g. at the edge
of stability, where the loss neither diverges nor settles).
With `hold_factor` > 1 a trial that reached the target at step s keeps training to s x hold_factor,
so its curve shows whether the metric stays at the target (select only trusts rates that hold) --
unless `contender` says that a crossing at s cannot make its rate the best at its size: then the
trial stops at its crossing (a hold check is spent only on rates that can be chosen);
a crossing that falls back below the target within its hold does not count (a first crossing that
does not last is not a result a training run can rely on): training goes on, and steps to target is
the first step of a crossing that holds.
The clock covers the training steps alone: evaluations are timed apart (`eval_seconds`), so a
time to target compares with throughput's time per step.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from stages.core.config import OptimizerSettings
from stages.core.device import synchronize
from stages.core.optim import build_optimizer
from stages.core.train import build_model, evaluate, train_step
from stages.core.types import Outcome, Steps
from stages.workloads.base import Workload, target_reached, to_device

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


def train_to_target(workload: Workload, optimizer_settings: OptimizerSettings, learning_rate: float,
                    batch_size: int, seed: int, device: torch.device, max_steps: Steps,
                    *, give_up_after: Steps | None = None, resolution: float = 0.05,
                    eval_steps: list[Steps] | None = None, stop_at_target: bool = True,
                    hold_factor: float = 1.0, plateau_tolerance: float = 0.0,
                    give_up_reason: str | None = None,
                    contender: Callable[[Steps], bool] | None = None,
                    on_step: Callable[[Steps, dict[str, float]], None] | None = None) -> TrialResult:
    """Train from `seed` until the target is reached (or one of the other stop rules fires).

    `give_up_after`: stop as soon as the step count passes this without reaching the target
    (a trial that cannot beat the best steps-to-target found so far). `stop_at_target=False` keeps
    training to `max_steps` (the baseline's full learning curve). `hold_factor`: after reaching the
    target at step s, train on to ceil(s x hold_factor) (at most `max_steps`), evaluated at the end;
    if an evaluation falls back below the target first, the crossing does not count and training goes
    on (steps to target: the first step of a crossing that holds). `seconds` counts training steps only.
    `plateau_tolerance` > 0: check `plateaued` (or, once a crossing fell back, `oscillating`) each time
    the step count doubles (from PLATEAU_MIN_STEPS) while the target is unmet, and stop after
    PLATEAU_CHECKS stalled checks in a row. `give_up_reason`: what the give-up point stands for (the
    reason of a `stopped_early` trial). `contender(s)`: False when a crossing at step s cannot make
    this rate the best at its size -- the trial then ends `reached` at s without its hold. `on_step(s,
    metrics)` after each training step, with the last evaluation's metrics (a caller's progress line)."""
    model = build_model(workload, seed, device)
    optimizer = build_optimizer(model.parameters(), optimizer_settings, learning_rate)
    schedule = eval_steps if eval_steps is not None else eval_schedule(max_steps, resolution)
    limit = max_steps if give_up_after is None else max(1, min(max_steps, give_up_after))
    schedule = sorted({s for s in schedule if 0 < s <= max_steps} | {max_steps, limit})
    data = workload.batches("train", batch_size, seed)
    curve: list[dict] = []
    steps_to_target: Steps | None = None
    metrics: dict[str, float] = {}
    outcome: Outcome = "not_reached"
    reason = f"target not reached in {max_steps} steps"
    step = 0
    hold_until: Steps | None = None  # with stop_at_target: the last step of the hold after the target
    fell_back_at: Steps | None = None
    falls = 0  # times the metric crossed the target and fell back before its hold ended
    eval_seconds = 0.0
    synchronize(device)
    start = time.perf_counter()
    pending = sorted(schedule, reverse=True)  # evaluation steps still to come; the next one last
    plateau_check, stalls, stall_falls = PLATEAU_MIN_STEPS, 0, 0
    loss = torch.tensor(float("nan"))
    while step < max_steps:
        loss = train_step(model, optimizer, workload, to_device(next(data), device))
        step += 1
        if on_step is not None:
            on_step(step, metrics)
        if not pending or step != pending[-1]:
            continue
        pending.pop()
        train_loss = float(loss)  # waits for the step's device work, so it is on the training clock
        synchronize(device)
        eval_start = time.perf_counter()
        train_seconds = eval_start - start - eval_seconds  # training steps so far, evaluations excluded
        metrics = evaluate(model, workload, device)
        synchronize(device)
        eval_seconds += time.perf_counter() - eval_start
        curve.append({"step": step, "train_loss": train_loss, **metrics, "train_seconds": train_seconds})
        value = metrics[workload.target_metric]
        finite = math.isfinite(train_loss) and math.isfinite(value)
        met = finite and target_reached(value, workload.target_value, workload.target_direction)
        if hold_until is not None and not met:
            # The target did not hold. A first crossing that does not last is not a result a training
            # run can rely on, so train on: steps to target is where the metric reaches the target and
            # then stays there through its hold (and until then the trial may still stop early).
            fell_back_at, falls = step, falls + 1
            steps_to_target, hold_until, outcome = None, None, "not_reached"
            reason = (f"{workload.target_metric} reached the target but fell back {falls} time(s) (last at step "
                      f"{step}, to {value:.4g}); not held by step {max_steps}")
        if not finite:
            outcome, reason = "diverged", f"non-finite {'train loss' if not math.isfinite(train_loss) else workload.target_metric} at step {step}"
            break
        if steps_to_target is None and met:
            steps_to_target = step
            outcome, reason = "reached", f"{workload.target_metric} {value:.4g} at step {step}"
            if falls:
                reason += f" (after falling back below the target {falls} time(s))"
            if stop_at_target and contender is not None and not contender(step):
                reason += "; not held: at this step the rate cannot become the best at its size"
                break
            if stop_at_target:
                hold_until = min(max_steps, math.ceil(step * hold_factor - 1e-9))
                if hold_until <= step:
                    break
                pending = sorted(set(pending) | {hold_until}, reverse=True)  # the hold ends with an evaluation
                continue
        if hold_until is not None and step >= hold_until:
            reason += f"; held to step {step}"
            break
        if steps_to_target is None and plateau_tolerance > 0 and step >= plateau_check:
            plateau_check = 2 * step
            if falls != stall_falls and stall_falls == 0:
                stalls = 0  # the first fall back: from here on progress is judged by the typical level
            stall_falls = falls
            steps_seen, values = [r["step"] for r in curve], [r[workload.target_metric] for r in curve]
            if falls:
                # A trial that crossed the target and fell back oscillates around it: its best value says
                # nothing (every dip below the target sets one), its median over a doubling does.
                stalled, m1, m2 = oscillating(steps_seen, values, workload.target_value, workload.target_direction,
                                              plateau_tolerance)
            else:
                stalled = plateaued(steps_seen, values, workload.target_value, workload.target_direction,
                                    plateau_tolerance)
            stalls = stalls + 1 if stalled else 0
            if stalls >= PLATEAU_CHECKS:
                if falls:
                    outcome, reason = "plateaued", (
                        f"no progress: {workload.target_metric} crossed the target and fell back {falls} time(s) by step "
                        f"{step}, and its median over the last doubling of steps ({m2:.4g}) gained < "
                        f"{plateau_tolerance:g} of the distance to the target on the best of an earlier doubling ({m1:.4g}), "
                        f"over each of the last {PLATEAU_CHECKS} doublings of steps: oscillating (e.g. at the edge "
                        f"of stability)")
                else:
                    outcome, reason = "plateaued", (f"{workload.target_metric} stalled at {value:.4g} by step {step} "
                                                    f"(over each of the last {PLATEAU_CHECKS} doublings of steps the best "
                                                    f"gained < {plateau_tolerance:g} of the distance to the target)")
                break
        if steps_to_target is None and step >= limit and limit < max_steps:
            outcome, reason = "stopped_early", (f"not reached by step {step}, so it cannot beat {give_up_after} steps"
                                                + (f" ({give_up_reason})" if give_up_reason else ""))
            break
    synchronize(device)
    seconds = time.perf_counter() - start - eval_seconds
    return TrialResult(outcome, steps_to_target, step, step * batch_size, seconds, metrics, curve, reason,
                       eval_seconds, fell_back_at)
