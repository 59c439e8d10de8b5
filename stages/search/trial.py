"""Training to a target: the trial loop of the learning-rate search (family, scaling) and of the baseline.

`train_to_target` runs `stages.core.train.train_step` and `evaluate`:
evaluate on a geometric schedule (steps to target resolved within `resolution`), stop when the
target is reached, when the loss or metric is not finite (diverged), at `max_steps` (censored),
when `give_up_after` steps pass without reaching it (stopped early: it can no longer win; a crossing
first seen past that point -- a paused trial told of it late -- is stopped early too), or, with a
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
import random
import time
from typing import Callable

import numpy as np
import torch

from stages.core.config import OptimizerSettings
from stages.core.device import synchronize
from stages.core.optim import build_optimizer
from stages.core.train import build_model, evaluate, train_step
from stages.core.types import Outcome, Steps
from stages.search.result import (PLATEAU_CHECKS, PLATEAU_MIN_STEPS, TrialResult, eval_schedule,  # noqa: F401
                                  oscillating, plateaued)
from stages.workloads.base import Workload, target_reached, to_device

def train_to_target(workload: Workload, optimizer_settings: OptimizerSettings, learning_rate: float,
                    batch_size: int, seed: int, device: torch.device, max_steps: Steps,
                    *, give_up_after: Steps | None = None, resolution: float = 0.05,
                    eval_steps: list[Steps] | None = None, stop_at_target: bool = True,
                    hold_factor: float = 1.0, plateau_tolerance: float = 0.0,
                    give_up_reason: str | None = None,
                    contender: Callable[[Steps], bool] | None = None,
                    on_step: Callable[[Steps, dict[str, float]], None] | None = None) -> TrialResult:
    """Train from `seed` until the target is reached (or one of the other stop rules fires): a
    `LiveTrial` run in one go.

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
    trial = LiveTrial(workload, optimizer_settings, learning_rate, batch_size, seed, device, max_steps,
                      resolution=resolution, eval_steps=eval_steps, stop_at_target=stop_at_target,
                      hold_factor=hold_factor, plateau_tolerance=plateau_tolerance)
    return trial.advance(give_up_after=give_up_after, give_up_reason=give_up_reason, contender=contender,
                         on_step=on_step)


