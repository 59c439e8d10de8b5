"""The coarse search at one batch size: successive halving over learning rates on their learning curves.

The candidate rates (the grid over the learning-rate range; or, from a prior -- the neighbouring sizes,
the previous study -- the expected best rate and a grid step either side) all start together and train
rung by rung: the first rung is short (`first_rung`: the pilot, tens of steps), each next one twice as
long. At every rung each trial still in the race is evaluated at the same step, and
- the better half race on (successive halving: an early leader is often a rate at the edge of
  stability that a slower start overtakes); of the other half, a trial whose distance to the target
  is more than (1 + `margin`) x the leader's at that step is clearly behind: it is `pruned` there
  (paused, its state kept: should every trial ahead of it fail -- diverge, stall, never reach -- the
  best pruned one is resumed where it stopped, never restarted);
- once a trial reached the target, the others give up when they pass its steps (they cannot beat it:
  early stopping, so the best steps and rate are those of running every trial to the end) -- within a
  rung the racing trials advance together, about 10% of steps at a time (`lockstep`), so a crossing
  early in a rung stops the others there, not at the rung's end;
- a leader at the edge of what was tried widens the search one grid step further out (down to
  lr_min / lr_widen_factor, up to lr_max x lr_widen_factor): a best rate at an edge says nothing about
  the rates beyond it -- once it has reached the target or is clearly ahead of its neighbour (by the
  margin above), not while it leads by less: early on the larger rate often leads a little and is then
  overtaken (short-horizon bias), and a rate beyond it would race only to lose;
- a leader next to a rate that diverged brings the rate between the two into the race, once, as soon as
  that is seen (the optimum is often just below the edge of stability);
- the pruning test also runs within a rung, at each lockstep, with the margin doubled, at successive
  halving's pace (each time the steps double, at most half of those racing are left behind): a first
  rung can be longer than the whole race.
So a bad rate costs a rung or two, and nothing runs to max_steps unless the best rate needs that
long. The trials advance through a `TrialPool` (stages/search/pool.py): journalled, resumable,
bit-identical when resumed.
"""
from __future__ import annotations

import bisect
import math
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np

from stages.core.types import Steps
from stages.search.ranking import rank_key
from stages.search.result import TrialResult, eval_schedule

if TYPE_CHECKING:  # the pool trains (torch); these modules only pass it on
    from stages.search.pool import TrialPool

RUNG_FACTOR = 2  # each rung is this many times the last one's steps
LOCKSTEP_FACTOR = 1.1  # within a rung the racing trials advance together, this factor of steps at a time
# Within a rung a trial is left behind only this many times further behind than at the rung's end: checked
# every lockstep (~10% of steps), a margin that holds at a few rungs would now and then catch a slower start
# just before the leader's crossing -- one that may fall back.
WITHIN_RUNG_MARGIN = 2.0
MIN_PILOT = 8  # fewest steps of the first rung, and the first step any trial is compared at: fewer tell rates
               # apart only by their first noisy steps


def learning_rate_grid(lr_min: float, lr_max: float, points: int, kind: Literal["log", "sobol"] = "log",
                       seed: int = 0) -> list[float]:
    """`points` learning rates in [lr_min, lr_max], increasing: log-spaced, or scrambled Sobol
    points in log space (fills the range without a fixed ratio; same seed, same points)."""
    if points == 1:
        return [float(math.sqrt(lr_min * lr_max))]
    lo, hi = math.log(lr_min), math.log(lr_max)
    if kind == "log":
        u = np.linspace(0.0, 1.0, points)
    else:
        from scipy.stats import qmc

        with warnings.catch_warnings():  # balance properties want a power of two; any N is fine here
            warnings.simplefilter("ignore", UserWarning)
            u = np.sort(qmc.Sobol(d=1, scramble=True, seed=seed).random(points)[:, 0])
    return [float(math.exp(lo + x * (hi - lo))) for x in u]


def grid_ratio(lr_min: float, lr_max: float, points: int) -> float:
    """The factor between neighbouring rates of the log grid (the coarse search's resolution)."""
    return (lr_max / lr_min) ** (1 / (points - 1)) if points > 1 else 4.0


def final_metric_score(metric: str, direction: str) -> Callable[[TrialResult], float]:
    """Lower is better: how close a trial that missed the target got (diverged trials last)."""
    def score(r: TrialResult) -> float:
        value = r.final_metrics.get(metric, math.nan)
        if r.outcome == "diverged" or not math.isfinite(value):
            return math.inf
        return -value if direction == "above" else value
    return score


