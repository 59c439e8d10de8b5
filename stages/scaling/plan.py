"""`python -m stages.scaling plan`: the study's bill before it runs -- trials, examples and wall time
per batch size, from the steps the neighbouring sizes already measured (their journals) and the
throughput stage's time per step. Each `scaling trials` job prints its own size's line of it when it
starts (`plan_line`), and an ETA on each trial's progress line (`SearchProgress`): the same cost model,
re-estimated from the best steps the size has found so far, at the seconds per step the job measures.

The cost model (`search_steps`) counts a size's search in runs of its steps to target S: the coarse
grid and refinement trials each stop by about S (early stopping), about half of them reach and hold
to S x hold_factor, and every seed rerun runs to S x hold_factor. Where no size has measured its steps
yet, S is max_steps: the estimate is then the bill's upper end (every first trial bounded by max_steps).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import pandas as pd

from stages.core.log import info
from stages.core.progress import Progress, duration
from stages.search.tune import trial_text
from stages.scaling.descent import descent_stop

REACHING_SHARE = 0.5  # share of the search-seed trials that reach the target (and hold it), measured ~0.4-0.6


def search_trials(s) -> tuple[int, int]:
    """(search-seed trials, seed reruns) one size's search is expected to spend with settings `s`:
    the unimodal coarse grid stops after about 4 rates, the refinement after about 3 (its caps permitting);
    the seeds: `rerun_top` rates get the first, then half of them each further one."""
    coarse = min(s.lr_points, 4 if s.lr_unimodal else s.lr_points)
    refine = min(s.lr_refine_trials, 3)
    seeds, rates = 0, s.rerun_top
    for k in range(s.seeds):
        seeds += rates
        rates = max(1, math.ceil(rates / 2))
    return coarse + refine, seeds


def search_steps(steps_to_target: float, s) -> float:
    """Training steps one size's search is expected to spend if its best rate needs `steps_to_target`."""
    searched, seeded = search_trials(s)
    return steps_to_target * (searched * (1 + REACHING_SHARE * (s.hold_factor - 1)) + seeded * s.hold_factor)


def predicted_steps(batch_size: int, measured: dict[int, float], max_steps: int) -> tuple[float, str]:
    """Steps to target at `batch_size` from the sizes measured so far: between two measured sizes,
    interpolated in log-log; below the smallest, perfect scaling (steps x the size ratio); above the
    largest, its steps (steps never rise with the batch size); nothing measured: max_steps."""
    if batch_size in measured:
        return measured[batch_size], "measured"
    if not measured:
        return float(max_steps), "max_steps (nothing measured yet)"
    sizes = sorted(measured)
    below = [b for b in sizes if b < batch_size]
    above = [b for b in sizes if b > batch_size]
    if below and above:
        b0, b1 = below[-1], above[0]
        t = math.log(batch_size / b0) / math.log(b1 / b0)
        steps = math.exp((1 - t) * math.log(measured[b0]) + t * math.log(measured[b1]))
        return min(steps, max_steps), f"between bs {b0} and {b1}"
    if above:
        return min(measured[above[0]] * above[0] / batch_size, max_steps), f"perfect scaling from bs {above[0]}"
    return min(measured[below[-1]], max_steps), f"no fewer than bs {below[-1]}'s"


def not_trained(batch_sizes: list[int], measured: dict[int, float], ratio: float) -> set[int]:
    """The sizes the adaptive descent will predict instead of training, as far as the measured sizes
    (from the largest down, without a gap) already confirm two halvings in perfect scaling."""
    seen: list[tuple[int, float | None]] = []
    for i, b in enumerate(sorted(batch_sizes, reverse=True)):
        if descent_stop(seen, ratio) is not None:
            return set(sorted(batch_sizes, reverse=True)[i:])
        if b not in measured:
            return set()
        seen.append((b, measured[b]))
    return set()


