"""`python -m stages.scaling trials --batch-size B`: the learning-rate search at one batch size --
coarse grid, widening at an edge and refinement around the best (refine.py), then seeds for the
rates in contention -- one job of the scaling study's fan-out (scaling_trials@B).

Writes reports/scaling/trials/bs_{B}.csv (every trial; or one `skipped` row with the reason when the
probe or throughput stage rules the size out, or it exceeds the training set) and bs_{B}_curves.csv.
Finished trials are journalled in .kickoff/journal/scaling/ -- outside the outputs, which DVC deletes
before a run -- so an interrupted job resumes without redoing them.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from stages.core import io
from stages.core import outputs as out
from stages.core.imports import code_hash
from stages.core.io import content_hash
from stages.core import log
from stages.core.errors import ConfigError
from stages.core.context import Context, setup
from stages.scaling.lr_search import (JOURNAL_DIR, Journal, Trial, best_steps, final_metric_score, journal_key,
                                      learning_rate_grid, search)
from stages.scaling.refine import resolve, successive_halving
from stages.core.optim import effective_learning_rate
from stages.scaling.tables import TRIAL_COLUMNS, curve_rows, skip_reason, skipped_row, trial_row
from stages.core.train import train_to_target
from stages.pipeline.declaration import load_stage_params

STAGE = "scaling"
TRIAL_CODE = "stages.core.train"  # a trial's result depends on this module and everything it imports


def trial_identity(ctx: Context, batch_size: int) -> dict:
    """Everything that decides a trial's result, hashed into the journal's file name."""
    p, w = ctx.params, ctx.workload
    return {"workload": p.workload.name, "kwargs": p.workload.kwargs, "hyperparameters": w.hyperparameters(),
            "optimizer": asdict(p.optimizer), "batch_size": batch_size, "max_steps": p.scaling.max_steps,
            "eval_resolution": p.scaling.eval_resolution, "hold_factor": p.scaling.hold_factor,
            "plateau_tolerance": p.scaling.plateau_tolerance, "device": ctx.device.type, "threads": ctx.threads,
            "torch": torch.__version__,
            "code": {TRIAL_CODE: code_hash(TRIAL_CODE),
                     **{str(f): content_hash(f) for f in (*w.source_files(), *p.workload.sources)}}}


def journal_path(ctx: Context, batch_size: int) -> Path:
    return JOURNAL_DIR / f"bs_{batch_size}-{journal_key(trial_identity(ctx, batch_size))}.jsonl"


def _best_journalled_rate(ctx: Context, batch_size: int) -> float | None:
    """Fewest steps at the search seed among the finished trials of another size (None: no journal)."""
    path = journal_path(ctx, batch_size)
    if not path.exists():
        return None
    entries = [e for e in Journal.open(path).entries.values()
               if e["seed"] == ctx.params.runtime.seed and e["result"]["steps_to_target"] is not None]
    if not entries:
        return None
    return min(entries, key=lambda e: (e["result"]["steps_to_target"], e["learning_rate"]))["learning_rate"]


def _neighbour_hint(ctx: Context, batch_size: int) -> float | None:
    """The rate predicted from the two nearest smaller sizes already searched (their journals): their
    learning-rate exponent (clamped to [0, 1]: between no and linear scaling) extrapolated to this
    size; with one such size, its best scaled by the square root of the size ratio."""
    if ctx.params.scaling.lr_start != "neighbour":
        return None
    known: list[tuple[int, float]] = []
    for smaller in sorted((b for b in ctx.params.scaling.batch_sizes if b < batch_size), reverse=True):
        rate = _best_journalled_rate(ctx, smaller)
        if rate is not None:
            known.append((smaller, rate))
        if len(known) == 2:
            break
    if not known:
        return None
    (b1, lr1), exponent = known[0], 0.5
    if len(known) == 2:
        b2, lr2 = known[1]
        exponent = min(1.0, max(0.0, math.log(lr1 / lr2) / math.log(b1 / b2)))
    return lr1 * (batch_size / b1) ** exponent


def run_trials(ctx: Context, batch_size: int, journal: Journal | None) -> list[Trial]:
    """Coarse grid, widen/refine, then successive halving over seeds; one progress line per trial."""
    s, seed = ctx.params.scaling, ctx.params.runtime.seed
    grid = learning_rate_grid(s.lr_min, s.lr_max, s.lr_points, s.lr_grid, seed)
    hint = _neighbour_hint(ctx, batch_size)
    count = [0]

    def run(lr: float, trial_seed: int, give_up: int | None):
        # Seed runs (other seeds than the search's) measure the spread of a rate that reached the
        # target: no plateau stop, a slow seed is data, not a dead end.
        return train_to_target(ctx.workload, ctx.params.optimizer, lr, batch_size, trial_seed, ctx.device,
                               s.max_steps, give_up_after=give_up, resolution=s.eval_resolution,
                               hold_factor=s.hold_factor,
                               plateau_tolerance=s.plateau_tolerance if trial_seed == seed else 0.0)

    def progress(t: Trial) -> None:
        r = t.result
        count[0] += 1
        what = f"{r.outcome} at step {r.steps_to_target}" if r.steps_to_target else f"{r.outcome} after {r.steps_run} steps"
        log.info(STAGE, f"bs {batch_size} {t.phase} lr {t.learning_rate:.4g} seed {t.seed}: {what} "
                        f"({r.examples_run} examples, {r.seconds:.2f} s{', from journal' if t.resumed else ''}) "
                        f"[trial {count[0]}]")

    if hint:
        log.info(STAGE, f"bs {batch_size}: starting near lr {hint:.4g} (predicted from the smaller batch sizes)")
    coarse = search(grid, run, seed, journal=journal, hint=hint, early_stopping=s.early_stopping,
                    score=final_metric_score(ctx.workload.target_metric, ctx.workload.target_direction),
                    keep=1, unimodal=s.lr_unimodal, resolution=s.eval_resolution, on_trial=progress)
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


def main_trials(batch_size: int) -> None:
    ctx = setup(params=load_stage_params("scaling_trials"))
    s, w = ctx.params.scaling, ctx.workload
    if batch_size not in s.batch_sizes:
        raise ConfigError(f"--batch-size: received {batch_size}; allowed: one of scaling.batch_sizes {s.batch_sizes}")
    csv_path, curves_path = out.SCALING_TRIALS.at(batch_size=batch_size), out.SCALING_TRIAL_CURVES.at(batch_size=batch_size)
    # The earlier stages' verdicts are optional (the study can run alone), but a file that exists is checked.
    probe_rows, probe_metrics, throughput_metrics = (
        reader(o) if o.at().exists() else None for reader, o in ((out.read_csv, out.PROBE_CSV),
                                                             (out.read_json, out.PROBE_METRICS),
                                                             (out.read_json, out.THROUGHPUT_METRICS)))
    reason = skip_reason(batch_size, probe_rows, probe_metrics, throughput_metrics, w.num_train_examples)
    if reason is not None:
        log.info(STAGE, f"bs {batch_size}: skipped ({reason})")
        io.write_csv(csv_path, pd.DataFrame([skipped_row(batch_size, reason)], columns=TRIAL_COLUMNS))
        io.write_csv(curves_path, pd.DataFrame(columns=["batch_size", "learning_rate", "seed", "phase", "examples", "step"]))
        return
    journal = Journal.open(journal_path(ctx, batch_size))
    if journal.entries:
        log.info(STAGE, f"bs {batch_size}: resuming, {len(journal.entries)} finished trials in {journal.path}")
    trials = run_trials(ctx, batch_size, journal)
    rows = [trial_row(batch_size, t, s.max_steps, w.target_metric,
                      effective_learning_rate(ctx.params.optimizer, t.learning_rate)) for t in trials]
    curves = [row for t in trials for row in curve_rows(batch_size, t)]
    best = best_steps([t.result for t in trials if t.phase != "seed"])
    log.info(STAGE, f"bs {batch_size}: best steps to target {best} over {len(trials)} trials")
    io.write_csv(csv_path, pd.DataFrame(rows, columns=TRIAL_COLUMNS))
    io.write_csv(curves_path, pd.DataFrame(curves))
