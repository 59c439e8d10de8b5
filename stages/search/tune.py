"""The learning-rate search at one batch size, in its parts and as one call.

- `coarse`: the coarse search (coarse.rung_search) over the grid, or around a prior's rate;
- `finish`: refinement around the best (refine.resolve), the hold of the rates in contention, and
  successive halving over extra seeds (refine.successive_halving);
- `tune_learning_rate`: both in one go (the family stage, one candidate model at one batch size).
The scaling study runs them in separate waves of jobs: the coarse search at every size, then `finish`
only where the size can still win (stages/scaling/). Both stages search the same way, so they compare
models and sizes on equal terms.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from stages.core import log
from stages.core.config import LR_RANGES, OptimizerSettings, ScalingSettings
from stages.core.context import Context
from stages.core.imports import code_hash, user_code
from stages.core.io import content_hash
from stages.core.types import Steps
from stages.search.coarse import MIN_PILOT, Target, Trial, grid_ratio, learning_rate_grid, rung_search, rung_steps
from stages.search.journal import Journal
from stages.search.pool import TrialPool
from stages.search.refine import hold_to_budget, resolve, successive_halving
from stages.search.trial import LiveTrial
from stages.workloads.base import Workload

TRIAL_CODE = "stages.search.trial"  # a trial's result depends on this module and everything it imports


@dataclass(frozen=True)
class SearchRange:
    low: float
    high: float
    source: str  # where it comes from, in words (the report states it)


def search_range(s: ScalingSettings, optimizer: str) -> SearchRange:
    """The learning-rate range to search: scaling.lr_min / lr_max where set, else the optimizer's usual one."""
    low, high = LR_RANGES.get(optimizer, LR_RANGES["sgd"])
    if s.lr_min is not None and s.lr_max is not None:
        return SearchRange(s.lr_min, s.lr_max, "scaling.lr_min and scaling.lr_max")
    lo = s.lr_min if s.lr_min is not None else low   # the schema refuses a range that ends below its start
    hi = s.lr_max if s.lr_max is not None else high
    set_ = [k for k, v in (("scaling.lr_min", s.lr_min), ("scaling.lr_max", s.lr_max)) if v is not None]
    return SearchRange(lo, hi, f"the usual range for {optimizer} ({low:g} to {high:g})"
                       + (f", with {' and '.join(set_)} as set" if set_ else ""))


@dataclass(frozen=True)
class Prior:
    """What is expected of a size before its search: the rate likely best and the steps it needs (from
    the neighbouring sizes, or the previous study). It only orders and sizes the search -- which rates
    start, how long the first rung is -- and is never reported as a result."""
    rate: float
    steps: float | None
    source: str
    spacing: float | None = None  # how finely the rate is known (a previous refined bracket); None: a grid step


def trial_identity(ctx: Context, batch_size: int, max_steps: int) -> dict:
    """Everything that decides a trial's result, hashed into the journal's file name."""
    p, w = ctx.params, ctx.workload
    return {"workload": p.workload.name, "kwargs": p.workload.kwargs, "hyperparameters": w.hyperparameters(),
            "optimizer": asdict(p.optimizer), "batch_size": batch_size, "max_steps": max_steps,
            "eval_resolution": p.scaling.eval_resolution, "hold_factor": p.scaling.hold_factor,
            "plateau_tolerance": p.scaling.plateau_tolerance, "device": ctx.device.type, "threads": ctx.threads,
            "torch": torch.__version__,
            "code": {TRIAL_CODE: code_hash(TRIAL_CODE),
                     **{str(f): content_hash(f) for f in (*w.source_files(), *p.workload.sources,
                                                           *user_code(p.workload.sources)[0])}}}  # + their imports