def plan_table(batch_sizes: list[int], measured: dict[int, float], time_per_step_s: dict[int, float],
               s, all_sizes: list[int] | None = None) -> pd.DataFrame:
    """One row per size: predicted steps to target and where from, trials, steps, examples and seconds
    the search is expected to spend (seconds: NaN where throughput did not time the size). With
    scaling.adaptive, a size the measured ones already place below two perfect-scaling halvings
    costs nothing (`all_sizes`: the study's sizes, when `batch_sizes` is a part of them)."""
    searched, seeded = search_trials(s)
    skip = not_trained(all_sizes or batch_sizes, measured, s.adaptive_ratio) if s.adaptive else set()
    rows = []
    for b in batch_sizes:
        steps, source = predicted_steps(b, measured, s.max_steps)
        if b in skip:
            rows.append({"batch_size": b, "steps_to_target": round(steps), "trials": 0, "steps": 0, "examples": 0,
                         "from": "not trained: the adaptive descent predicts it (perfect scaling)", "seconds": 0.0})
            continue
        spend = search_steps(steps, s)
        rows.append({"batch_size": b, "steps_to_target": round(steps), "from": source, "trials": searched + seeded,
                     "steps": round(spend), "examples": round(spend * b),
                     "seconds": spend * time_per_step_s[b] if b in time_per_step_s else math.nan})
    return pd.DataFrame(rows)


def plan_line(row: pd.Series) -> str:
    """One size's bill in words: 'about 10 trials, 3720 steps, 238080 examples, about 4 s of training
    (steps to target 93: between bs 32 and 128)'."""
    seconds = "" if pd.isna(row["seconds"]) else f", about {duration(row['seconds'])} of training"
    return (f"about {row['trials']} trials, {row['steps']} steps, {row['examples']} examples{seconds} "
            f"(steps to target {row['steps_to_target']}: {row['from']})")


class SearchProgress:
    """The progress line of each trial of one size's search, with an ETA: the search's expected steps
    (`search_steps`) for the steps to target known now -- the best found at this size so far once a
    rate reached, else the plan's prediction -- less the steps spent, at the wall seconds per step the
    job's trained trials took (journal replays cost nothing; before any trained trial, throughput's
    time per step). At least one more trial's time while the search runs past its estimate."""

    def __init__(self, label: str, predicted_steps: float, s, time_per_step_s: float | None = None,
                 stage: str = "scaling", clock: Callable[[], float] = time.monotonic,
                 say: Callable[[str, str], None] = info):
        searched, seeded = search_trials(s)
        self.bar = Progress(stage, f"{label} trial", searched + seeded, every_s=0.0, clock=clock, say=say)
        self.predicted, self.s, self.time_per_step_s, self.clock = predicted_steps, s, time_per_step_s, clock
        self.trials = self.steps = self.trained = self.trained_steps = self.replayed = 0
        self.trained_seconds, self.last, self.best = 0.0, clock(), None

    def __call__(self, trial) -> None:
        self.count(trial)
        self.bar.total = max(self.bar.total, self.trials + 1)  # open-ended: `finish` says when it is done
        self.bar.update(self.trials, trial_text(trial), eta_s=self.eta_s())

    def count(self, trial) -> None:
        """Take a finished trial into the counts and the ETA, without a line (a replay nobody waits for)."""
        r, now = trial.result, self.clock()
        self.trials += 1
        self.replayed += trial.resumed
        self.steps += r.steps_run
        if not trial.resumed:
            self.trained += 1
            self.trained_steps += r.steps_run
            self.trained_seconds += now - self.last
        self.last = now
        if trial.phase != "seed" and r.steps_to_target is not None:
            self.best = min(self.best or r.steps_to_target, r.steps_to_target)

    def eta_s(self) -> float | None:
        per_step = self.trained_seconds / self.trained_steps if self.trained_steps else self.time_per_step_s
        if per_step is None:
            return None
        left = max(0.0, search_steps(self.best or self.predicted, self.s) - self.steps) * per_step
        return max(left, self.trained_seconds / self.trained if self.trained else 0.0)

    def finish(self, detail: str = "") -> None:
        self.bar.total = self.trials
        replayed = f"{self.replayed} from the journal, " if self.replayed else ""
        self.bar.finish(self.trials, replayed + detail)


def throughput_times(table: pd.DataFrame) -> dict[int, float]:
    """Batch size -> time per step from throughput's table (sizes it did not time left out)."""
    return {int(b): float(x) for b, x in zip(table["batch_size"], table["time_per_step_s"]) if pd.notna(x)}
