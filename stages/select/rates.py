"""Which learning rate `select` trusts at each batch size: one whose every seed holds the target.

The scaling study's best rate is the one that first crosses the target soonest -- often at the edge
of stability, where a run crosses early and then falls back. The step budget select writes is the
rate's steps to target (median over seeds) x `select.step_budget_margin`, rounded up; the baseline
trains exactly that long, so a rate qualifies only if every seed
  - reached the target (trials.csv), and
  - stays at or beyond it at every evaluation from its first crossing through the budget's end
    (its learning curve in curves.csv, which scaling extends past the target by `scaling.hold_factor`;
    the evaluation at or just after the budget's end must be there and meet the target too).
Among qualifying rates whose median steps lie within the seeds' spread (max - min) of the best one's,
the smaller rate is chosen: as fast within noise, and further from the edge of stability.
Pure functions over the files' rows; `python -m stages.select` calls `choose_rates`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stages.search.ranking import rank_key
from stages.core.types import NOT_TRAINED, Steps
from stages.select.decide import Target, step_budget
from stages.workloads.base import target_reached



@dataclass(frozen=True)
class RateCheck:
    batch_size: int
    learning_rate: float
    steps: tuple[Steps | None, ...]   # steps to target per seed (None: not reached)
    seeds: tuple[int, ...]
    median_steps: float               # inf if a seed did not reach
    step_budget: Steps | None         # what select would write for this rate
    why_not: str                      # "" if the rate qualifies

    @property
    def qualifies(self) -> bool:
        return self.why_not == ""

    @property
    def median_seed(self) -> int | None:
        """The seed whose steps to target are the median (the nearest to it for an even count; the smaller
        seed on a tie): the run the baseline retraces, so its check compares like with like -- the search
        seed picked the rate, so its own steps are the luckiest, not the typical ones. None if a seed missed."""
        reached = [(s, seed) for s, seed in zip(self.steps, self.seeds) if s is not None]
        if not reached or len(reached) < len(self.steps):
            return None
        return min(reached, key=lambda p: (abs(p[0] - self.median_steps), p[1]))[1]

    @property
    def spread(self) -> float:
        reached = [s for s in self.steps if s is not None]
        return float(max(reached) - min(reached)) if reached else math.inf


def fell_back(curve: pd.DataFrame, target: Target, reached_at: Steps, budget: Steps) -> str:
    """'' if every evaluation from `reached_at` through the first one at or after `budget` meets the
    target; else what went wrong (a dip, a curve that ends before the budget, no curve at all)."""
    if curve.empty or target.metric not in curve:
        return "has no learning curve in curves.csv"
    rows = curve[curve["step"] >= reached_at].sort_values("step")
    for step, value in zip(rows["step"], rows[target.metric]):
        if not target_reached(value, target.value, target.direction):
            return f"fell back to {target.metric} {value:.4g} at step {int(step)}, before the budget's end ({budget})"
        if step >= budget:
            return ""
    last = int(rows["step"].max()) if len(rows) else reached_at
    return (f"was evaluated only up to step {last}, before the budget's end ({budget}): not shown to hold "
            f"(raise scaling.hold_factor, or scaling.max_steps where the trial stopped there)")


def check_rate(batch_size: int, learning_rate: float, trials: pd.DataFrame, curves: pd.DataFrame,
               target: Target, margin: float) -> RateCheck:
    """The rule above for one (batch size, rate); `trials`/`curves` are that rate's rows."""
    seeds = tuple(int(s) for s in trials["seed"])
    steps = tuple(None if pd.isna(s) else int(s) for s in trials["steps_to_target"])
    median = float(np.median([math.inf if s is None else s for s in steps]))
    missed = [(seed, outcome) for seed, s, outcome in zip(seeds, steps, trials["outcome"]) if s is None]
    if missed:
        why = "; ".join(f"seed {seed} did not reach the target ({outcome})" for seed, outcome in missed)
        return RateCheck(batch_size, learning_rate, steps, seeds, median, None, why)
    budget = step_budget(median, margin)
    problems = []
    for seed, s in zip(seeds, steps):
        why = fell_back(curves[curves["seed"] == seed], target, s, budget)
        if why:
            problems.append(f"seed {seed} {why}")
    return RateCheck(batch_size, learning_rate, steps, seeds, median, budget, "; ".join(problems))


def check_rates(trials: pd.DataFrame, curves: pd.DataFrame, target: Target, margin: float) -> list[RateCheck]:
    """Every (batch size, rate) that reached the target at least once, checked."""
    ran = trials[~trials["outcome"].isin(NOT_TRAINED) & (trials["phase"] != "bounded")]  # bounded: retried
    out = []
    for (b, lr), rows in ran.groupby(["batch_size", "learning_rate"], sort=True):
        if rows["steps_to_target"].isna().all():
            continue  # never reached: not in contention, nothing to explain
        part = curves[(curves["batch_size"] == b) & np.isclose(curves["learning_rate"], lr, rtol=1e-12, atol=0)] \
            if len(curves) else curves
        out.append(check_rate(int(b), float(lr), rows, part, target, margin))
    return out


