"""The scaling study in waves: which sizes each wave searches, and what a wave decides from the last.

    wave 1   scaling_wave1@B     the coarse search at the largest size and every other one below it,
                                 spread over the range, with nothing known (stages/search/coarse.py)
             scaling_gaps        wave2.json: each size between them is predicted -- its neighbours confirm
                                 perfect scaling around it (`plan_gaps`) -- or searched from what they found
    wave 2   scaling_wave2@B     the coarse search at those sizes, started from their neighbours' rates and
                                 steps (or one `predicted` row)
             scaling_contenders  contenders.json: which sizes can still win -- coarse time to the target
                                 within scaling.contender_factor of the best size's -- or anchor B_crit's fit
                                 (`plan_contenders`)
    wave 3   scaling_trials@B    refinement, the hold and the seeds there; the coarse answer as it is elsewhere
             scaling             the summary: tables, B_crit, figures, what was refined and why

Within a wave every job is independent -- any order, or all at once on a cluster's devices -- and each
wave's plan is a small file both DVC and Snakemake track, so both tools plan and record the same jobs.
A job the plan rules out (a predicted size in wave 2, a size that cannot win in wave 3) writes its row
in about a second. Pure functions over the tables; the jobs are stages/scaling/trials.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from stages.pipeline.declaration import wave_sizes


@dataclass(frozen=True)
class Answer:
    """A size's coarse answer: its best rate and that rate's steps at the search seed (None: not reached)."""
    batch_size: int
    rate: float | None
    steps: float | None


def halving_in_perfect_scaling(larger: tuple[int, float], smaller: tuple[int, float], ratio: float) -> bool:
    """Does the smaller size need at least `ratio` x the larger size's steps per halving between them
    (ratio ** k over k halvings; 2 per halving is exactly perfect scaling)?"""
    (b1, s1), (b2, s2) = larger, smaller
    return s2 >= s1 * ratio ** math.log2(b1 / b2)


def answers(table: pd.DataFrame) -> dict[int, Answer]:
    """Batch size -> its answer, from a per-size table (stages/scaling/tables.per_size_table)."""
    out = {}
    for r in table.itertuples():
        reached = r.status == "reached" and pd.notna(r.steps_to_target)
        out[int(r.batch_size)] = Answer(int(r.batch_size), float(r.best_learning_rate) if reached else None,
                                        float(r.steps_to_target) if reached else None)
    return out


def _interpolate(b: int, low: Answer, high: Answer) -> tuple[float, float]:
    """(rate, steps) at b, log-log between two measured sizes."""
    t = math.log(b / low.batch_size) / math.log(high.batch_size / low.batch_size)
    rate = math.exp((1 - t) * math.log(low.rate) + t * math.log(high.rate))
    steps = math.exp((1 - t) * math.log(low.steps) + t * math.log(high.steps))
    return rate, steps


def plan_gaps(first: dict[int, Answer], second: list[int], *, adaptive: bool, ratio: float,
              use_neighbours: bool = True, time_per_step_s: dict[int, float] | None = None,
              factor: float | None = None) -> dict[int, dict]:
    """What wave 2 does at each of its sizes, from wave 1's answers (`first`, the sizes it searched):
    - predicted: the nearest measured sizes around it (or, below every measured size, the two nearest
      above) took at least `ratio` x the steps per halving between them -- perfect scaling -- so a size
      there trains no faster and no cheaper than the larger one: perfect scaling's steps from the nearest
      larger measured size, never trained nor chosen;
    - searched from a prior: the rate and steps interpolated (log-log) between its measured neighbours,
      else the nearest one's rate scaled by the square root of the size ratio and its steps by perfect
      scaling (below) or kept (above) -- the coarse search then starts at that rate, one grid step either
      side, with a first rung sized to those steps;
    - out of the race (with `time_per_step_s` and `factor`, scaling.contender_factor): both sizes around
      it took more than `factor` x the best measured size's time to the target (steps x throughput's time
      per step) -- the time to the target falls, then rises with the batch size, so between two sizes
      that cannot win there is none that can; or every size on its side of the best did so and the
      nearer one is among them. Its steps are interpolated (never trained nor chosen), and B_crit's fit
      leaves it out;
    - searched from nothing (no neighbour reached, or scaling.lr_start: centre)."""
    measured = sorted(b for b, a in first.items() if a.steps is not None)
    timed = {b: first[b].steps * time_per_step_s[b] for b in measured if time_per_step_s and b in time_per_step_s}
    best = min(timed, key=timed.get) if timed else None
    plans: dict[int, dict] = {}
    for b in second:
        above = [x for x in measured if x > b]
        below = [x for x in measured if x < b]
        hi = first[above[0]] if above else None
        lo = first[below[-1]] if below else None
        if adaptive and factor is not None and best is not None:
            def slow(n: Answer | None) -> bool:
                return n is not None and n.batch_size in timed and timed[n.batch_size] > factor * timed[best]

            if (slow(lo) and slow(hi)) or (lo is None and slow(hi) and b < best) or (hi is None and slow(lo) and b > best):
                steps = (_interpolate(b, lo, hi)[1] if lo is not None and hi is not None else
                         hi.steps * hi.batch_size / b if hi is not None else lo.steps)
                around = ", ".join(f"bs {n.batch_size} {timed[n.batch_size] / timed[best]:.1f}x" for n in (lo, hi) if n)
                plans[b] = {"action": "predict", "steps": steps,
                            "why": (f"predicted, not trained (scaling.adaptive): it cannot win -- the sizes around it "
                                    f"took more than scaling.contender_factor {factor:g} x the best size's (bs {best}) "
                                    f"time to the target ({around}), and the time to the target falls, then rises with "
                                    f"the batch size; its steps ({steps:.0f}) are interpolated, never trained nor chosen "
                                    f"(scaling.adaptive: false trains it)")}
                continue
        if adaptive and hi is not None:
            pair = (hi, lo) if lo is not None else ((first[above[1]], hi) if len(above) > 1 else None)
            unmeasured_below = lo is None and any(x < b for x in first)  # a size below was searched and did not reach
            if pair is not None and not unmeasured_below and halving_in_perfect_scaling(
                    (pair[0].batch_size, pair[0].steps), (pair[1].batch_size, pair[1].steps), ratio):
                steps = hi.steps * hi.batch_size / b
                plans[b] = {"action": "predict", "steps": steps,
                            "why": (f"predicted, not trained (scaling.adaptive): bs {pair[0].batch_size} -> "
                                    f"{pair[1].batch_size} took {pair[0].steps:.0f} -> {pair[1].steps:.0f} steps, "
                                    f"perfect scaling (at least {ratio:g}x the steps per halving, "
                                    f"scaling.adaptive_ratio); perfect scaling from bs {hi.batch_size} gives "
                                    f"{steps:.0f} steps here, and a smaller batch in perfect scaling trains no faster "
                                    f"and no cheaper, so it is never chosen (scaling.adaptive: false trains it)")}
                continue
        prior = None
        if use_neighbours and hi is not None and lo is not None:
            rate, steps = _interpolate(b, lo, hi)
            prior = {"rate": rate, "steps": steps,
                     "source": f"between bs {lo.batch_size} (lr {lo.rate:.3g}, {lo.steps:.0f} steps) and bs "
                               f"{hi.batch_size} (lr {hi.rate:.3g}, {hi.steps:.0f} steps)"}
        elif use_neighbours and (hi or lo) is not None:
            n = hi or lo
            rate = n.rate * math.sqrt(b / n.batch_size)
            steps = n.steps * (n.batch_size / b if n is hi else 1.0)
            prior = {"rate": rate, "steps": steps,
                     "source": f"from bs {n.batch_size} (lr {n.rate:.3g} x sqrt({b}/{n.batch_size}), "
                               f"{n.steps:.0f} steps{' x the size ratio' if n is hi else ''})"}
        plans[b] = {"action": "search", "prior": prior,
                    "why": f"searched from {prior['source']}" if prior else "searched from the whole grid (no neighbour reached)"}
    return plans


def share_budget(plans: dict[int, dict], left_s: float, cost_s: dict[int, float]) -> dict[int, dict]:
    """scaling.budget_seconds: what the coarse waves left (`left_s`), shared by the refined sizes' estimated
    costs (`cost_s`: refinement, holds and seeds); nothing left -- no refinement, said in each size's why."""
    refined = [b for b, p in plans.items() if p.get("refine")]
    total = sum(cost_s.get(b, 0.0) for b in refined)
    for b in refined:
        if left_s <= 0:
            plans[b] = {**plans[b], "refine": False, "seeds": False, "budget_seconds": 0.0,
                        "why": f"not refined: scaling.budget_seconds was spent by the coarse search (it would have been "
                               f"{plans[b]['why'].removeprefix('refined').lstrip(', ').lstrip(': ')})"}
        else:
            plans[b] = {**plans[b], "budget_seconds": left_s * (cost_s.get(b, 0.0) / total if total > 0 else 1 / len(refined))}
    return plans


