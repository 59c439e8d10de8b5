"""The learning-rate search at one batch size: grid, trial order, early stopping, resume journal.

Every learning rate of the grid is tried (so the result equals an exhaustive grid) -- or, with
`unimodal`, only until the best is flanked by worse neighbours -- and cheaply:
- Order: start at the geometric centre of the range (or at a hint, e.g. the best learning rate of
  the neighbouring batch size), then always try the untried rate nearest the best one so far --
  good rates come early.
- Early stopping: a trial gives up once it passes the best steps-to-target already found at this
  batch size (`give_up_after`; with `keep` > 1, the keep-th best, so the top rates for the seed
  reruns are still known). Steps to target are read on one evaluation schedule, so a trial that
  could tie or beat the best still reaches it: the best steps and learning rate are exactly those
  of running every trial to `max_steps` (tests/test_scaling.py checks it).
- A give-up point from the first trial: before any rate at this size reached the target, a trial
  gives up at `bound` -- steps that the best rate at this size needs at most, known from the
  neighbouring sizes (trials.py's `first_trial_bound`) -- instead of running to max_steps. Should no
  grid rate reach within it, the rate between the two that came closest is tried within it (the
  bound is about the best rate, which a coarse grid can miss by a factor ~3); should that miss too
  (the bound was wrong), the bound is raised x4 and the rates it stopped are tried again, closest
  first, until one reaches (beyond max_steps the bound is lifted), so a bound can cost trials but
  never the result. With nothing known (no neighbouring size has reached yet: the first size of the
  scaling study), the first bound is a first look at max_steps / 32 (`first_look`): a first rate far
  from the best -- at the largest batch size, the costliest steps -- no longer runs to max_steps.
- Journal: each finished trial is appended (one JSON line, flushed) to a file named by a hash of
  everything that determines a trial. A rerun replays finished trials from it instead of training
  again; the order and give-up points are deterministic, so an interrupted job resumes exactly.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Literal

import numpy as np

from stages.search.journal import Journal
from stages.search.ranking import rank_key
from stages.search.trial import TrialResult

RunTrial = Callable[..., TrialResult]  # (learning rate, seed, give_up_after[, contender=]) -> result


def learning_rate_grid(lr_min: float, lr_max: float, points: int, kind: Literal["log", "sobol"] = "log",
                       seed: int = 0) -> list[float]:
    """`points` learning rates in [lr_min, lr_max], increasing: log-spaced, or scrambled Sobol
    points in log space (fills the range without a fixed ratio; same seed, same points)."""
    if points == 1:
        return [float(math.sqrt(lr_min * lr_max))]
    lo, hi = math.log(lr_min), math.log(lr_max)
    if kind == "log":
        u = np.linspace(0.0, 1.0, points)
    else:
        from scipy.stats import qmc

        with warnings.catch_warnings():  # balance properties want a power of two; any N is fine here
            warnings.simplefilter("ignore", UserWarning)
            u = np.sort(qmc.Sobol(d=1, scramble=True, seed=seed).random(points)[:, 0])
    return [float(math.exp(lo + x * (hi - lo))) for x in u]


def start_index(grid: list[float], hint: float | None = None) -> int:
    """Index to try first: nearest the hint (log distance) if any, else the geometric centre."""
    target = math.log(hint) if hint else (math.log(grid[0]) + math.log(grid[-1])) / 2
    return min(range(len(grid)), key=lambda i: (abs(math.log(grid[i]) - target), i))


def next_index(grid: list[float], tried: dict[int, TrialResult], start: int,
               score: Callable[[TrialResult], float] | None = None) -> int | None:
    """The untried rate nearest (in grid steps) the best so far: the one with the fewest steps to
    target, or -- before any reached it -- the best `score` (e.g. final metric; lower is better),
    else the start. Ties -> the smaller rate."""
    untried = [i for i in range(len(grid)) if i not in tried]
    if not untried:
        return None
    reached = [i for i, r in tried.items() if r.steps_to_target is not None]
    if reached:
        anchor = min(reached, key=lambda i: (tried[i].steps_to_target, i))
    elif tried and score is not None:
        anchor = min(tried, key=lambda i: (score(tried[i]), abs(i - start), i))
    else:
        anchor = start
    return min(untried, key=lambda i: (abs(i - anchor), i))


def final_metric_score(metric: str, direction: str) -> Callable[[TrialResult], float]:
    """Lower is better: how close a trial that missed the target got (diverged trials last)."""
    def score(r: TrialResult) -> float:
        value = r.final_metrics.get(metric, math.nan)
        if r.outcome == "diverged" or not math.isfinite(value):
            return math.inf
        return -value if direction == "above" else value
    return score


def measurably_worse(result: TrialResult, best: int, resolution: float) -> bool:
    """Did this trial need more than one evaluation interval beyond the best's steps (or never reach)?"""
    return result.steps_to_target is None or result.steps_to_target > best * (1 + resolution)


