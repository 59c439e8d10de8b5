"""`python -m stages.scaling plan`: the study's bill before it runs -- trials, examples and wall time
per batch size, from the steps the coarse waves already measured (their files) and the throughput
stage's time per step.

The cost model (`search_steps`) counts a size's search in runs of its steps to target S: the coarse
search (every size), then, where wave 3 refines the size, the refinement, the hold of the rates in
contention and the seed reruns. Where no size has measured its steps yet, S is max_steps and every
size counts as refined: the estimate is then the bill's upper end.
"""
from __future__ import annotations

import math

import pandas as pd

from stages.core.progress import duration

# The cost model, in runs of a size's steps to target S (measured on digits_mlp and the nqm benchmarks:
# bench/bench_scaling.py prints the study's own figures beside it):
COARSE_RUNS = 3.0   # the coarse search: the pilot's rungs, the leader to S held SEARCH_HOLD, the others stopped by then
REFINE_RUNS = 2.0   # refinement: a few rates, each pruned at a rung or stopped by S


COARSE_SHARE = 0.6  # of scaling.budget_seconds the coarse waves may spend, shared by the sizes' estimated costs


def coarse_estimates(sizes: list[int], expected_steps: dict[int, float], time_per_step_s: dict[int, float], s) -> dict[int, float]:
    """Each size's estimated coarse search, in seconds where throughput timed it (else in steps: the
    shares below only need the sizes' costs relative to each other)."""
    timed = all(b in time_per_step_s for b in sizes)
    return {b: search_steps(expected_steps.get(b, s.max_steps), s, False) * (time_per_step_s[b] if timed else 1.0)
            for b in sizes}


def coarse_allowance(batch_size: int, sizes: list[int], expected_steps: dict[int, float],
                     time_per_step_s: dict[int, float], s) -> float | None:
    """The seconds of training scaling.budget_seconds allows one size's coarse search: COARSE_SHARE of
    the budget, shared by the studied sizes' estimated costs (None: no budget). Every job of the first two
    waves computes the same shares from the same files, so together they stay within COARSE_SHARE."""
    if s.budget_seconds is None:
        return None
    est = coarse_estimates(sizes, expected_steps, time_per_step_s, s)
    total = sum(est.values())
    return COARSE_SHARE * s.budget_seconds * (est[batch_size] / total if total > 0 else 1 / len(sizes))


def pilot_seconds(sizes: list[int], time_per_step_s: dict[int, float], first_rung_steps: int, s) -> float | None:
    """What the pilot alone costs -- every candidate rate's first rung at every studied size -- in
    seconds (None where throughput did not time every size)."""
    if not all(b in time_per_step_s for b in sizes):
        return None
    return sum(s.lr_points * first_rung_steps * time_per_step_s[b] for b in sizes)


def check_budget(sizes: list[int], time_per_step_s: dict[int, float], first_rung_steps: int, s) -> str | None:
    """Why scaling.budget_seconds cannot fit the study (the pilot alone costs more), or None."""
    need = pilot_seconds(sizes, time_per_step_s, first_rung_steps, s) if s.budget_seconds is not None else None
    if need is None or s.budget_seconds >= need:
        return None
    return (f"scaling.budget_seconds: received {s.budget_seconds:g}; allowed: at least {need:.3g} s, what the pilot alone "
            f"costs here ({s.lr_points} rates x {first_rung_steps} steps at each of the sizes {sizes}, at throughput's time "
            f"per step); raise it, study fewer sizes (scaling.batch_sizes) or set it to null")


def search_trials(s, refined: bool = True) -> tuple[int, int]:
    """(search-seed trials, seed reruns) one size's search is expected to spend with settings `s`: the
    coarse search tries the grid (and about one rate beyond it), the refinement about 3 (its cap
    permitting); the seeds: `rerun_top` rates get the first, then half of them each further one."""
    coarse = s.lr_points + 1
    if not refined:
        return coarse, 0
    refine = min(s.lr_refine_trials, 3)
    seeds, rates = 0, s.rerun_top
    for k in range(s.seeds):
        seeds += rates
        rates = max(1, math.ceil(rates / 2))
    return coarse + refine, seeds


def search_steps(steps_to_target: float, s, refined: bool = True, seeds: bool = True) -> float:
    """Training steps one size's search is expected to spend if its best rate needs `steps_to_target`:
    the coarse search, and where the size is refined, the refinement, the hold of the `rerun_top` rates
    to hold_factor and the seed reruns (each held to hold_factor); without `seeds` (refined only for
    B_crit's fit) at most scaling.fit_refine_trials refinement trials and nothing more."""
    if not refined:
        return steps_to_target * COARSE_RUNS
    if not seeds:
        return steps_to_target * (COARSE_RUNS + REFINE_RUNS * min(s.fit_refine_trials, 3) / 3)
    _, seeded = search_trials(s)
    holds = s.rerun_top * max(0.0, s.hold_factor - 1.25)
    return steps_to_target * (COARSE_RUNS + REFINE_RUNS + holds + seeded * s.hold_factor)


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


def plan_table(batch_sizes: list[int], measured: dict[int, float], time_per_step_s: dict[int, float],
               s, refined: set[int] | None = None) -> pd.DataFrame:
    """One row per size: predicted steps to target and where from, trials, steps, examples and seconds
    the search is expected to spend (seconds: NaN where throughput did not time the size). `refined`:
    the sizes wave 3 refines (None: not known yet, every size counted as refined -- the upper end)."""
    rows = []
    for b in batch_sizes:
        steps, source = predicted_steps(b, measured, s.max_steps)
        refine = refined is None or b in refined
        searched, seeded = search_trials(s, refine)
        spend = search_steps(steps, s, refine)
        rows.append({"batch_size": b, "steps_to_target": round(steps), "from": source, "trials": searched + seeded,
                     "refined": refine, "steps": round(spend), "examples": round(spend * b),
                     "seconds": spend * time_per_step_s[b] if b in time_per_step_s else math.nan})
    return pd.DataFrame(rows)


def plan_line(row: pd.Series) -> str:
    """One size's bill in words: 'about 10 trials, 3720 steps, 238080 examples, about 4 s of training
    (steps to target 93: between bs 32 and 128)'."""
    seconds = "" if pd.isna(row["seconds"]) else f", about {duration(row['seconds'])} of training"
    return (f"about {row['trials']} trials, {row['steps']} steps, {row['examples']} examples{seconds} "
            f"(steps to target {row['steps_to_target']}: {row['from']})")


def throughput_times(table: pd.DataFrame) -> dict[int, float]:
    """Batch size -> time per step from throughput's table (sizes it did not time left out)."""
    return {int(b): float(x) for b, x in zip(table["batch_size"], table["time_per_step_s"]) if pd.notna(x)}
