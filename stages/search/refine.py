"""After the coarse grid (lr_search.search): resolve the best learning rate at one batch size.

- Widen: a best rate at the edge of what was tried says nothing about rates beyond it, so try one
  coarse-grid step further out, up to [lr_min / widen_factor, lr_max * widen_factor]; a best still
  at that edge is a `boundary` result (tables.py marks it and says which way to widen), never a finding.
- Refine: bisect in log space between the best rate and its wider-apart neighbour until both tried
  neighbours lie within `ratio` of it, or `max_trials` refinement trials were spent. A neighbour no
  worse than the best by more than the evaluation resolution ties with it: the optimum lies between
  the two (on a bowl, two rates equally far from the optimum tie while it needs far fewer steps), so
  the rate between them is tried; if it does not beat the best, the refinement stops (a plateau, or
  seed noise larger than the rates' differences: steps cannot tell them apart). Each trial gives up once it cannot beat
  the best (early stopping), so a refinement trial costs at most the best's steps.
- Seeds (successive halving): the `top` rates of the search get a second seed; contenders whose
  range of steps over seeds no longer overlaps the leader's drop out, and at most half stay for the
  next seed. The final pick is by the median over the survivors' seeds (lr_search.best_learning_rate),
  not by the luckiest run. A seed run gives up at SEED_GIVE_UP x its rate's slowest seed so far (a
  seed that slow is an outlier the median ignores), and holds the target past its crossing only while
  its rate can still be chosen (`ranking.can_be_chosen` against the leader, on the seeds run so far):
  a rate behind the leader stops at its crossing -- the hold check is for contenders.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np

from dataclasses import replace

from stages.search.result import TrialResult
from stages.search.coarse import MIN_PILOT, Target, Trial, best_steps, check_points, measurably_worse, rung_trial
from stages.search.ranking import can_be_chosen, rank_key, step_budget

if TYPE_CHECKING:  # the pool trains (torch); these modules only pass it on
    from stages.search.pool import TrialPool

OnTrial = Callable[[Trial], None] | None
SEED_GIVE_UP = 3.0  # a seed run gives up at this x the slowest seed of its rate so far (censored: it counts as not reached)


def _best_rate(tried: dict[float, TrialResult]) -> float | None:
    reached = [(r.steps_to_target, lr) for lr, r in tried.items() if r.steps_to_target is not None]
    return min(reached)[1] if reached else None


def next_rate(tried: dict[float, TrialResult], *, ratio: float, resolution: float, low_limit: float,
              high_limit: float, widen_step: float) -> tuple[str, float] | None:
    """The next (phase, learning rate) to try at the search seed, or None when resolved (or at a cap)."""
    best = _best_rate(tried)
    if best is None:
        return None  # nothing reached the target: there is no optimum to resolve
    rates = sorted(tried)
    i = rates.index(best)
    if i == 0 or i == len(rates) - 1:
        out = max(best / widen_step, low_limit) if i == 0 else min(best * widen_step, high_limit)
        if abs(math.log(out / best)) < 1e-9:
            return None  # at the cap: a boundary result
        return "widen", out
    lo, hi, steps = rates[i - 1], rates[i + 1], tried[best].steps_to_target
    worse = {n: measurably_worse(tried[n], steps, resolution) for n in (lo, hi)}
    sides = [(r, n) for r, n in ((best / lo, lo), (hi / best, hi)) if r > ratio]
    ties = [r for r in rates if r != best and not measurably_worse(tried[r], steps, resolution)]
    if any(min(best, t) < r < max(best, t) for t in ties for r in rates):
        # A rate between the best and one it ties with was tried and did not beat it: a plateau, or
        # seed noise larger than the rates' differences -- steps cannot tell these rates apart.
        return None
    if not all(worse.values()):
        # A neighbour ties with the best: the optimum lies between the two (steps are unimodal in the
        # rate) -- on a bowl, two rates equally far from it tie while it needs far fewer steps -- so
        # try the rate between them once.
        sides = [(r, n) for r, n in sides if not worse[n]]
    if not sides:
        return None
    _, other = max(sides)  # the wider gap first (ties: the lower side, it comes first)
    return "refine", math.sqrt(best * other)


def resolve(coarse: list[Trial], pool: TrialPool, seed: int, target: Target, *, ratio: float, max_trials: int,
            resolution: float, low_limit: float, high_limit: float, widen_step: float, rungs: list[int],
            margin: float, early_stopping: bool = True, prune_from: int = MIN_PILOT, on_trial: OnTrial = None,
            stop: Callable[[], bool] | None = None) -> list[Trial]:
    """Widen and refine after the coarse trials (same seed); returns the new trials only. Each new rate
    trains rung by rung against the best trial so far and is pruned where it is clearly behind it
    (coarse.rung_trial); it gives up once it passes the best's steps."""
    tried = {t.learning_rate: t.result for t in coarse if t.seed == seed}
    out: list[Trial] = []
    refined = 0
    while (step := next_rate(tried, ratio=ratio, resolution=resolution, low_limit=low_limit,
                             high_limit=high_limit, widen_step=widen_step)) is not None:
        phase, lr = step
        if stop is not None and stop():
            break  # scaling.budget_seconds: the study's budget is spent
        if phase == "refine":
            if refined >= max_trials:
                break
            refined += 1
        give_up = best_steps(list(tried.values())) if early_stopping else None
        best = min((r.steps_to_target, rate) for rate, r in tried.items() if r.steps_to_target is not None)[1]
        result, resumed = rung_trial(pool, lr, seed, target, rungs=check_points(rungs, resolution, prune_from),
                                     give_up_after=give_up,
                                     reference=tried[best], reference_rate=best, margin=margin)
        tried[lr] = result
        out.append(Trial(lr, seed, phase, len(coarse) + len(out), give_up, result, resumed))
        if on_trial:
            on_trial(out[-1])
    return out