def trial_text(t: Trial) -> str:
    """One trial in words: 'coarse lr 0.1 seed 0: reached at step 93 (23808 examples, 0.05 s)'."""
    r = t.result
    what = f"{r.outcome} at step {r.steps_to_target}" if r.steps_to_target else f"{r.outcome} after {r.steps_run} steps"
    return (f"{t.phase} lr {t.learning_rate:.4g} seed {t.seed}: {what} "
            f"({r.examples_run} examples, {r.seconds:.2f} s{', from journal' if t.resumed else ''})")


def target_of(workload: Workload) -> Target:
    return Target(workload.target_metric, workload.target_value, workload.target_direction)


def make_pool(workload: Workload, optimizer: OptimizerSettings, batch_size: int, device: torch.device,
              s: ScalingSettings, seed: int, max_steps: int, *, journal: Journal | None = None) -> TrialPool:
    """The trials of one search. Every trial holds the target scaling.hold_factor x its crossing before
    its rate ranks (a rate at the edge of stability crosses early and falls back); the rates select may
    choose are held through their step budget afterwards (refine.hold_to_budget). The search seed's
    trials stop when they stall (scaling.plateau_tolerance); other seeds measure the spread of a rate
    that reached the target, so a slow seed is data, never a dead end."""

    def make(lr: float, trial_seed: int) -> LiveTrial:
        return LiveTrial(workload, optimizer, lr, batch_size, trial_seed, device, max_steps,
                         **trial_settings(s, seed, trial_seed, s.hold_factor))

    return TrialPool(make, journal)


def trial_settings(s: ScalingSettings, search_seed: int, trial_seed: int, hold: float) -> dict:
    """LiveTrial's settings for a trial of the search (the plateau stop for the search seed only)."""
    return {"resolution": s.eval_resolution, "hold_factor": hold,
            "plateau_tolerance": s.plateau_tolerance if trial_seed == search_seed else 0.0}


def first_rung(s: ScalingSettings, max_steps: Steps, prior: Prior | None) -> Steps:
    """scaling.pilot_steps; by default a quarter of the steps a prior expects, else max_steps / 64."""
    if s.pilot_steps is not None:
        return s.pilot_steps
    if prior is not None and prior.steps:
        return max(MIN_PILOT, math.ceil(prior.steps / 4))
    return max(MIN_PILOT, math.ceil(max_steps / 64))


def coarse(pool: TrialPool, workload: Workload, s: ScalingSettings, optimizer: str, seed: int, max_steps: int, *,
           prior: Prior | None = None, on_rung: Callable[[Steps, list[Trial]], None] | None = None,
           allowance_s: float | None = None) -> list[Trial]:
    """The coarse search: the whole grid (no prior), or the prior's rate with a grid step either side."""
    r = search_range(s, optimizer)
    grid = learning_rate_grid(r.low, r.high, s.lr_points, s.lr_grid, seed)
    step = grid_ratio(r.low, r.high, s.lr_points)
    # a prior's rate a step either side: the grid's step, or how finely the previous study knew the rate --
    # but no finer than scaling.lr_refine_ratio, the resolution the search stops at (a previous refined
    # bracket of a few percent ties on steps everywhere and would only widen, trial by trial)
    near = step if prior is None or not prior.spacing else min(step, max(prior.spacing, s.lr_refine_ratio))
    rates = grid if prior is None else [prior.rate / near, prior.rate, prior.rate * near]
    return rung_search(pool, rates, seed, target_of(workload), first_rung=first_rung(s, max_steps, prior),
                       max_steps=max_steps, resolution=s.eval_resolution, margin=s.prune_margin, widen_step=near,
                       max_widen=step, low_limit=r.low / s.lr_widen_factor, high_limit=r.high * s.lr_widen_factor,
                       hint=prior.rate if prior else None, early_stopping=s.early_stopping, on_rung=on_rung,
                       resolved=s.lr_refine_ratio,
                       out_of_budget=None if allowance_s is None else lambda trials: pool.seconds >= allowance_s)