def _rng_state(device: torch.device) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class LiveTrial:
    """A training run that can stop at any step and go on later exactly as if it had not stopped:
    model, optimizer, data order (the same batch iterator, or the batches replayed up to where it
    stood) and the random-number state (restored on every `advance`, so trials trained in turn in one
    process do not draw from each other's streams) -- bit-identical on the CPU.

    `advance(until)` trains to step `until` (None: to the end) or to the first stop rule of
    `train_to_target`; a trial that stopped only because it got to `until` is `paused` (its result's
    outcome), and a later `advance` goes on from there. A trial holding the target past a crossing
    when it gets to `until` goes on until the hold settles (it holds, or falls back and pauses there):
    a paused trial's crossing is never provisional. The search pauses trials at its rungs, prunes
    the ones clearly behind and resumes them if the leaders fail (stages/search/coarse.py); a trial
    stopped at its first crossing is held later with `hold` (the rate turned out to be a contender).
    `state_dict`/`from_state` write it to disk and read it back (the next wave's job goes on with it).
    """

    def __init__(self, workload: Workload, optimizer_settings: OptimizerSettings, learning_rate: float,
                 batch_size: int, seed: int, device: torch.device, max_steps: Steps, *,
                 resolution: float = 0.05, eval_steps: list[Steps] | None = None, stop_at_target: bool = True,
                 hold_factor: float = 1.0, plateau_tolerance: float = 0.0):
        self.workload, self.device, self.batch_size, self.seed = workload, device, batch_size, seed
        self.learning_rate, self.max_steps, self.stop_at_target = learning_rate, max_steps, stop_at_target
        self.hold_factor, self.plateau_tolerance = hold_factor, plateau_tolerance
        self.model = build_model(workload, seed, device)
        self.optimizer = build_optimizer(self.model.parameters(), optimizer_settings, learning_rate)
        schedule = eval_steps if eval_steps is not None else eval_schedule(max_steps, resolution)
        self.pending = sorted({s for s in schedule if 0 < s <= max_steps} | {max_steps}, reverse=True)
        self.data = workload.batches("train", batch_size, seed)
        self.batches_drawn = 0
        self.rng = _rng_state(device)  # training starts from the state the model's initialisation left
        self.step: Steps = 0
        self.curve: list[dict] = []
        self.steps_to_target: Steps | None = None
        self.metrics: dict[str, float] = {}
        self.outcome: Outcome = "not_reached"
        self.reason = f"target not reached in {max_steps} steps"
        self.hold_until: Steps | None = None  # with stop_at_target: the last step of the hold after the target
        self.fell_back_at: Steps | None = None
        self.falls = 0  # times the metric crossed the target and fell back before its hold ended
        self.seconds = self.eval_seconds = 0.0
        self.plateau_check, self.stalls, self.stall_falls = PLATEAU_MIN_STEPS, 0, 0
        self.finished = False

    # ------------------------------------------------------------------------ the loop

    def advance(self, until: Steps | None = None, *, give_up_after: Steps | None = None,
                give_up_reason: str | None = None, contender: Callable[[Steps], bool] | None = None,
                on_step: Callable[[Steps, dict[str, float]], None] | None = None) -> TrialResult:
        """Train on to step `until` (evaluated there) or to the first stop rule; the result so far."""
        if self.finished:
            return self.result()
        workload, device, max_steps = self.workload, self.device, self.max_steps
        limit = max_steps if give_up_after is None else max(1, min(max_steps, give_up_after))
        stop = max_steps if until is None else max(1, min(max_steps, until))
        self.pending = sorted(set(self.pending) | {s for s in (limit, stop) if s > self.step}, reverse=True)
        _set_rng_state(self.rng, device)
        synchronize(device)
        start, eval_before = time.perf_counter(), self.eval_seconds
        seconds_before = self.seconds
        loss = torch.tensor(float("nan"))
        finished = False
        while self.step < max_steps and (self.step < stop or self.hold_until is not None):  # a hold is never cut
            loss = train_step(self.model, self.optimizer, workload, to_device(next(self.data), device))
            self.batches_drawn += 1
            self.step += 1
            step = self.step
            if on_step is not None:
                on_step(step, self.metrics)
            if not self.pending or step != self.pending[-1]:
                continue
            self.pending.pop()
            train_loss = float(loss)  # waits for the step's device work, so it is on the training clock
            synchronize(device)
            eval_start = time.perf_counter()
            # training steps so far, evaluations excluded
            train_seconds = seconds_before + eval_start - start - (self.eval_seconds - eval_before)
            metrics = evaluate(self.model, workload, device)
            synchronize(device)
            self.eval_seconds += time.perf_counter() - eval_start
            self.metrics = metrics
            self.curve.append({"step": step, "train_loss": train_loss, **metrics, "train_seconds": train_seconds})
            if self._after_evaluation(step, train_loss, metrics, limit, give_up_after, give_up_reason, contender):
                finished = True
                break
        synchronize(device)
        self.seconds = seconds_before + time.perf_counter() - start - (self.eval_seconds - eval_before)
        self.rng = _rng_state(device)
        self.finished = finished or self.step >= max_steps
        return self.result()

    def _after_evaluation(self, step: Steps, train_loss: float, metrics: dict[str, float], limit: Steps,
                          give_up_after: Steps | None, give_up_reason: str | None,
                          contender: Callable[[Steps], bool] | None) -> bool:
        """The stop rules at an evaluation; True when the trial is over."""
        workload, max_steps = self.workload, self.max_steps
        value = metrics[workload.target_metric]
        finite = math.isfinite(train_loss) and math.isfinite(value)
        met = finite and target_reached(value, workload.target_value, workload.target_direction)
        if self.hold_until is not None and not met:
            # The target did not hold. A first crossing that does not last is not a result a training
            # run can rely on, so train on: steps to target is where the metric reaches the target and
            # then stays there through its hold (and until then the trial may still stop early).
            self.fell_back_at, self.falls = step, self.falls + 1
            self.steps_to_target, self.hold_until, self.outcome = None, None, "not_reached"
            self.reason = (f"{workload.target_metric} reached the target but fell back {self.falls} time(s) (last at "
                           f"step {step}, to {value:.4g}); not held by step {max_steps}")
        if not finite:
            self.outcome = "diverged"
            self.reason = f"non-finite {'train loss' if not math.isfinite(train_loss) else workload.target_metric} at step {step}"
            return True
        if self.steps_to_target is None and met and give_up_after is not None and step > limit and limit < max_steps:
            # a crossing past the give-up point (the trial fell back, or the point was learnt late -- a
            # race in one process) cannot beat it: stopped there, as if the point had been known all along
            self.outcome = "stopped_early"
            self.reason = (f"crossed the target only at step {step}, past {give_up_after} steps: it cannot beat them"
                           + (f" ({give_up_reason})" if give_up_reason else ""))
            return True
        if self.steps_to_target is None and met:
            self.steps_to_target = step
            self.outcome, self.reason = "reached", f"{workload.target_metric} {value:.4g} at step {step}"
            if self.falls:
                self.reason += f" (after falling back below the target {self.falls} time(s))"
            if self.stop_at_target and contender is not None and not contender(step):
                self.reason += "; not held: at this step the rate cannot become the best at its size"
                return True
            if self.stop_at_target and step >= max_steps and math.ceil(step * self.hold_factor - 1e-9) > step:
                # a hold is asked and the crossing came at the last step: nothing is left to check that it
                # holds (a rate at the edge of stability crosses and falls back again and again), so it is
                # censored like a run that never crossed -- not a result that beats one that held
                self.steps_to_target, self.outcome = None, "not_reached"
                self.reason = (f"{workload.target_metric} {value:.4g} crossed the target only at step {step}, the last "
                               f"(max_steps), so no step was left to check that it holds"
                               + (f" (it had fallen back {self.falls} time(s) before)" if self.falls else ""))
                return True
            if self.stop_at_target:
                self.hold_until = min(max_steps, math.ceil(step * self.hold_factor - 1e-9))
                if self.hold_until <= step:
                    return True
                self.pending = sorted(set(self.pending) | {self.hold_until}, reverse=True)  # the hold ends with an evaluation
                return False
        if self.hold_until is not None and step >= self.hold_until:
            self.reason += f"; held to step {step}"
            return True
        if self.steps_to_target is None and self.plateau_tolerance > 0 and step >= self.plateau_check:
            if self._stalled(step, value):
                return True
        if self.steps_to_target is None and step >= limit and limit < max_steps:
            self.outcome, self.reason = "stopped_early", (f"not reached by step {step}, so it cannot beat {give_up_after} steps"
                                                          + (f" ({give_up_reason})" if give_up_reason else ""))
            return True
        return False

    def _stalled(self, step: Steps, value: float) -> bool:
        """The plateau rule at a doubling of steps; True (and the outcome set) after PLATEAU_CHECKS in a row."""
        workload, tolerance = self.workload, self.plateau_tolerance
        self.plateau_check = 2 * step
        if self.falls != self.stall_falls and self.stall_falls == 0:
            self.stalls = 0  # the first fall back: from here on progress is judged by the typical level
        self.stall_falls = self.falls
        steps_seen, values = [r["step"] for r in self.curve], [r[workload.target_metric] for r in self.curve]
        if self.falls:
            # A trial that crossed the target and fell back oscillates around it: its best value says
            # nothing (every dip below the target sets one), its median over a doubling does.
            stalled, m1, m2 = oscillating(steps_seen, values, workload.target_value, workload.target_direction, tolerance)
        else:
            stalled = plateaued(steps_seen, values, workload.target_value, workload.target_direction, tolerance)
        self.stalls = self.stalls + 1 if stalled else 0
        if self.stalls < PLATEAU_CHECKS:
            return False
        if self.falls:
            self.outcome, self.reason = "plateaued", (
                f"no progress: {workload.target_metric} crossed the target and fell back {self.falls} time(s) by step "
                f"{step}, and its median over the last doubling of steps ({m2:.4g}) gained < "
                f"{tolerance:g} of the distance to the target on the best of an earlier doubling ({m1:.4g}), "
                f"over each of the last {PLATEAU_CHECKS} doublings of steps: oscillating (e.g. at the edge "
                f"of stability)")
        else:
            self.outcome, self.reason = "plateaued", (f"{workload.target_metric} stalled at {value:.4g} by step {step} "
                                                      f"(over each of the last {PLATEAU_CHECKS} doublings of steps the best "
                                                      f"gained < {tolerance:g} of the distance to the target)")
        return True

    def hold(self, hold_factor: float) -> None:
        """A trial that stopped at its first crossing (or a short hold) is held after all: trained on to its
        crossing x `hold_factor` by the next `advance`, as if it had been held that long from the start."""
        if self.steps_to_target is None:
            raise ValueError(f"only a trial that reached the target can be held (this one: {self.outcome})")
        self.hold_through(math.ceil(self.steps_to_target * hold_factor - 1e-9))

    def hold_through(self, step: Steps) -> None:
        """Hold the target through `step` (at most max_steps): the next `advance` trains on to it, evaluated
        there; a fall back below the target on the way moves the crossing on, as in one run."""
        if self.outcome != "reached" or self.steps_to_target is None:
            raise ValueError(f"only a trial that reached the target can be held (this one: {self.outcome})")
        end = min(self.max_steps, step)
        if end <= self.step:
            return
        self.hold_factor = max(self.hold_factor, end / self.steps_to_target)
        self.reason = self.reason.split("; not held")[0].split("; held to step")[0]
        self.hold_until, self.finished = end, False
        self.pending = sorted(set(self.pending) | {end}, reverse=True)

    # ------------------------------------------------------------------------ results and state

    @property
    def paused(self) -> bool:
        return not self.finished and self.step > 0

    def result(self) -> TrialResult:
        """Where the trial stands, as a TrialResult (outcome `paused` while it may go on)."""
        outcome, reason = self.outcome, self.reason
        if not self.finished:
            outcome, reason = "paused", f"paused at step {self.step}" + (
                f" ({self.workload.target_metric} {self.metrics[self.workload.target_metric]:.4g})"
                if self.workload.target_metric in self.metrics else "")
        return TrialResult(outcome, self.steps_to_target, self.step, self.step * self.batch_size, self.seconds,
                           dict(self.metrics), [dict(r) for r in self.curve], reason, self.eval_seconds,
                           self.fell_back_at)

    _STATE = ("step", "curve", "steps_to_target", "metrics", "outcome", "reason", "hold_until", "fell_back_at",
              "falls", "seconds", "eval_seconds", "plateau_check", "stalls", "stall_falls", "finished", "pending",
              "batches_drawn", "hold_factor")

    def state_dict(self) -> dict:
        """Everything `from_state` needs to go on exactly where this trial stands (torch.save-able)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "rng": self.rng,
                "learning_rate": self.learning_rate, "batch_size": self.batch_size, "seed": self.seed,
                **{k: getattr(self, k) for k in self._STATE}}

    @classmethod
    def from_state(cls, state: dict, workload: Workload, optimizer_settings: OptimizerSettings,
                   device: torch.device, max_steps: Steps, **settings) -> "LiveTrial":
        """The trial `state_dict` wrote, rebuilt: the data iterator is made anew and advanced past the
        batches the trial had drawn (the same order, drawn again), the rest loaded as it was."""
        trial = cls(workload, optimizer_settings, state["learning_rate"], state["batch_size"], state["seed"], device,
                    max_steps, **settings)
        trial.model.load_state_dict(state["model"])
        trial.optimizer.load_state_dict(state["optimizer"])
        for k in cls._STATE:
            setattr(trial, k, state[k])
        trial.rng = state["rng"]
        for _ in range(trial.batches_drawn):
            next(trial.data)
        return trial
