"""How sure the critical batch size is, in plain words, and what would tighten it: the text the
scaling stage writes into reports/scaling/notes.md ("How sure") for the report (metrics.json and diagnostics.json keep the numbers).

The interval has two sources (fit.py): the seed spread of steps to target, and how finely the best
learning rate is known at each size (its bracket ratio, times one evaluation interval). Each is
compared as a standard deviation in log steps -- seeds: pooled spread / sqrt(seeds per size); rate:
log(ratio) / sqrt(12) (a log-uniform shift over the bracket) -- to name the one worth reducing.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def confidence_text(fit: dict, table: pd.DataFrame, resolution: float) -> str:
    """A few sentences: the estimate and its interval, what drives the width, what would tighten it."""
    kind, value = fit.get("critical_batch_size_kind"), fit.get("critical_batch_size")
    reached = table[table["status"] == "reached"]
    boundary = table[table["status"] == "boundary"]
    lines = []
    if value is None:
        lines.append(f"The critical batch size is undetermined: {fit.get('critical_batch_size_message', '')}")
    elif kind == "estimate":
        low, high = fit["ci_low"], fit["ci_high"]
        lines.append(f"The critical batch size is about {_fmt(value)} examples per step: 95% sure it lies between "
                     f"{_fmt(low)} and {_fmt(high)} (a factor {high / low:.2g} wide).")
    else:
        word = "at least" if kind == "lower_bound" else "at most"
        lines.append(f"The critical batch size is only bounded: {word} {_fmt(value)} examples per step "
                     f"({fit.get('critical_batch_size_message', '')}).")
    censored = table[table["status"] == "not_reached"]
    if value is None and not censored.empty:  # what limited it was the step cap, not the seeds or the rate
        lines.append(f"What limited it: batch size(s) {', '.join(str(int(b)) for b in censored['batch_size'])} did not "
                     f"reach the target within scaling.max_steps; raise it (or study sizes that reach the target).")
    if not reached.empty and value is not None:
        seeds = float(np.median(reached["seeds_run"]))
        spread = float(reached["seed_log_spread"].iloc[0]) if "seed_log_spread" in reached else math.nan
        ratios = reached["lr_resolution_ratio"].astype(float) * (1 + resolution)
        worst = reached.loc[ratios.idxmax()]
        seed_sd = spread / math.sqrt(seeds) if math.isfinite(spread) else math.nan
        rate_sd = math.log(float(ratios.max())) / math.sqrt(12)
        lines.append(f"Seeds: steps to target scatter by about {100 * (math.exp(spread) - 1):.0f}% between seeds "
                     f"({seeds:g} runs per size measure it). Learning rate: known within a factor {float(worst['lr_resolution_ratio']):.3g} "
                     f"at worst (batch size {int(worst['batch_size'])}), plus {100 * resolution:g}% evaluation resolution."
                     if math.isfinite(spread) else
                     f"Seeds: only one per size, so the seed spread is estimated from the scatter about the fit. "
                     f"Learning rate: known within a factor {float(worst['lr_resolution_ratio']):.3g} at worst "
                     f"(batch size {int(worst['batch_size'])}).")
        if not math.isfinite(seed_sd) or seed_sd >= rate_sd:
            lines.append("To tighten it: more seeds per size (scaling.seeds, scaling.rerun_top) -- the seed spread "
                         "dominates the width.")
        else:
            lines.append("To tighten it: resolve the learning rate more finely (lower scaling.lr_refine_ratio or raise "
                         "scaling.lr_refine_trials, or scaling.fit_refine_trials at the sizes refined only for the fit) -- the "
                         "rate's resolution dominates the width.")
    if kind in ("lower_bound", "upper_bound"):
        edge = reached["batch_size"].min() if kind == "upper_bound" else reached["batch_size"].max()
        beyond = censored[censored["batch_size"] < edge] if kind == "upper_bound" else censored[censored["batch_size"] > edge]
        if not beyond.empty:  # sizes on the side that would pin it were studied, but the step cap censored them
            lines.append(f"To pin it: raise scaling.max_steps -- batch size(s) {', '.join(str(int(b)) for b in beyond['batch_size'])} "
                         f"were studied but did not reach the target (and hold it) within it.")
        else:
            lines.append("To pin it: study " + ("larger" if kind == "lower_bound" else "smaller") + " batch sizes.")
    if not boundary.empty:
        sizes = ", ".join(f"{int(r.batch_size)} ({r.boundary})" for r in boundary.itertuples())
        lines.append(f"Left out of the fit: the best rate sat at the edge of the searched range at batch size(s) {sizes}; "
                     f"widen scaling.lr_min / lr_max that way.")
    return "\n\n".join(lines) + "\n"