def hold_to_budget(trials: list[Trial], pool: TrialPool, margin: float, on_trial: OnTrial = None,
                   stop: Callable[[], bool] | None = None) -> list[Trial]:
    """Every run of each rate select may choose -- the rates rerun with extra seeds that are not behind
    the leader on them (ranking.can_be_chosen) -- holds the target
    through the step budget select will write for it (ranking.step_budget of the median over its runs,
    x `margin`, select.step_budget_margin), going on from where it stopped: the guarantee select checks,
    at no more cost than it needs. A run that falls back on the way moves its crossing on (as in one
    run; it gives up at SEED_GIVE_UP x the rate's slowest run, as a seed run does), which moves the
    budget: repeated until the budget settles. Returns `trials`, the held ones
    with their new result."""
    trials = list(trials)
    for _ in range(4):
        changed = False
        seeded = sorted({t.learning_rate for t in trials if t.phase == "seed"})
        steps_of = {lr: [t.result.steps_to_target for t in trials if t.learning_rate == lr and t.phase != "bounded"]
                    for lr in seeded}
        leader = min(seeded, key=lambda lr: rank_key(steps_of[lr], lr), default=None)
        for lr in seeded:
            if lr != leader and not can_be_chosen(steps_of[lr], lr, steps_of[leader], leader):
                continue  # behind the leader on its seeds: select would not choose it, so no hold is spent on it
            runs = [i for i, t in enumerate(trials) if t.learning_rate == lr and t.phase != "bounded"]
            steps = [trials[i].result.steps_to_target for i in runs]
            if any(s is None for s in steps):
                continue  # a run that did not reach: the rate cannot qualify, a longer hold would not change that
            budget = step_budget(float(np.median(steps)), margin)
            for i in runs:
                t = trials[i]
                if t.result.outcome != "reached" or t.result.steps_run >= budget:
                    continue
                if stop is not None and stop():
                    return trials  # scaling.budget_seconds spent: select sees the holds that were not done
                # a crossing that falls back moves on, as in one run, giving up as far out as a seed run does
                far = math.ceil(SEED_GIVE_UP * max(steps))
                result, replayed = pool.advance(lr, t.seed, hold=budget, give_up_after=far)
                trials[i] = replace(t, result=result, resumed=t.resumed and replayed)
                changed = True
                if on_trial:
                    on_trial(trials[i])
        if not changed:
            break
    return trials


def successive_halving(search_trials: list[Trial], pool: TrialPool, seeds: list[int], top: int, *,
                       on_trial: OnTrial = None, stop: Callable[[], bool] | None = None) -> list[Trial]:
    """More seeds for fewer rates: the `top` rates of the search each get the first extra seed; then
    only contenders whose steps over seeds overlap the leader's (at most half, at least the leader)
    get the next. Seed runs measure the spread, so they stop early only far out: at SEED_GIVE_UP x the
    rate's slowest seed so far; a run whose rate is behind the leader ends at its crossing (no hold)."""
    reached = sorted({(t.result.steps_to_target, t.learning_rate) for t in search_trials
                      if t.result.steps_to_target is not None})
    contenders = [lr for _, lr in reached[:top]]
    steps = {lr: [s for s, r in reached if r == lr] for lr in contenders}
    out: list[Trial] = []
    order = len(search_trials)
    for k, s in enumerate(seeds):
        if k > 0 and len(contenders) > 1:
            ranked = sorted(contenders, key=lambda lr: rank_key(steps[lr], lr))
            lead_worst = max(math.inf if x is None else x for x in steps[ranked[0]])
            overlap = [lr for lr in ranked if min(math.inf if x is None else x for x in steps[lr]) <= lead_worst]
            contenders = overlap[:max(1, math.ceil(len(contenders) / 2))]
        for lr in contenders:
            if stop is not None and stop():
                return out  # scaling.budget_seconds spent: the seeds not run are missing from the table, said there
            known = [x for x in steps[lr] if x is not None]
            give_up = math.ceil(SEED_GIVE_UP * max(known)) if known else None
            others = [r for r in steps if r != lr]
            leader = min(others, key=lambda r: rank_key(steps[r], r)) if others else None

            def contender(x: int, lr=lr, leader=leader) -> bool:
                return leader is None or can_be_chosen(steps[lr] + [x], lr, steps[leader], leader)

            result, resumed = pool.advance(lr, s, give_up_after=give_up, contender=contender)
            if result.outcome != "reached":  # a reached run may be held through its rate's budget later
                pool.release(lr, s)
            steps[lr].append(result.steps_to_target)
            out.append(Trial(lr, s, "seed", order, give_up, result, resumed))
            order += 1
            if on_trial:
                on_trial(out[-1])
    return out