def bracketed(grid: list[float], tried: dict[int, TrialResult], resolution: float) -> bool:
    """Is the best grid rate flanked on each side (that has grid points) by a tried, measurably worse
    neighbour? If steps to target are unimodal in the rate, no untried grid rate can beat it."""
    reached = [i for i, r in tried.items() if r.steps_to_target is not None]
    if not reached:
        return False
    b = min(reached, key=lambda i: (tried[i].steps_to_target, i))
    steps = tried[b].steps_to_target
    return all(n < 0 or n >= len(grid) or (n in tried and measurably_worse(tried[n], steps, resolution))
               for n in (b - 1, b + 1))


def best_steps(results: list[TrialResult], k: int = 1) -> int | None:
    """The k-th fewest steps to target among the results (None while fewer than k reached it)."""
    reached = sorted(r.steps_to_target for r in results if r.steps_to_target is not None)
    return reached[k - 1] if len(reached) >= k else None



@dataclass(frozen=True)
class Bound:
    """Steps that the best rate at a batch size needs at most, and where that is known from."""
    steps: int
    why: str   # e.g. "bs 32 reached in 120 steps (x 1.5): steps never rise with the batch size"


@dataclass
class Trial:
    learning_rate: float
    seed: int
    # see refine.py for widen, refine and seed; "bounded": a trial a bound stopped before any rate
    # reached, then tried again with the bound raised or lifted (search) -- it counts in the study's
    # cost, never as a measurement
    phase: Literal["coarse", "widen", "refine", "seed", "bounded"]
    order: int                  # position in the order the trials were run
    give_up_after: int | None
    result: TrialResult
    resumed: bool               # replayed from the journal instead of trained


def run_cached(run: RunTrial, journal: Journal | None, learning_rate: float, seed: int,
               give_up_after: int | None, contender: Callable[[int], bool] | None = None) -> tuple[TrialResult, bool]:
    """A trial, replayed from the journal if it ran before (its give-up point and contention are
    decided by the trials before it, so a replay is the same trial)."""
    if journal is not None:
        cached = journal.get(learning_rate, seed, give_up_after)
        if cached is not None:
            return cached, True
    result = (run(learning_rate, seed, give_up_after) if contender is None
              else run(learning_rate, seed, give_up_after, contender=contender))
    if journal is not None:
        journal.add(learning_rate, seed, give_up_after, result)
    return result, False


