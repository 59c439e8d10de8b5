"""The learning-rate search at one batch size, as one call: coarse grid, widening at an edge and
refinement around the best (refine.py), then successive halving over extra seeds for the rates in
contention. The scaling study runs it once per batch size; the family stage once per candidate
model, at one batch size -- the same search, so both compare models and sizes on equal terms.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Callable

import torch

from stages.core import log
from stages.core.config import OptimizerSettings, ScalingSettings
from stages.core.context import Context
from stages.core.imports import code_hash
from stages.core.io import content_hash
from stages.search.coarse import Bound, Trial, final_metric_score, learning_rate_grid, search
from stages.search.journal import Journal
from stages.search.refine import resolve, successive_halving
from stages.search.trial import train_to_target
from stages.workloads.base import Workload


TRIAL_CODE = "stages.search.trial"  # a trial's result depends on this module and everything it imports


def trial_identity(ctx: Context, batch_size: int, max_steps: int) -> dict:
    """Everything that decides a trial's result, hashed into the journal's file name."""
    p, w = ctx.params, ctx.workload
    return {"workload": p.workload.name, "kwargs": p.workload.kwargs, "hyperparameters": w.hyperparameters(),
            "optimizer": asdict(p.optimizer), "batch_size": batch_size, "max_steps": max_steps,
            "eval_resolution": p.scaling.eval_resolution, "hold_factor": p.scaling.hold_factor,
            "plateau_tolerance": p.scaling.plateau_tolerance, "device": ctx.device.type, "threads": ctx.threads,
            "torch": torch.__version__,
            "code": {TRIAL_CODE: code_hash(TRIAL_CODE),
                     **{str(f): content_hash(f) for f in (*w.source_files(), *p.workload.sources)}}}


def trial_text(t: Trial) -> str:
    """One finished trial in words: 'coarse lr 0.1 seed 0: reached at step 93 (23808 examples, 0.05 s)'."""
    r = t.result
    what = f"{r.outcome} at step {r.steps_to_target}" if r.steps_to_target else f"{r.outcome} after {r.steps_run} steps"
    return (f"{t.phase} lr {t.learning_rate:.4g} seed {t.seed}: {what} "
            f"({r.examples_run} examples, {r.seconds:.2f} s{', from journal' if t.resumed else ''})")


def tune_learning_rate(workload: Workload, optimizer: OptimizerSettings, batch_size: int, device: torch.device,
                       s: ScalingSettings, seed: int, max_steps: int, *, journal: Journal | None = None,
                       hint: float | None = None, bound: Bound | None = None, stage: str = "scaling",
                       label: str | None = None, on_trial: Callable[[Trial], None] | None = None) -> list[Trial]:
    """Every trial of the search (coarse, widen, refine, seed), one progress line per trial on
    stderr (`on_trial`, e.g. the scaling job's lines with an ETA; else `trial_text` numbered). `s`
    supplies the search settings (lr_* , seeds, rerun_top, hold_factor, ...); `max_steps` caps each
    trial (censored beyond it); `bound`: the give-up point of the trials before any rate reached the
    target (None: max_steps), raised x4 while it stops every rate (lr_search.search)."""
    label = label or f"bs {batch_size}"
    grid = learning_rate_grid(s.lr_min, s.lr_max, s.lr_points, s.lr_grid, seed)
    count = [0]

    def run(lr: float, trial_seed: int, give_up: int | None, contender=None):
        # Seed runs (other seeds than the search's) measure the spread of a rate that reached the
        # target: no plateau stop, a slow seed is data, not a dead end.
        return train_to_target(workload, optimizer, lr, batch_size, trial_seed, device,
                               max_steps, give_up_after=give_up, resolution=s.eval_resolution,
                               hold_factor=s.hold_factor,
                               plateau_tolerance=s.plateau_tolerance if trial_seed == seed else 0.0,
                               contender=contender)

    def numbered(t: Trial) -> None:
        count[0] += 1
        log.info(stage, f"{label} {trial_text(t)} [trial {count[0]}]")

    progress = on_trial or numbered

    coarse = search(grid, run, seed, journal=journal, hint=hint, early_stopping=s.early_stopping,
                    score=final_metric_score(workload.target_metric, workload.target_direction),
                    keep=1, unimodal=s.lr_unimodal, resolution=s.eval_resolution,
                    bound=bound if s.early_stopping else None, max_steps=max_steps,
                    on_trial=progress)
    widen_step = grid[1] / grid[0] if len(grid) > 1 else 2.0
    refined = resolve(coarse, run, seed, ratio=s.lr_refine_ratio, max_trials=s.lr_refine_trials,
                      resolution=s.eval_resolution, low_limit=s.lr_min / s.lr_widen_factor,
                      high_limit=s.lr_max * s.lr_widen_factor, widen_step=widen_step,
                      early_stopping=s.early_stopping, keep=1, journal=journal, on_trial=progress)
    # keep=1: every trial gives up at the best steps so far (with keep=k, the k-th best, a trial runs
    # uncapped until k rates reached: at large batch sizes the costliest part of the search). Every
    # earlier best a trial displaces stays a reached rate, so the seeds still have contenders.
    searched = coarse + refined
    extra = [seed + k for k in range(1, s.seeds + 1)]
    return searched + successive_halving(searched, run, extra, s.rerun_top, journal=journal, on_trial=progress)