def finish(coarse_trials: list[Trial], pool: TrialPool, workload: Workload, s: ScalingSettings, optimizer: str,
           seed: int, max_steps: int, *, seeds: bool = True, refine_trials: int | None = None,
           budget_margin: float | None = None, on_trial: Callable[[Trial], None] | None = None,
           allowance_s: float | None = None) -> list[Trial]:
    """After the coarse search: refinement around the best rate (pruned against the best's curve), then
    (`seeds`) extra seeds by successive halving, and (`budget_margin`: select.step_budget_margin) the
    hold of every run of the rates select may choose through their step budget -- each step skipped once
    `allowance_s` seconds of training are spent (scaling.budget_seconds). `refine_trials` caps the
    refinement (None: scaling.lr_refine_trials). Returns every trial, the coarse ones included (the held
    ones with their held result)."""
    r = search_range(s, optimizer)
    step = grid_ratio(r.low, r.high, s.lr_points)
    start = pool.seconds

    def stop() -> bool:  # scaling.budget_seconds: this size's share of what the study has left
        return allowance_s is not None and pool.seconds - start >= allowance_s

    refined = resolve(coarse_trials, pool, seed, target_of(workload), ratio=s.lr_refine_ratio,
                      max_trials=s.lr_refine_trials if refine_trials is None else refine_trials, resolution=s.eval_resolution, low_limit=r.low / s.lr_widen_factor,
                      high_limit=r.high * s.lr_widen_factor, widen_step=step,
                      rungs=rung_steps(first_rung(s, max_steps, None), max_steps, s.eval_resolution),
                      margin=s.prune_margin, early_stopping=s.early_stopping, on_trial=on_trial, stop=stop)
    searched = coarse_trials + refined
    if not seeds:
        return searched
    extra = [seed + k for k in range(1, s.seeds + 1)]
    trials = searched + successive_halving(searched, pool, extra, s.rerun_top, on_trial=on_trial, stop=stop)
    return trials if budget_margin is None else hold_to_budget(trials, pool, budget_margin, on_trial=on_trial, stop=stop)


def rung_line(label: str, stage: str, target: Target):
    """on_rung: one line per rung -- the leader, how many rates still race, which were pruned."""
    def say(step: Steps, trials: list[Trial]) -> None:
        racing = [t for t in trials if t.result.outcome == "paused"]
        reached = [t for t in trials if t.result.steps_to_target is not None]
        pruned = [t for t in trials if t.result.outcome == "pruned" or "pruned at" in t.result.reason]
        lead = min(reached, key=lambda t: t.result.steps_to_target) if reached else None
        where = (f"lr {lead.learning_rate:.4g} reached at step {lead.result.steps_to_target}" if lead
                 else "nothing reached yet")
        log.info(stage, f"{label} rung {step}: {len(racing)} rate(s) racing, {where}"
                        + (f", {len(pruned)} pruned" if pruned else ""))
    return say


def tune_learning_rate(workload: Workload, optimizer: OptimizerSettings, batch_size: int, device: torch.device,
                       s: ScalingSettings, seed: int, max_steps: int, *, journal: Journal | None = None,
                       prior: Prior | None = None, stage: str = "scaling", label: str | None = None,
                       on_trial: Callable[[Trial], None] | None = None) -> list[Trial]:
    """Every trial of the search at one size (coarse, widen, refine, seed) in one process: one line per
    rung of the coarse search, then one per trial (`on_trial`; else numbered `trial_text` lines)."""
    label = label or f"bs {batch_size}"
    count = [0]

    def numbered(t: Trial) -> None:
        count[0] += 1
        log.info(stage, f"{label} {trial_text(t)} [trial {count[0]}]")

    pool = make_pool(workload, optimizer, batch_size, device, s, seed, max_steps, journal=journal)
    found = coarse(pool, workload, s, optimizer.name, seed, max_steps, prior=prior,
                   on_rung=rung_line(label, stage, target_of(workload)))
    for t in found:
        (on_trial or numbered)(t)
    return finish(found, pool, workload, s, optimizer.name, seed, max_steps, on_trial=on_trial or numbered)
