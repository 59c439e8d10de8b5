"""Stage `scaling`: steps to the target per batch size, the learning rate retuned per size, and the
critical batch size (McCandlish et al. 2018).

    python -m stages.scaling trials --batch-size 64   # one job per size (scaling_trials@64)
    python -m stages.scaling summarize                # the aggregate stage
    python -m stages.scaling fit TABLE.csv            # the fit alone, on any batch_size,steps_to_target CSV

`trials` writes reports/scaling/trials/bs_{B}.csv (every trial, or one `skipped` row with the reason
when probe/throughput rule the size out) and bs_{B}_curves.csv. Finished trials are journalled in
.kickoff/journal/scaling/ (outside the outputs, which DVC deletes before a run), so an interrupted
job resumes without redoing them. `summarize` writes reports/scaling/{trials,steps_to_target,curves,
noise_scale}.csv, metrics.json and four PNGs. `fit` prints one JSON object.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from stages import io, log
from stages.config import ConfigError, run_main
from stages.context import Context, setup
from stages.lr_search import (JOURNAL_DIR, Journal, Trial, best_steps, journal_key, learning_rate_grid,
                              rerun_seeds, search)
from stages.noise_scale import measure_noise_scale
from stages.optim import effective_learning_rate, fixed_values
from stages.scaling_fit import FitError, ScalingFit, fit_critical_batch_size
from stages.scaling_plots import curves_figure, examples_figure, fmt, learning_rate_figure, steps_figure
from stages.scaling_summary import (TRIAL_COLUMNS, add_fit_columns, compute_saved, curve_rows, fit_rows,
                                    learning_rate_exponent, per_size_table, skip_reason, skipped_row, trial_row)
from stages.train import train_to_target

STAGE = "scaling"
OUT = Path("reports/scaling")
PROBE_CSV, PROBE_METRICS = Path("reports/probe/probe.csv"), Path("reports/probe/metrics.json")
THROUGHPUT_METRICS = Path("reports/throughput/metrics.json")
_CODE = ("stages/train.py", "stages/optim.py", "stages/workload.py", "stages/device.py")


def trials_paths(batch_size: int) -> tuple[Path, Path]:
    return OUT / "trials" / f"bs_{batch_size}.csv", OUT / "trials" / f"bs_{batch_size}_curves.csv"


def _file_hash(path: str | Path) -> str:
    p = Path(path)
    if not p.is_absolute():
        p = Path(__file__).resolve().parent.parent / p
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.exists() else "absent"


def trial_identity(ctx: Context, batch_size: int) -> dict:
    """Everything that decides a trial's result, hashed into the journal's file name."""
    p, w = ctx.params, ctx.workload
    return {"workload": p.workload.name, "kwargs": p.workload.kwargs, "hyperparameters": w.hyperparameters(),
            "optimizer": asdict(p.optimizer), "batch_size": batch_size, "max_steps": p.scaling.max_steps,
            "eval_resolution": p.scaling.eval_resolution, "device": ctx.device.type, "threads": ctx.threads,
            "torch": torch.__version__,
            "code": {str(f): _file_hash(f) for f in (*_CODE, *w.source_files(), *p.workload.sources)}}


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
    trials = search(grid, run, seed, journal=journal, hint=hint, early_stopping=s.early_stopping, on_trial=progress)
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


# ---------------------------------------------------------------------------- summarize

def _noise_scale_sizes(ctx: Context, table: pd.DataFrame) -> tuple[int, int] | None:
    if ctx.params.scaling.noise_scale_batch_sizes:
        small, big = ctx.params.scaling.noise_scale_batch_sizes
        return small, big
    reached = table[table["status"] == "reached"]
    if reached.empty:
        return None
    small = int(reached["batch_size"].min())
    big = 16 * small
    n = ctx.workload.num_train_examples
    while n is not None and big > n and big > 2 * small:
        big //= 2
    return (small, big) if n is None or big <= n else None


def noise_scale(ctx: Context, table: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """One short run at the big size (its best rate, else the nearest studied size's) to the target."""
    sizes = _noise_scale_sizes(ctx, table)
    if sizes is None:
        return {"gradient_noise_scale": None, "gradient_noise_scale_reason": "no batch size reached the target"}, pd.DataFrame()
    small, big = sizes
    reached = table[table["status"] == "reached"]
    nearest = reached.iloc[(reached["batch_size"].map(lambda b: abs(math.log(b / big)))).argsort().iloc[0]]
    lr = float(nearest["best_learning_rate"])
    result = measure_noise_scale(ctx.workload, ctx.params.optimizer, lr, small, big, ctx.params.runtime.seed,
                                 ctx.device, ctx.params.scaling.max_steps)
    log.info(STAGE, f"gradient noise scale {fmt(result.gradient_noise_scale)} from batch sizes {small} and {big} "
                    f"(lr {lr:.4g}, {result.steps_run} steps: {result.reason})")
    return ({"gradient_noise_scale": result.gradient_noise_scale, "gradient_noise_scale_batch_sizes": [small, big],
             "gradient_noise_scale_learning_rate": lr, "gradient_noise_scale_steps": result.steps_run,
             "gradient_noise_scale_reason": result.reason}, pd.DataFrame(result.rows))


def _fit(rows: pd.DataFrame, bootstrap: int, seed: int) -> tuple[ScalingFit | None, dict]:
    try:
        fit = fit_critical_batch_size(rows["batch_size"], rows["steps_to_target"], rows["seed"],
                                      bootstrap=bootstrap, rng_seed=seed)
    except FitError as e:
        return None, {"critical_batch_size": None, "critical_batch_size_kind": "undetermined",
                      "critical_batch_size_message": str(e), "ci_low": None, "ci_high": None,
                      "s_min": None, "e_min": None}
    return fit, {"critical_batch_size": fit.critical_batch_size, "critical_batch_size_kind": fit.kind,
                 "critical_batch_size_message": fit.message, "ci_low": fit.ci_low, "ci_high": fit.ci_high,
                 "confidence": fit.confidence, "s_min": fit.s_min, "e_min": fit.e_min}


def main_summarize() -> None:
    ctx = setup()
    p, w = ctx.params, ctx.workload
    frames, curve_frames = [], []
    for b in p.scaling.batch_sizes:
        csv_path, curves_path = trials_paths(b)
        if not csv_path.exists():
            raise FileNotFoundError(f"{csv_path} is missing: run `python -m stages.scaling trials --batch-size {b}` "
                                    f"(or dvc repro / snakemake) first")
        frames.append(pd.read_csv(csv_path))
        curve_frames.append(pd.read_csv(curves_path))
    trials = pd.concat(frames, ignore_index=True)[TRIAL_COLUMNS]
    table = per_size_table(trials, p.scaling.batch_sizes)
    fit, fit_metrics = _fit(fit_rows(trials, table), p.scaling.bootstrap, p.runtime.seed)
    log.info(STAGE, f"critical batch size: {fit_metrics['critical_batch_size_kind']} -- {fit_metrics['critical_batch_size_message']}")
    table = add_fit_columns(table, fit)
    gns, gns_rows = noise_scale(ctx, table)
    spent, full, saved = compute_saved(trials)

    curves = pd.concat(curve_frames, ignore_index=True)
    best = table[table["status"] == "reached"][["batch_size", "best_learning_rate"]]
    curves = curves.merge(best, left_on=["batch_size", "learning_rate"], right_on=["batch_size", "best_learning_rate"])
    curves = curves[curves["seed"] == p.runtime.seed].drop(columns="best_learning_rate")

    reached = table[table["status"] == "reached"]
    perfect = reached[reached["regime"] == "perfect_scaling"]["batch_size"]
    metrics = {
        **fit_metrics, **gns,
        "compute_saved_fraction": saved, "examples_run": spent, "examples_if_every_trial_ran_to_max_steps": full,
        "trials": int((trials["outcome"] != "skipped").sum()), "seconds": float(trials["seconds"].sum()),
        "studied_batch_sizes": [int(b) for b in table[table["status"].isin(["reached", "not_reached"])]["batch_size"]],
        "reached_batch_sizes": [int(b) for b in reached["batch_size"]],
        "skipped_batch_sizes": [int(b) for b in table[table["status"] == "skipped"]["batch_size"]],
        "perfect_scaling_up_to": int(perfect.max()) if len(perfect) else None,
        "learning_rate_scaling_exponent": learning_rate_exponent(table),
        "target_metric": w.target_metric, "target_value": w.target_value, "target_direction": w.target_direction,
        "optimizer": fixed_values(p.optimizer), "workload": w.name,
    }
    io.write_csv(OUT / "trials.csv", trials)
    io.write_csv(OUT / "steps_to_target.csv", table)
    io.write_csv(OUT / "curves.csv", curves)
    io.write_csv(OUT / "noise_scale.csv", gns_rows)
    io.write_json(OUT / "metrics.json", metrics)
    gns_value = gns.get("gradient_noise_scale")
    steps_figure(table, fit, gns_value, OUT / "steps_to_target.png")
    examples_figure(table, fit, gns_value, OUT / "examples_to_target.png")
    note = f"lr / (1 - {p.optimizer.momentum:g})" if p.optimizer.name == "sgd" else "lr"
    learning_rate_figure(table, note, OUT / "learning_rate.png")
    curves_figure(curves, w.target_metric, w.target_value, OUT / "curves.png")
    log.info(STAGE, f"wrote {OUT}: B_crit {fmt(fit_metrics['critical_batch_size'])} ({fit_metrics['critical_batch_size_kind']}), "
                    f"noise scale {fmt(gns_value)}, compute saved {fmt(saved)}")


# ---------------------------------------------------------------------------- fit CLI

def main_fit(path: str, bootstrap: int, confidence: float) -> None:
    table = pd.read_csv(path)
    missing = {"batch_size", "steps_to_target"} - set(table.columns)
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(sorted(missing))}; received columns "
                          f"{', '.join(table.columns)}; allowed: a CSV with batch_size,steps_to_target[,seed]")
    steps = pd.to_numeric(table["steps_to_target"], errors="coerce")
    try:
        fit = fit_critical_batch_size(table["batch_size"], steps, table["seed"] if "seed" in table else None,
                                      bootstrap=bootstrap, confidence=confidence)
    except FitError as e:
        print(f"kickoff: error: {path}: {e}", file=sys.stderr)
        sys.exit(1)
    out = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in fit.as_dict().items()}
    print(json.dumps(out))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m stages.scaling", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("trials", help="the learning-rate search and seed reruns at one batch size")
    t.add_argument("--batch-size", type=int, required=True)
    sub.add_parser("summarize", help="aggregate the per-size trials: tables, fit, noise scale, plots")
    f = sub.add_parser("fit", help="fit S(B) = S_min (1 + B_crit / B) to a CSV and print one JSON object")
    f.add_argument("table", help="CSV with columns batch_size,steps_to_target (optional seed)")
    f.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default 200)")
    f.add_argument("--confidence", type=float, default=0.95, help="confidence level (default 0.95)")
    args = ap.parse_args(argv)
    if args.command == "trials":
        main_trials(args.batch_size)
    elif args.command == "summarize":
        main_summarize()
    else:
        main_fit(args.table, args.bootstrap, args.confidence)


if __name__ == "__main__":
    run_main(main)