def search(grid: list[float], run: RunTrial, seed: int, *, journal: Journal | None = None,
           hint: float | None = None, early_stopping: bool = True,
           score: Callable[[TrialResult], float] | None = None, keep: int = 1,
           unimodal: bool = False, resolution: float = 0.05, bound: Bound | None = None,
           max_steps: int | None = None, on_trial: Callable[[Trial], None] | None = None) -> list[Trial]:
    """Try the rates of `grid` at one seed, in the order above, each giving up once it cannot beat
    the `keep`-th best so far -- i.e. can no longer enter the top `keep` that get seed reruns
    (unless `early_stopping` is False: the exhaustive grid) -- and, before any rate reached the
    target, at `bound`. Every rate is tried unless `unimodal`: then the grid stops once the best is
    `bracketed` (rates farther out cannot win if steps to target have one minimum in the rate), which
    saves the costliest trials, the far ones."""
    start = start_index(grid, hint)
    tried: dict[int, TrialResult] = {}
    trials: list[Trial] = []

    def attempt(i: int | float, give_up: int | None, from_bound: bool) -> TrialResult:
        """Grid rate i (an int), or a rate between two (a float: phase refine, not in `tried`)."""
        lr = grid[i] if isinstance(i, int) else i
        result, resumed = run_cached(run, journal, lr, seed, give_up)
        if from_bound and result.outcome == "stopped_early":
            result = replace(result, reason=f"not reached by step {result.steps_run}, the most the best rate "
                                            f"here needs: {bound.why}")
        if isinstance(i, int):
            tried[i] = result
        trials.append(Trial(lr, seed, "coarse" if isinstance(i, int) else "refine", len(trials), give_up, result, resumed))
        if on_trial:
            on_trial(trials[-1])
        return result

    while (i := next_index(grid, tried, start, score)) is not None:
        if unimodal and bracketed(grid, tried, resolution):
            break
        give_up = best_steps(list(tried.values()), keep) if early_stopping else None
        from_bound = bound is not None and best_steps(list(tried.values())) is None
        attempt(i, bound.steps if from_bound and give_up is None else give_up, from_bound and give_up is None)
    stopped = [i for i, r in tried.items() if r.outcome == "stopped_early"]
    rank = score or (lambda r: 0.0)
    if bound is not None and best_steps(list(tried.values())) is None and stopped:
        # The bound stopped every grid rate short of the target. The grid is coarse (a factor ~3 between
        # rates), and the best rate -- which the bound is about -- may lie between the two that came
        # closest: try there, within the bound, first.
        i = min(stopped, key=lambda k: (rank(tried[k]), k))
        j = min((k for k in (i - 1, i + 1) if k in stopped), key=lambda k: (rank(tried[k]), k), default=None)
        if j is not None and attempt(math.sqrt(grid[i] * grid[j]), bound.steps, True).steps_to_target is not None:
            return trials
    while bound is not None and best_steps(list(tried.values())) is None and stopped:
        # Still nothing: the bound was too tight (a neighbour's steps are a noisy measurement, or the
        # bound was a first look). Deepen it x4 (`max_steps` given; beyond it, or without it: lift it)
        # and try the stopped rates again, closest first.
        for t in trials:  # superseded by the retries: kept for their cost, not read as measurements
            if t.result.outcome == "stopped_early":
                t.phase = "bounded"
        deeper = bound.steps * DEEPEN
        bound = (Bound(deeper, f"{bound.why}; no rate reached within {bound.steps} steps, so x{DEEPEN}")
                 if max_steps is not None and deeper < max_steps else None)
        for i in sorted(stopped, key=lambda i: (rank(tried[i]), i)):
            give_up = best_steps(list(tried.values()), keep) if early_stopping else None
            from_bound = bound is not None and give_up is None
            attempt(i, bound.steps if from_bound else give_up, from_bound)
        stopped = [i for i, r in tried.items() if r.outcome == "stopped_early"]
    return trials


DEEPEN = 4       # a bound that stopped every rate is raised this many times over (up to max_steps), then lifted
FIRST_LOOK = 32   # with nothing known, a size's first trials give up at max_steps / this (deepened while no rate reaches)


def first_look(max_steps: int) -> Bound:
    """The give-up point of a search's first trials when nothing is known -- no neighbouring size has
    reached the target yet: a fraction of max_steps, deepened x DEEPEN while no rate reaches -- so a
    first rate far from the best (at the largest batch size, the most examples a step) costs at most
    max_steps / FIRST_LOOK steps. (Where a neighbour says the best rate may need max_steps, there is
    no first look: it would only add waves.)"""
    return Bound(max(1, math.ceil(max_steps / FIRST_LOOK)),
                 f"nothing known yet: a first look at max_steps / {FIRST_LOOK}, x{DEEPEN} while no rate reaches")


def best_learning_rate(rows: list[tuple[float, str, int | None]]) -> float | None:
    """The best rate from (learning rate, phase, steps to target) rows of one batch size (phase
    'bounded' left out: a retried attempt): among the
    rates rerun with seeds (phase 'seed') if any -- of those, the ones that got the most seeds, i.e.
    survived the successive halving -- else all, the one with the best rank_key (median first)."""
    rows = [r for r in rows if r[1] != "bounded"]  # trials a bound stopped, tried again
    seeded = {lr for lr, phase, _ in rows if phase == "seed"}
    by_lr: dict[float, list[int | None]] = {}
    for lr, _, steps in rows:
        if lr in seeded or not seeded:
            by_lr.setdefault(lr, []).append(steps)
    most = max((len(v) for v in by_lr.values()), default=0)
    candidates = [lr for lr, steps in by_lr.items() if any(s is not None for s in steps) and len(steps) == most]
    if not candidates:
        return None
    return min(candidates, key=lambda lr: rank_key(by_lr[lr], lr))