def measurably_worse(result: TrialResult, best: int, resolution: float) -> bool:
    """Did this trial need more than one evaluation interval beyond the best's steps (or never reach)?"""
    return result.steps_to_target is None or result.steps_to_target > best * (1 + resolution)


def best_steps(results: list[TrialResult], k: int = 1) -> int | None:
    """The k-th fewest steps to target among the results (None while fewer than k reached it)."""
    reached = sorted(r.steps_to_target for r in results if r.steps_to_target is not None)
    return reached[k - 1] if len(reached) >= k else None


@dataclass
class Trial:
    learning_rate: float
    seed: int
    # coarse: a candidate of the coarse search; widen: a rate beyond the first candidates, tried because
    # the leader sat at their edge; refine: bisection around the best (refine.py); seed: another seed
    # (refine.py); bounded: a trial of an earlier kickoff that a bound stopped and that ran again
    phase: Literal["coarse", "widen", "refine", "seed", "bounded"]
    order: int                  # position in the order the trials were started
    give_up_after: int | None
    result: TrialResult
    resumed: bool               # answered by the journal instead of trained


@dataclass(frozen=True)
class Target:
    metric: str
    value: float
    direction: str  # "above" or "below"


def distance(result: TrialResult | None, step: Steps, target: Target) -> float | None:
    """How far short of the target the trial was at `step` (<= 0: at or beyond it; inf: not finite);
    None without an evaluation at that step."""
    for row in (result.curve if result is not None else []):
        if row["step"] == step:
            value = row.get(target.metric, math.nan)
            if not math.isfinite(value):
                return math.inf
            return target.value - value if target.direction == "above" else value - target.value
    return None


FLOOR = 0.2  # near the target, "clearly behind" is judged against this share of the starting distance


def clearly_behind(gap: float, leader_gap: float, margin: float, start: float) -> bool:
    """Is a trial `gap` short of the target clearly behind a leader `leader_gap` short of it at the same
    step? Farther by more than `margin` (scaling.prune_margin) of the leader's distance -- or, once the
    leader is close to the target, of FLOOR x the distance both started from (`start`, the first
    evaluation's): near the target the distances are small and a curve's noise is not."""
    return gap - leader_gap > margin * max(leader_gap, FLOOR * start)


def diverging(result: TrialResult, target: Target) -> bool:
    """Did the trial diverge, or was it moving away from the target when it stopped (left behind within a
    rung before its metric stopped being finite: farther from the target than where it started)?"""
    if result.outcome == "diverged":
        return True
    last = _final_distance(result, target) if result.curve else None
    return last is not None and last > start_distance(result, target)


def start_distance(result: TrialResult | None, target: Target) -> float:
    """The distance to the target at the trial's first evaluation (its start: the scale of the race)."""
    if result is None or not result.curve:
        return math.inf
    d = distance(result, result.curve[0]["step"], target)
    return d if d is not None and math.isfinite(d) and d > 0 else math.inf


def rung_steps(first: Steps, max_steps: Steps, resolution: float) -> list[Steps]:
    """first, 2 x first, 4 x first, ... each moved up to an evaluation step of the trials' schedule
    (so a rung adds no evaluation: a paused trial is the same trial), ending at max_steps."""
    schedule = eval_schedule(max_steps, resolution)
    rungs: list[Steps] = []
    want = max(1, first)
    while want < max_steps:
        step = next(s for s in schedule if s >= want)
        if not rungs or step > rungs[-1]:
            rungs.append(step)
        want = RUNG_FACTOR * step
    return rungs + [max_steps] if not rungs or rungs[-1] < max_steps else rungs


def lockstep(previous: Steps, rung: Steps, max_steps: Steps, resolution: float) -> list[Steps]:
    """The steps the racing trials advance to together between two rungs: evaluation steps (so no
    evaluation is added) about LOCKSTEP_FACTOR apart, ending at the rung. Trained one after another,
    in a race run in one process, each trial would otherwise run the whole rung before the next one
    starts -- past a crossing another trial makes early in the rung, which gives it up there (as a
    race run side by side would)."""
    points, last = [], previous
    for step in eval_schedule(max_steps, resolution):
        if previous < step < rung and step >= LOCKSTEP_FACTOR * last:
            points.append(step)
            last = step
    return points + [rung]


