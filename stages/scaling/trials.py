"""`python -m stages.scaling trials --batch-size B`: the learning-rate search and seed reruns at one
batch size -- one job of the scaling study's fan-out (scaling_trials@B).

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
from stages.core.io import content_hash
from stages.core import log
from stages.core.errors import ConfigError
from stages.core.context import Context, setup
from stages.scaling.lr_search import (JOURNAL_DIR, Journal, Trial, best_steps, final_metric_score, journal_key,
                              learning_rate_grid, rerun_seeds, search)
from stages.core.optim import effective_learning_rate
from stages.scaling.tables import TRIAL_COLUMNS, curve_rows, skip_reason, skipped_row, trial_row
from stages.core.train import train_to_target

STAGE = "scaling"
OUT = Path("reports/scaling")
PROBE_CSV, PROBE_METRICS = Path("reports/probe/probe.csv"), Path("reports/probe/metrics.json")
THROUGHPUT_METRICS = Path("reports/throughput/metrics.json")
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # stages/
# The code a trial's result depends on besides the workload's own (paths relative to stages/).
_CODE = ("core/train.py", "core/optim.py", "workloads/base.py", "core/device.py")


def trials_paths(batch_size: int) -> tuple[Path, Path]:
    return OUT / "trials" / f"bs_{batch_size}.csv", OUT / "trials" / f"bs_{batch_size}_curves.csv"


def trial_identity(ctx: Context, batch_size: int) -> dict:
    """Everything that decides a trial's result, hashed into the journal's file name."""
    p, w = ctx.params, ctx.workload
    return {"workload": p.workload.name, "kwargs": p.workload.kwargs, "hyperparameters": w.hyperparameters(),
            "optimizer": asdict(p.optimizer), "batch_size": batch_size, "max_steps": p.scaling.max_steps,
            "eval_resolution": p.scaling.eval_resolution, "device": ctx.device.type, "threads": ctx.threads,
            "torch": torch.__version__,
            "code": {**{f: content_hash(f, PACKAGE_DIR) for f in _CODE},
                     **{str(f): content_hash(f) for f in (*w.source_files(), *p.workload.sources)}}}


def journal_path(ctx: Context, batch_size: int) -> Path:
    return JOURNAL_DIR / f"bs_{batch_size}-{journal_key(trial_identity(ctx, batch_size))}.jsonl"


def _read_optional_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None


def _neighbour_hint(ctx: Context, batch_size: int, grid: list[float]) -> float | None:
    """Best rate so far at half this size (if its journal exists), scaled by sqrt(2)."""
    if ctx.params.scaling.lr_start != "neighbour" or batch_size < 2:
        return None
    path = journal_path(ctx, batch_size // 2)
    if not path.exists():
        return None
    entries = [e for e in Journal.open(path).entries.values()
               if e["seed"] == ctx.params.runtime.seed and e["result"]["steps_to_target"] is not None]
    if not entries:
        return None
    best = min(entries, key=lambda e: (e["result"]["steps_to_target"], e["learning_rate"]))
    return best["learning_rate"] * math.sqrt(2)


def run_trials(ctx: Context, batch_size: int, journal: Journal | None) -> list[Trial]:
    """The learning-rate search at one batch size, then the seed reruns; one progress line per trial."""
    s, seed = ctx.params.scaling, ctx.params.runtime.seed
    grid = learning_rate_grid(s.lr_min, s.lr_max, s.lr_points, s.lr_grid, seed)
    hint = _neighbour_hint(ctx, batch_size, grid)
    total = len(grid) + s.seeds * min(s.rerun_top, len(grid))

    def run(lr: float, trial_seed: int, give_up: int | None):
        return train_to_target(ctx.workload, ctx.params.optimizer, lr, batch_size, trial_seed, ctx.device,
                               s.max_steps, give_up_after=give_up, resolution=s.eval_resolution)

    def progress(t: Trial) -> None:
        r = t.result
        what = f"{r.outcome} at step {r.steps_to_target}" if r.steps_to_target else f"{r.outcome} after {r.steps_run} steps"
        log.info(STAGE, f"bs {batch_size} lr {t.learning_rate:.4g} seed {t.seed}: {what} "
                        f"({r.examples_run} examples, {r.seconds:.2f} s{', from journal' if t.resumed else ''}) "
                        f"[{t.order + 1}/{total}]")

    if hint:
        log.info(STAGE, f"bs {batch_size}: starting near lr {hint:.4g} (best at batch size {batch_size // 2} x sqrt 2)")
    trials = search(grid, run, seed, journal=journal, hint=hint, early_stopping=s.early_stopping,
                    score=final_metric_score(ctx.workload.target_metric, ctx.workload.target_direction),
                    keep=s.rerun_top if s.seeds else 1,
                    on_trial=progress)
    extra = [seed + k for k in range(1, s.seeds + 1)]
    return trials + rerun_seeds(trials, run, extra, s.rerun_top, journal=journal, on_trial=progress)


def main_trials(batch_size: int) -> None:
    ctx = setup()
    s, w = ctx.params.scaling, ctx.workload
    if batch_size not in s.batch_sizes:
        raise ConfigError(f"--batch-size: received {batch_size}; allowed: one of scaling.batch_sizes {s.batch_sizes}")
    csv_path, curves_path = trials_paths(batch_size)
    probe_metrics = io.read_json(PROBE_METRICS) if PROBE_METRICS.exists() else None
    throughput_metrics = io.read_json(THROUGHPUT_METRICS) if THROUGHPUT_METRICS.exists() else None
    reason = skip_reason(batch_size, _read_optional_csv(PROBE_CSV), probe_metrics, throughput_metrics,
                         w.num_train_examples)
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
    best = best_steps([t.result for t in trials if t.phase == "search"])
    log.info(STAGE, f"bs {batch_size}: best steps to target {best} over {len(trials)} trials")
    io.write_csv(csv_path, pd.DataFrame(rows, columns=TRIAL_COLUMNS))
    io.write_csv(curves_path, pd.DataFrame(curves))