def plan_contenders(table: pd.DataFrame, time_per_step_s: dict[int, float], *, factor: float, adaptive: bool,
                    b_crit: float | None = None) -> dict[int, dict]:
    """Which sizes wave 3 refines (refinement, the hold of the rates in contention, extra seeds) and why.
    `table`: the coarse answers (per_size_table of waves 1 and 2). A size is refined when
    - it can still win: its coarse time to the target (steps x throughput's time per step; examples where
      the size was not timed) is within `factor` of the best size's -- the coarse steps are the search
      seed's at a rate up to a grid step from the best, so a size just behind may overtake once refined; or
    - B_crit's fit needs it: the sizes either side of the coarse estimate `b_crit`, where the curve bends, and
      the largest and smallest sizes that reached the target, which set its asymptotes S_min and E_min.
    The sizes that can win also get extra seeds and the hold through their step budget; an anchor of the
    fit only the refinement (its interval borrows the seed spread the others measured). Without
    scaling.adaptive every size that reached is refined, with seeds."""
    reached = table[(table["status"] == "reached") & table["steps_to_target"].notna()]
    cost: dict[int, tuple[float, str]] = {}
    for r in reached.itertuples():
        b = int(r.batch_size)
        if b in time_per_step_s:
            cost[b] = (float(r.steps_to_target) * time_per_step_s[b], "time")
        else:
            cost[b] = (float(r.steps_to_target) * b, "examples")
    timed = {b: c for b, (c, kind) in cost.items() if kind == "time"}
    best_time = min(timed.values(), default=None)
    best_examples = min((c for c, kind in cost.values() if kind == "examples"), default=None)
    sizes = sorted(cost)
    anchors: dict[int, str] = {}
    if b_crit is not None and math.isfinite(b_crit) and sizes:
        below = [b for b in sizes if b <= b_crit]
        above = [b for b in sizes if b > b_crit]
        anchors = {b: f"it lies next to the coarse estimate (about {b_crit:.0f})" for b in {*below[-1:], *above[:1]}}
        # the ends of the curve set the fit's asymptotes (S_min at the largest size, E_min at the smallest): a
        # coarse answer there, a grid step from the best rate, would move B_crit = E_min / S_min by that much
        for b, end in ((sizes[-1], "the largest size that reached the target, where S_min shows"),
                       (sizes[0], "the smallest size that reached the target, where E_min shows")):
            anchors.setdefault(b, f"it is {end}")
    plans: dict[int, dict] = {}
    for r in table.itertuples():
        b = int(r.batch_size)
        if b not in cost:
            plans[b] = {"refine": False, "candidate": False, "why": f"not refined: {r.status} in the coarse search"}
            continue
        value, kind = cost[b]
        best = best_time if kind == "time" else best_examples
        ratio = value / best if best else 1.0
        entry = {"coarse_steps": float(r.steps_to_target), "coarse_learning_rate": float(r.best_learning_rate),
                 f"coarse_{'time_to_target_s' if kind == 'time' else 'examples_to_target'}": value,
                 "ratio_to_best": ratio}
        if not adaptive:
            plans[b] = {**entry, "refine": True, "seeds": True, "candidate": True,
                        "why": "refined: scaling.adaptive is false, every size is"}
        elif ratio <= factor:
            plans[b] = {**entry, "refine": True, "seeds": True, "candidate": True,
                        "why": (f"refined: can still win -- its coarse {kind} to the target is "
                                f"{'the best' if ratio == 1 else f'{ratio:.2f}x the best'} (within "
                                f"scaling.contender_factor {factor:g})")}
        elif b in anchors:
            plans[b] = {**entry, "refine": True, "seeds": False, "candidate": False,
                        "why": (f"refined, without extra seeds: B_crit's fit -- {anchors[b]}; it cannot win (its "
                                f"coarse {kind} to the target is {ratio:.2f}x the best's), so it is never chosen")}
        else:
            plans[b] = {**entry, "refine": False, "candidate": False,
                        "why": (f"not refined: its coarse {kind} to the target is {ratio:.2f}x the best's, beyond "
                                f"scaling.contender_factor {factor:g}; it keeps its coarse answer")}
    return plans


def study_commands(sizes: list[int], adaptive: bool = True) -> list[list[str]]:
    """The study's jobs as `python -m stages.scaling` arguments, wave by wave, in the order `dvc repro`
    runs them (summarize last): for a bench, a test, or a study run by hand."""
    first, second = wave_sizes(sizes, adaptive)
    return ([["coarse", "--batch-size", str(b)] for b in first] + [["gaps"]]
            + [["fill", "--batch-size", str(b)] for b in second] + [["contenders"]]
            + [["trials", "--batch-size", str(b)] for b in sizes] + [["summarize"]])