def check_points(rungs: list[Steps], resolution: float, prune_from: Steps = MIN_PILOT) -> list[tuple[Steps, float]]:
    """Where a new rate trained against a known curve (rung_trial) is compared with it, each with the factor
    on the margin there: the rungs (1), and the lockstep points between them from `prune_from` on
    (WITHIN_RUNG_MARGIN) -- a first rung longer than the best's whole run would compare nothing before the
    new rate gives up at the best's steps."""
    points, previous = [], 0
    for k in rungs:
        points += [(p, 1.0 if p == k else WITHIN_RUNG_MARGIN) for p in lockstep(previous, k, rungs[-1], resolution)
                   if p >= prune_from or p == k]
        previous = k
    return points


def extrapolate_steps(result: TrialResult, target: Target, max_steps: Steps) -> float | None:
    """Where the trial's learning curve points: the step at which its metric, fitted as a straight line
    in the log of the step over the second half of its evaluations, meets the target (capped at
    max_steps); None while it does not move towards it. The pilot's estimate of a size's steps -- an
    ETA, never a result."""
    rows = [r for r in result.curve if math.isfinite(r.get(target.metric, math.nan))]
    rows = rows[len(rows) // 2:]
    if len(rows) < 3:
        return None
    x = np.log([r["step"] for r in rows])
    y = np.array([r[target.metric] for r in rows])
    slope, intercept = np.polyfit(x, y, 1)
    towards = slope > 0 if target.direction == "above" else slope < 0
    if not towards:
        return None
    step = math.exp(min(50.0, (target.value - intercept) / slope))
    return float(min(max(step, rows[-1]["step"]), max_steps))


def within(factor: float) -> str:
    return f" x {factor:g} within a rung" if factor != 1.0 else ""


def pruned_result(result: TrialResult, why: str) -> TrialResult:
    return replace(result, outcome="pruned", reason=why)


def _at(result: TrialResult, step: Steps, target: Target) -> str:
    for row in result.curve:
        if row["step"] == step:
            return f"{target.metric} {row.get(target.metric, math.nan):.4g}"
    return f"{target.metric} unknown"


def rung_search(pool: TrialPool, rates: list[float], seed: int, target: Target, *, first_rung: Steps,
                max_steps: Steps, resolution: float, margin: float, widen_step: float, low_limit: float,
                high_limit: float, hint: float | None = None, early_stopping: bool = True, max_widen: float | None = None,
                resolved: float | None = None, prune_from: Steps = MIN_PILOT,
                on_rung: Callable[[Steps, list[Trial]], None] | None = None,
                out_of_budget: Callable[[list[Trial]], bool] | None = None) -> list[Trial]:
    """The coarse search (above) over `rates`; one Trial per rate tried, in the order started, each
    with its last result (`pruned` for a trial left behind at a rung). `hint`: the rate expected to be
    best (the first to train at each rung); `on_rung(step, trials)` after each rung (a progress line);
    `out_of_budget(trials)`: True once the search has spent its share of scaling.budget_seconds -- the
    race stops at that rung, its trials left `paused` with the reason. `resolved`: a ratio
    (scaling.lr_refine_ratio) within which the best's neighbours need no rate between them."""
    rungs = rung_steps(first_rung, max_steps, resolution)
    trials: dict[float, Trial] = {}
    alive: list[float] = []
    pruned: dict[float, tuple[Steps, str]] = {}  # rate -> (the rung it was left at, why)
    centre = hint or math.sqrt(min(rates) * max(rates))
    previous = rungs[0]
    budget_cut = False

    def best(but: float | None = None) -> Steps | None:
        """The fewest steps of a crossing that held (a crossing still in its hold may fall back)."""
        done = [t.result for lr, t in trials.items() if t.result.outcome == "reached" and lr != but]
        return best_steps(done) if early_stopping else None

    def train(lr: float, until: Steps) -> None:
        give_up = best(but=lr)
        result, replayed = pool.advance(lr, seed, until=until, give_up_after=give_up)
        t = trials[lr]
        t.result, t.give_up_after, t.resumed = result, give_up, t.resumed and replayed
        if result.outcome != "paused" and lr in alive:
            alive.remove(lr)
            if result.outcome != "reached":  # a reached trial may be held later (refine.hold_contenders)
                pool.release(lr, seed)

    def start(lr: float, phase: str, until: Steps) -> None:
        trials[lr] = Trial(lr, seed, phase, len(trials), None, TrialResult("paused", None, 0, 0, 0.0, {}), True)
        alive.append(lr)
        train(lr, until)

    def gap(lr: float, step: Steps) -> float:
        g = distance(trials[lr].result, step, target)
        return math.inf if g is None else g

    def leader(step: Steps) -> float | None:
        """The rate ahead: fewest steps among those that reached, else closest to the target at `step`."""
        reached = [(t.result.steps_to_target, lr) for lr, t in trials.items() if t.result.outcome == "reached"]
        if reached:
            return min(reached)[1]
        racing = [lr for lr in trials if lr not in pruned and distance(trials[lr].result, step, target) is not None]
        return min(racing, key=lambda lr: (gap(lr, step), abs(math.log(lr / centre)))) if racing else None

    def prune_behind(step: Steps, entered: list[float], factor: float = 1.0) -> None:
        """Successive halving at `step`: the better half of the rung's field (`entered`, less the trials that
        ended in it) races on whatever its distance -- an early leader is often a rate at the edge of
        stability that a slower start overtakes --, and of the other half only the trials not clearly
        behind the leader. Applied at the rung's end and at its lockstep points (from `prune_from` on): a
        first rung longer than the whole race (no prior: max_steps / 64) would otherwise prune nothing."""
        lead = leader(step)
        if lead is None or trials[lead].result.steps_to_target is not None:
            return
        lead_gap, scale = gap(lead, step), start_distance(trials[lead].result, target)
        field = [lr for lr in trials if lr in alive or lr in entered and lr in pruned]  # less those that ended
        racing = sorted(alive, key=lambda r: (gap(r, step), r))
        # the better half of the field is still racing (those left behind were the worse): of the rest,
        # the trials clearly behind -- so at most half the field is left behind in one rung
        for lr in racing[math.ceil(len(field) / 2):]:
            g = gap(lr, step)
            if clearly_behind(g, lead_gap, margin * factor, scale):
                alive.remove(lr)
                pruned[lr] = (step, f"pruned at step {step}: {_at(trials[lr].result, step, target)} was clearly behind "
                                    f"lr {lead:.4g}'s {_at(trials[lead].result, step, target)} at the same step (distance "
                                    f"to the target {g:.3g} against {lead_gap:.3g}, scaling.prune_margin "
                                    f"{margin:g}{within(factor)})")

    def towards_the_edge(step: Steps) -> float | None:
        """The rate between the leader and a neighbour that diverged (or was left behind moving away from
        the target): steps to target are often fewest just below the edge of stability, so a grid rate next
        to a diverged one may be far from its size's optimum (nqm at batch 4096: 0.75 next to 3.0 needs 108
        steps, 1.5 needs 53). Tried in the race, once, as soon as that is known, so the grid rate gives up at
        its steps instead of running its own to the end. None: no such neighbour, or already as fine as
        `resolved`."""
        lead = leader(step)
        if lead is None:
            return None
        tried = sorted(trials)
        i = tried.index(lead)
        for side in [tried[j] for j in (i - 1, i + 1) if 0 <= j < len(tried)]:
            if side in alive or not diverging(trials[side].result, target):
                continue
            if resolved is not None and max(lead, side) / min(lead, side) <= resolved:
                continue
            if (mid := math.sqrt(lead * side)) not in trials:
                return mid
        return None

    inserted = False  # the rate towards a diverged neighbour, tried once in the race
    i = 0
    while i < len(rungs):
        k = rungs[i]
        if not trials:  # the pilot: every candidate's first rung, the expected best first
            order = sorted(rates, key=lambda r: (abs(math.log(r / centre)), r))
            # together from a quarter of the rung on, or from `prune_from` if sooner: a size whose best rate
            # reaches in a few steps (a large batch) stops the others there, not at a quarter of a long pilot
            points = lockstep(min(k // 4, prune_from), k, max_steps, resolution)
            for lr in order:
                start(lr, "coarse", points[0])
            since, points = points[0], points[1:]
        else:
            order = sorted(alive, key=lambda r: (gap(r, previous), r))
            since, points = previous, lockstep(previous, k, max_steps, resolution)
        entered = list(alive)  # the rung's field: at most half of it is left behind in the rung
        for point in points:
            for lr in [r for r in order if r in alive]:
                train(lr, point)
            if point >= RUNG_FACTOR * max(since, prune_from) and point < k:
                # a rung longer than the race (the pilot without a prior): successive halving's own pace
                # within it -- a new field, of which half may be left behind, each time the steps double
                entered, since = list(alive), point
            if prune_from <= point < k and (lead := leader(point)) is not None and gap(lead, point) > 0:
                # clearly behind early in a long rung: left there, not at the rung's end -- but not against a
                # leader in an unheld crossing, which may fall back (the others give up at its steps once it holds)
                prune_behind(point, entered, WITHIN_RUNG_MARGIN)
            if not inserted and (mid := towards_the_edge(point)) is not None:
                start(mid, "refine", point)  # catches up to the race at once, then races on with it
                order.append(mid)
                inserted = True
        while (lead := leader(k)) is not None:  # a leader at an edge of what was tried: look beyond it
            tried = sorted(trials)
            # one step as wide as the last, squared (a prior's narrow bracket widens fast), up to max_widen
            inner = tried[1] if lead == tried[0] and len(tried) > 1 else tried[-2] if len(tried) > 1 else None
            ratio = widen_step if inner is None else max(widen_step, (max(inner, lead) / min(inner, lead)) ** 2)
            ratio = min(ratio, max_widen or ratio)
            out = lead / ratio if lead == tried[0] else lead * ratio if lead == tried[-1] else None
            if out is not None:  # no further than the limits: a best rate at a limit is a `boundary` result
                out = min(max(out, low_limit), high_limit)
            if (out is not None and inner is not None and trials[lead].result.outcome != "reached"
                    and not clearly_behind(gap(inner, k), gap(lead, k), margin, start_distance(trials[lead].result, target))):
                break  # an edge rate only a little ahead early on (short-horizon bias): widen once it is clearly ahead
            if out is None or out in trials or abs(math.log(out / lead)) < 1e-9:
                break
            start(out, "widen", k)
        prune_behind(k, entered)
        if on_rung:
            on_rung(k, sorted(trials.values(), key=lambda t: t.order))
        if alive and out_of_budget is not None and out_of_budget(list(trials.values())):
            for lr in alive:
                trials[lr].result = replace(trials[lr].result, reason=f"stopped by scaling.budget_seconds at step "
                                                                       f"{trials[lr].result.steps_run} (the search's share spent)")
            budget_cut = True
            break
        if not alive:
            if best() is not None or not pruned:
                break
            # every trial ahead failed (diverged, stalled, never reached): resume the best one left behind,
            # rung by rung from where it stopped -- also when the others failed only at the last rung
            lr = min(pruned, key=lambda r: (gap(r, pruned[r][0]), r))
            previous = trials[lr].result.steps_run
            del pruned[lr]
            alive.append(lr)
            i = bisect.bisect_right(rungs, previous)
            continue
        previous = k
        i += 1
    for lr, (_, why) in pruned.items():
        trials[lr].result = pruned_result(trials[lr].result, why)
        pool.release(lr, seed)
    if best() is not None and len(trials) > 1 and not budget_cut:
        # The race's best is a grid rate, up to half a grid step from the optimum: once, the rate between it
        # and its better neighbour (pruned against its curve, giving up at the best's steps) -- a coarse answer
        # within a quarter of the grid's ratio, which the predictions and B_crit's fit read.
        lead = leader(rungs[-1])
        tried = sorted(trials)
        i = tried.index(lead)
        sides = [tried[j] for j in (i - 1, i + 1) if 0 <= j < len(tried)]
        # the better neighbour: fewer steps where both reached, else closer to the target at the last step
        # both were evaluated at (distances at different steps do not compare)
        common = max((s for s in {r["step"] for r in trials[sides[0]].result.curve}
                      if all(distance(trials[x].result, s, target) is not None for x in sides)), default=None)
        other = min(sides, key=lambda r: (trials[r].result.steps_to_target or math.inf,
                                          (distance(trials[r].result, common, target) if common else None) or math.inf, r))
        if trials[lead].result.fell_back_at is not None and sides[0] < lead:
            other = sides[0]  # a leader that crossed and fell back is at the edge of stability: the optimum is below it
        # A neighbour that diverged says nothing of the rates just inside it -- steps to target are often
        # fewest just below the edge of stability -- so the rate towards it is tried as well.
        towards = [other] + [r for r in sides if r != other and diverging(trials[r].result, target)]
        for side in towards:
            if resolved is not None and max(lead, side) / min(lead, side) <= resolved:
                continue  # already as fine as refinement gets
            mid = math.sqrt(lead * side)
            if mid in trials:
                continue  # tried in the race already
            trials[mid] = Trial(mid, seed, "refine", len(trials), best(), trials[lead].result, True)
            result, replayed = rung_trial(pool, mid, seed, target, rungs=check_points(rungs, resolution, prune_from),
                                          give_up_after=best(),
                                          reference=trials[lead].result, reference_rate=lead, margin=margin)
            trials[mid].result, trials[mid].resumed = result, replayed
    if best() is None and not budget_cut:
        # No rate reached within max_steps. The grid is coarse (a factor ~3 between rates) and the best rate
        # may lie between the two that came closest: try there once, from the start, to the end.
        ranked = sorted((t for t in trials.values() if t.result.outcome != "diverged"),
                        key=lambda t: (_final_distance(t.result, target), t.learning_rate))
        tried = sorted(trials)
        if len(ranked) >= 2 and math.isfinite(_final_distance(ranked[0].result, target)):
            a, b = ranked[0].learning_rate, ranked[1].learning_rate
            if abs(tried.index(a) - tried.index(b)) == 1:
                start(math.sqrt(a * b), "refine", max_steps)
    return sorted(trials.values(), key=lambda t: t.order)


def _final_distance(result: TrialResult, target: Target) -> float:
    """How far short of the target a trial ended (inf: no finite evaluation)."""
    if not result.curve:
        return math.inf
    d = distance(result, result.curve[-1]["step"], target)
    return math.inf if d is None else d


def rung_trial(pool: TrialPool, learning_rate: float, seed: int, target: Target, *, rungs: list[tuple[Steps, float]],
               give_up_after: Steps | None, reference: TrialResult | None, reference_rate: float | None,
               margin: float, contender: Callable[[Steps], bool] | None = None) -> tuple[TrialResult, bool]:
    """One new rate (a refinement) trained rung by rung against the best trial so far (`reference`,
    whose curve is known): pruned at the first of `rungs` ((step, factor on `margin`): check_points) where it
    is clearly behind it, else trained to its
    end (reaching the target, or giving up at `give_up_after`). Returns (result, answered by the journal)."""
    replayed = True
    for k, factor in [(r, f) for r, f in rungs if give_up_after is None or r < give_up_after]:
        result, from_journal = pool.advance(learning_rate, seed, until=k, give_up_after=give_up_after,
                                            contender=contender)
        replayed = replayed and from_journal
        if result.outcome != "paused":
            if result.outcome != "reached":  # a reached trial may be held later (refine.hold_contenders)
                pool.release(learning_rate, seed)
            return result, replayed
        ref, g = distance(reference, k, target), distance(result, k, target)
        if ref is not None and g is not None and clearly_behind(g, ref, margin * factor, start_distance(reference, target)):
            pool.release(learning_rate, seed)
            return pruned_result(result, f"pruned at step {k}: {_at(result, k, target)} was clearly behind the best "
                                         f"rate{f' {reference_rate:.4g}' if reference_rate else ''}'s "
                                         f"{_at(reference, k, target)} at the same step (scaling.prune_margin "
                                         f"{margin:g}{within(factor)})"), replayed
    result, from_journal = pool.advance(learning_rate, seed, give_up_after=give_up_after, contender=contender)
    if result.outcome != "reached":
        pool.release(learning_rate, seed)
    return result, replayed and from_journal


def best_learning_rate(rows: list[tuple[float, str, int | None]]) -> float | None:
    """The best rate from (learning rate, phase, steps to target) rows of one batch size (phase
    'bounded' left out: a retried attempt): among the
    rates rerun with seeds (phase 'seed') if any -- of those, the ones that got the most seeds, i.e.
    survived the successive halving -- else all, the one with the best rank_key (median first)."""
    rows = [r for r in rows if r[1] != "bounded"]  # trials a bound stopped, tried again
    seeded = {lr for lr, phase, _ in rows if phase == "seed"}
    by_lr: dict[float, list[int | None]] = {}
    for lr, _, steps in rows:
        if lr in seeded or not seeded:
            by_lr.setdefault(lr, []).append(steps)
    most = max((len(v) for v in by_lr.values()), default=0)
    candidates = [lr for lr, steps in by_lr.items() if any(s is not None for s in steps) and len(steps) == most]
    if not candidates:
        return None
    return min(candidates, key=lambda lr: rank_key(by_lr[lr], lr))
