"""Pure pieces of the scaling study between the trials and the report: which sizes to skip, trial
rows, and the per-batch-size table (best learning rate, steps to target with its spread, examples,
regime, learning-rate heuristics) -- all computed from the trial rows, the files' contents.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from stages.search.coarse import Trial, best_learning_rate
from stages.core.types import NOT_TRAINED
from stages.scaling.fit import ScalingFit, regime

TRIAL_COLUMNS = ["batch_size", "learning_rate", "seed", "phase", "order", "outcome", "steps_to_target",
                 "steps_run", "examples_run", "max_steps", "give_up_after", "seconds", "final_metric",
                 "effective_learning_rate", "reason", "prior"]  # prior: where the size's coarse search started from


def skip_reason(batch_size: int, probe_rows: pd.DataFrame | None, probe_metrics: dict | None,
                throughput_metrics: dict | None, num_train_examples: int | None) -> str | None:
    """Why the earlier stages rule this batch size out (None: study it)."""
    if probe_rows is not None and "batch_size" in probe_rows and "status" in probe_rows:
        row = probe_rows[probe_rows["batch_size"] == batch_size]
        if len(row) and str(row["status"].iloc[0]) != "fits":
            detail = f": {row['reason'].iloc[0]}" if "reason" in row and isinstance(row["reason"].iloc[0], str) else ""
            return f"probe: {row['status'].iloc[0]}{detail}"
    if probe_metrics is not None and "max_batch_size" in probe_metrics:
        largest = probe_metrics["max_batch_size"]
        if largest is None:
            return "probe: no batch size fits in memory"
        if batch_size > largest:
            return f"probe: above the largest batch size that fits ({largest})"
    if throughput_metrics is not None:
        useful = throughput_metrics.get("largest_useful_batch_size")
        if useful is not None and batch_size > useful:
            return (f"throughput: above the largest useful batch size ({useful}); "
                    f"larger batches no longer raise examples/s")
    if num_train_examples is not None and batch_size > num_train_examples:
        return f"above the training-set size ({num_train_examples} examples)"
    return None


def skipped_row(batch_size: int, reason: str) -> dict:
    row = {c: None for c in TRIAL_COLUMNS}
    row.update(batch_size=batch_size, outcome="skipped", steps_run=0, examples_run=0, seconds=0.0, reason=reason)
    return row


def predicted_row(batch_size: int, steps: float, reason: str) -> dict:
    """A size wave 2 did not train (scaling.adaptive): its predicted steps to target, and why."""
    row = {c: None for c in TRIAL_COLUMNS}
    row.update(batch_size=batch_size, outcome="predicted", steps_to_target=max(1, round(steps)), steps_run=0,
               examples_run=0, seconds=0.0, reason=reason)
    return row


def trial_row(batch_size: int, trial: Trial, max_steps: int, target_metric: str, effective_lr: float,
              prior: str = "") -> dict:
    r = trial.result
    return {"batch_size": batch_size, "learning_rate": trial.learning_rate, "seed": trial.seed,
            "phase": trial.phase, "order": trial.order, "outcome": r.outcome,
            "steps_to_target": r.steps_to_target, "steps_run": r.steps_run, "examples_run": r.examples_run,
            "max_steps": max_steps, "give_up_after": trial.give_up_after, "seconds": round(r.seconds, 4),
            "final_metric": r.final_metrics.get(target_metric), "effective_learning_rate": effective_lr,
            "reason": r.reason, "prior": prior if trial.phase in ("coarse", "widen") else ""}


def curve_rows(batch_size: int, trial: Trial) -> list[dict]:
    return [{"batch_size": batch_size, "learning_rate": trial.learning_rate, "seed": trial.seed,
             "phase": trial.phase, "examples": row["step"] * batch_size, **row} for row in trial.result.curve]


def _steps(value) -> int | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


PHASES = ("coarse", "widen", "refine", "seed", "bounded")


def search_bracket(ran: pd.DataFrame, lr: float) -> tuple[float | None, float | None, str]:
    """The tried rates on either side of `lr` at the search seed (the searched phases), and which edge
    it sits on ('lower', 'higher' or ''): nothing was tried beyond an edge, so a best rate there is
    not an optimum -- the widening stopped at its cap (scaling.lr_widen_factor)."""
    search_seed = ran[ran["phase"] != "seed"]
    rates = sorted(set(search_seed["learning_rate"].astype(float)) | {lr})
    i = rates.index(lr)
    low = rates[i - 1] if i > 0 else None
    high = rates[i + 1] if i < len(rates) - 1 else None
    edge = "lower" if low is None else "higher" if high is None else ""
    return low, high, edge


def pooled_log_spread(groups: list[list[float]]) -> tuple[float, int]:
    """(pooled standard deviation of log steps within the groups, its degrees of freedom): seeds
    scatter by a similar factor at every batch size, so sizes share one estimate."""
    dev = [math.log(x) - np.mean(np.log(g)) for g in groups if len(g) >= 2 for x in g]
    df = sum(len(g) - 1 for g in groups if len(g) >= 2)
    return (math.sqrt(sum(d * d for d in dev) / df), df) if df else (math.nan, 0)


def steps_interval(steps: list[float], spread: float, df: int, resolution: float,
                   confidence: float = 0.95) -> tuple[float, float]:
    """Interval for the typical steps to target at one rate: geometric mean over its n seeds
    +- t(df) x pooled spread / sqrt(n), widened below by one evaluation interval (the target was
    crossed somewhere after the previous evaluation)."""
    from scipy.stats import t as student_t

    if not df or not math.isfinite(spread):
        return math.nan, math.nan
    centre = float(np.mean(np.log(steps)))
    half = float(student_t.ppf((1 + confidence) / 2, df)) * spread / math.sqrt(len(steps))
    return math.exp(centre - half) / (1 + resolution), math.exp(centre + half)


def measured_runs(ran: pd.DataFrame, lr: float) -> pd.DataFrame:
    """The runs that measure a rate's steps to target: its seed reruns when there are at least two --
    the search seed's run chose the rate, so it is the lucky draw among the rates compared (winner's
    curse) -- else every run of it."""
    runs = ran[(ran["learning_rate"] == lr) & (ran["phase"] != "bounded")]  # a bounded attempt was retried
    fresh = runs[runs["phase"] == "seed"]
    return fresh if len(fresh) >= 2 else runs


def per_size_table(trials: pd.DataFrame, batch_sizes: list[int], resolution: float = 0.05,
                   intervals: bool = True) -> pd.DataFrame:
    """One row per batch size: status, best learning rate, its bracket and the trials each phase
    spent, steps to target (median over `measured_runs`) with an interval (seed spread pooled over sizes;
    `intervals` False: left empty, without importing scipy -- the waves' quick read)."""
    rows = []
    for b in batch_sizes:
        t = trials[trials["batch_size"] == b]
        row: dict = {"batch_size": b}
        if t.empty:
            rows.append({**row, "status": "missing", "reason": "no trials file"})
            continue
        if (t["outcome"] == "skipped").all():
            rows.append({**row, "status": "skipped", "reason": str(t["reason"].iloc[0])})
            continue
        if (t["outcome"] == "predicted").all():  # not trained: perfect scaling's steps, kept apart from measured ones
            rows.append({**row, "status": "predicted", "reason": str(t["reason"].iloc[0]),
                         "predicted_steps_to_target": float(t["steps_to_target"].iloc[0])})
            continue
        ran = t[~t["outcome"].isin(NOT_TRAINED)]
        row.update({f"trials_{p}": int((ran["phase"] == p).sum()) for p in PHASES})
        lr = best_learning_rate([(float(r.learning_rate), r.phase, _steps(r.steps_to_target))
                                 for r in ran.itertuples()])
        if lr is None:
            outcomes = ", ".join(f"{k} {v}" for k, v in ran["outcome"].value_counts().items())
            rows.append({**row, "status": "not_reached", "reason": f"no learning rate reached the target ({outcomes})"})
            continue
        best = measured_runs(ran, lr)
        steps = [_steps(s) for s in best["steps_to_target"]]
        reached = [s for s in steps if s is not None]
        if not reached:  # the rate's seed reruns all missed (or fell back from) the target: not a result to use
            outcomes = ", ".join(f"{k} {v}" for k, v in best["outcome"].value_counts().items())
            rows.append({**row, "status": "not_reached", "reason": f"no learning rate reached and held the target on "
                                                                   f"its seed reruns (best lr {lr:.4g}: {outcomes})"})
            continue
        median = float(np.median([math.inf if s is None else s for s in steps]))
        low, high, edge = search_bracket(ran, lr)
        status, reason = "reached", ""
        if edge:
            status = "boundary"
            reason = (f"the best rate {lr:.4g} is the {'smallest' if edge == 'lower' else 'largest'} tried (the widening "
                      f"stopped at its cap): widen scaling.{'lr_min' if edge == 'lower' else 'lr_max'} "
                      f"{'down' if edge == 'lower' else 'up'} (or raise scaling.lr_widen_factor)")
        ratio = max(lr / low, high / lr) if low and high else math.inf
        rows.append({**row, "status": status, "reason": reason, "boundary": edge,
                     "best_learning_rate": lr,
                     "effective_learning_rate": float(best["effective_learning_rate"].iloc[0]),
                     "lr_bracket_low": low, "lr_bracket_high": high, "lr_resolution_ratio": ratio,
                     "steps_to_target": median if math.isfinite(median) else None,
                     "steps_to_target_min": min(reached), "steps_to_target_max": max(reached),
                     "steps_to_target_spread": max(reached) - min(reached),
                     "seeds_run": len(steps), "seeds_reached": len(reached), "_seed_steps": reached})
    table = pd.DataFrame(rows)
    for col in ("best_learning_rate", "effective_learning_rate", "lr_bracket_low", "lr_bracket_high",
                "lr_resolution_ratio", "steps_to_target", "steps_to_target_min", "steps_to_target_max",
                "steps_to_target_spread", "seeds_run", "seeds_reached", "predicted_steps_to_target",
                *(f"trials_{p}" for p in PHASES)):
        if col not in table:
            table[col] = np.nan
    if "boundary" not in table:
        table["boundary"] = ""
    # Intervals only where every seed reached (a seed that did not makes the upper end unbounded).
    complete = table["status"].isin(["reached", "boundary"]) & (table["seeds_reached"] == table["seeds_run"])
    groups = [g for g in table.loc[complete, "_seed_steps"]] if "_seed_steps" in table else []
    spread, df = pooled_log_spread(groups)
    table["steps_to_target_ci_low"], table["steps_to_target_ci_high"] = np.nan, np.nan
    for i in table.index[complete] if intervals else []:
        table.loc[i, ["steps_to_target_ci_low", "steps_to_target_ci_high"]] = steps_interval(
            table.at[i, "_seed_steps"], spread, df, resolution)
    table["seed_log_spread"] = spread
    table = table.drop(columns=["_seed_steps"], errors="ignore")
    # A boundary size's steps belong to a rate at the edge of the search, not to an optimum: kept
    # apart, so no later stage (fit, select, report) takes them for a finding.
    edge = table["status"] == "boundary"
    table["steps_to_target_at_edge"] = table["steps_to_target"].where(edge)
    table.loc[edge, ["steps_to_target", "steps_to_target_ci_low", "steps_to_target_ci_high"]] = np.nan
    table["examples_to_target"] = table["batch_size"] * table["steps_to_target"]
    return table


def search_cost_ratio(trials: pd.DataFrame, table: pd.DataFrame) -> float | None:
    """Examples trained by the whole study / examples of each size's best rate's runs alone (what a
    study that knew the best rates in advance would have spent), over the sizes with a best rate."""
    found = table[table["best_learning_rate"].notna()]
    if found.empty:
        return None
    sizes = set(found["batch_size"].astype(int))
    ran = trials[~trials["outcome"].isin(NOT_TRAINED) & trials["batch_size"].isin(sizes)]
    best = pd.concat([ran[(ran["batch_size"] == r.batch_size) & (ran["learning_rate"] == r.best_learning_rate)]
                      for r in found.itertuples()])
    spent_best = float(best["examples_run"].sum())
    return float(ran["examples_run"].sum()) / spent_best if spent_best > 0 else None


def fit_rows(trials: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """(batch_size, steps_to_target, seed, lr_resolution_ratio) of the runs that measure each size's
    best learning rate (`measured_runs`; boundary sizes left out: their best rate is not an optimum)."""
    parts = []
    for r in table[table["status"] == "reached"].itertuples():
        t = measured_runs(trials[(trials["batch_size"] == r.batch_size) & ~trials["outcome"].isin(NOT_TRAINED)],
                          r.best_learning_rate)
        parts.append(t[["batch_size", "steps_to_target", "seed"]].assign(lr_resolution_ratio=r.lr_resolution_ratio))
    if not parts:
        return pd.DataFrame(columns=["batch_size", "steps_to_target", "seed", "lr_resolution_ratio"])
    return pd.concat(parts).dropna(subset=["steps_to_target"])


def add_fit_columns(table: pd.DataFrame, fit: ScalingFit | None) -> pd.DataFrame:
    """Regime, fitted steps, perfect-scaling steps and the learning-rate heuristics, from the smallest
    size that reached the target."""
    table = table.copy()
    reached = table[table["status"] == "reached"]
    table["regime"] = table["status"].where(table["status"] != "reached", "unknown")
    table["fitted_steps"] = np.nan
    for col in ("perfect_scaling_steps", "linear_scaling_learning_rate", "sqrt_scaling_learning_rate"):
        table[col] = np.nan
    if reached.empty:
        return table
    base = reached.iloc[0]
    ratio = table["batch_size"] / base["batch_size"]
    table["perfect_scaling_steps"] = base["steps_to_target"] / ratio
    table["linear_scaling_learning_rate"] = base["best_learning_rate"] * ratio
    table["sqrt_scaling_learning_rate"] = base["best_learning_rate"] * np.sqrt(ratio)
    if fit is not None:
        table["fitted_steps"] = fit.steps(table["batch_size"].to_numpy())
        mask = table["status"] == "reached"
        table.loc[mask, "regime"] = [regime(b, fit.fitted_critical_batch_size) for b in table.loc[mask, "batch_size"]]
    return table


def learning_rate_exponent(table: pd.DataFrame) -> float | None:
    """Slope of log best learning rate against log batch size (1 = linear scaling, 0.5 = square root)."""
    r = table[table["status"] == "reached"]
    if len(r) < 2:
        return None
    x, y = np.log(r["batch_size"].astype(float)), np.log(r["best_learning_rate"].astype(float))
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x ** 2).sum())


def compute_saved(trials: pd.DataFrame) -> tuple[int, int, float | None]:
    """(examples run, examples if every trial ran to max_steps, share saved) over trials that ran."""
    ran = trials[~trials["outcome"].isin(NOT_TRAINED)]
    spent = int(ran["examples_run"].sum())
    full = int((ran["max_steps"] * ran["batch_size"]).sum())
    return spent, full, (1 - spent / full) if full else None