def pick(checks: list[RateCheck]) -> tuple[RateCheck | None, str]:
    """Among one size's qualifying rates: the best by median steps (then best seed, then the smaller
    rate); then the smallest rate whose median is within the best one's seed spread. With why."""
    ok = [c for c in checks if c.qualifies]
    if not ok:
        return None, "; ".join(f"lr {c.learning_rate:.3g}: {c.why_not}" for c in checks) or "no rate reached the target"
    best = min(ok, key=lambda c: rank_key(list(c.steps), c.learning_rate))
    near = [c for c in ok if c.median_steps <= best.median_steps + best.spread]
    chosen = min(near, key=lambda c: c.learning_rate)
    why = f"lr {chosen.learning_rate:.3g}: every seed ({len(chosen.seeds)}) holds the target through the budget ({chosen.step_budget} steps)"
    most = max(len(c.seeds) for c in checks)
    if len(chosen.seeds) < most:  # the seed reruns went to rates that did not hold: say how thin this is
        why += (f" -- checked on fewer seeds than the size's most-run rate ({most}); raise scaling.rerun_top "
                f"so more rates get the extra seeds")
    if chosen is not best:
        why += (f"; the smallest rate within the best's seed spread (lr {best.learning_rate:.3g}: median "
                f"{best.median_steps:.0f} steps, spread {best.spread:.0f}; this one {chosen.median_steps:.0f})")
    rejected = [c for c in checks if not c.qualifies and c.median_steps <= chosen.median_steps]
    if rejected:
        why += "; faster but rejected: " + "; ".join(f"lr {c.learning_rate:.3g}: {c.why_not}" for c in rejected)
    return chosen, why


def choose_rates(trials: pd.DataFrame, curves: pd.DataFrame, target: Target, margin: float) -> pd.DataFrame:
    """One row per batch size with a rate that reached the target: the rate select trusts (NaN if none
    holds), its steps to target over seeds (median, min, max), its step budget, and why."""
    checks = check_rates(trials, curves, target, margin)
    rows = []
    for b in sorted({c.batch_size for c in checks}):
        chosen, why = pick([c for c in checks if c.batch_size == b])
        reached = [s for s in chosen.steps if s is not None] if chosen else []
        rows.append({"batch_size": b,
                     "learning_rate": chosen.learning_rate if chosen else math.nan,
                     "steps_to_target": chosen.median_steps if chosen else math.nan,
                     "steps_to_target_min": min(reached) if reached else math.nan,
                     "steps_to_target_max": max(reached) if reached else math.nan,
                     "seeds": len(chosen.seeds) if chosen else 0,
                     "median_seed": chosen.median_seed if chosen else None,
                     "step_budget": chosen.step_budget if chosen else math.nan,
                     "holds": chosen is not None, "rate_why": why})
    return pd.DataFrame(rows, columns=["batch_size", "learning_rate", "steps_to_target", "steps_to_target_min",
                                       "steps_to_target_max", "seeds", "median_seed", "step_budget", "holds", "rate_why"])


def trusted_steps(steps: pd.DataFrame, choices: pd.DataFrame) -> pd.DataFrame:
    """steps_to_target.csv with each studied size's rate and steps replaced by the trusted rate's.
    A size where no rate holds becomes status `not_held` (reason: why each was rejected). The steps
    interval columns describe scaling's best rate, so they stay only where that rate was kept."""
    out = steps.copy()
    for col in ("status", "reason"):  # text columns (an all-empty one reads back as float)
        out[col] = out[col].astype(object) if col in out else ("reached" if col == "status" else "")
    by_size = choices.set_index("batch_size")
    for col in ("rate_why", "step_budget"):
        out[col] = out["batch_size"].map(by_size[col]) if len(by_size) else math.nan
    status = out["status"]
    coarse = out["candidate"].eq(False) if "candidate" in out else pd.Series(False, index=out.index)
    for i, b in zip(out.index, out["batch_size"]):
        if status[i] != "reached" or coarse[i]:  # a coarse answer is shown as it is, never chosen (decide.py)
            continue
        if b not in by_size.index:
            out.loc[i, ["status", "reason", "steps_to_target", "best_learning_rate"]] = \
                ["not_held", "trials.csv holds no trial that reached the target", math.nan, math.nan]
            continue
        c = by_size.loc[b]
        if not c["holds"]:
            out.loc[i, ["status", "reason", "steps_to_target", "best_learning_rate"]] = \
                ["not_held", c["rate_why"], math.nan, math.nan]
            continue
        if not math.isclose(float(out.loc[i, "best_learning_rate"]), float(c["learning_rate"]), rel_tol=1e-12):
            for col in ("steps_to_target_ci_low", "steps_to_target_ci_high"):
                if col in out:
                    out.loc[i, col] = math.nan
        out.loc[i, ["best_learning_rate", "steps_to_target"]] = [c["learning_rate"], c["steps_to_target"]]
    return out
