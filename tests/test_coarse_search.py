"""The coarse search (issue 26 parts 2 and 4): successive halving over learning rates on their learning
curves, a pilot rung that sizes the race, pruning with a margin, resuming what was pruned when the leaders
fail -- checked against workloads whose answer is known: a closed-form steps-to-target surface
(tests/curve_workload.py) and scripted learning curves."""
from __future__ import annotations

import math

import pytest
import torch

from stages.core.config import OptimizerSettings, ScalingSettings
from stages.search.coarse import (Target, clearly_behind, extrapolate_steps, grid_ratio, learning_rate_grid,
                                  rung_search, rung_steps)
from stages.search.pool import TrialPool
from stages.search.trial import LiveTrial, TrialResult, eval_schedule
from stages.search.tune import Prior, coarse, finish, make_pool, search_range
from tests.curve_workload import CurveWorkload
from tests.scripted_workload import ScriptedWorkload

CPU = torch.device("cpu")
PLAIN = OptimizerSettings(name="sgd", momentum=0.0)
TARGET = Target("accuracy", 0.95, "above")


def test_rungs_double_on_evaluation_steps_and_end_at_max_steps():
    rungs = rung_steps(16, 1000, 0.05)
    schedule = set(eval_schedule(1000, 0.05))
    assert rungs[0] == 16 and rungs[-1] == 1000 and set(rungs) <= schedule
    assert all(2 * a <= b for a, b in zip(rungs, rungs[1:-1]))  # each at least twice the last (snapped up)


def test_clearly_behind_is_relative_far_from_the_target_and_absolute_near_it():
    # far from the target: 50% more distance than the leader's is behind, 40% more is not
    assert clearly_behind(0.8, 0.5, 0.5, start=0.85) and not clearly_behind(0.7, 0.5, 0.5, start=0.85)
    # near it (the leader 0.005 short): judged against 0.2 x the starting distance, so small noise is no verdict
    assert not clearly_behind(0.02, 0.005, 0.5, start=0.85)
    assert clearly_behind(0.2, 0.005, 0.5, start=0.85)


def test_the_range_follows_the_optimizer_unless_set():
    s = ScalingSettings()
    sgd, adamw = search_range(s, "sgd"), search_range(s, "adamw")
    assert (sgd.low, sgd.high) == (1e-2, 2.0) and "sgd" in sgd.source
    assert (adamw.low, adamw.high) == (1e-4, 3e-2) and "adamw" in adamw.source
    mine = search_range(ScalingSettings(lr_min=1e-3, lr_max=1e-1), "adamw")
    assert (mine.low, mine.high, mine.source) == (1e-3, 1e-1, "scaling.lr_min and scaling.lr_max")
    half = search_range(ScalingSettings(lr_max=1e-3), "adamw")  # only lr_max set: the optimizer's low end below it
    assert half.low == 1e-4 and half.high == 1e-3 and "scaling.lr_max as set" in half.source


def curve_pool(workload: CurveWorkload, batch_size: int, max_steps: int = 4000, s: ScalingSettings | None = None):
    return make_pool(workload, PLAIN, batch_size, CPU, s or ScalingSettings(), 0, max_steps)


@pytest.mark.parametrize("batch_size", [16, 256, 1024])
def test_the_coarse_search_finds_the_best_grid_rate_and_prunes_only_losers(batch_size):
    """The closed form knows every rate's steps: the search's best is the grid's best (within the rung
    steps' resolution), and every pruned rate needs more steps than it -- a pruned trial is never the best."""
    w, s = CurveWorkload(s_min=20.0, b_crit=100.0), ScalingSettings()
    pool = curve_pool(w, batch_size, s=s)
    trials = coarse(pool, w, s, "sgd", 0, 4000)
    r = search_range(s, "sgd")
    truth = {lr: w.steps_to_target(batch_size, lr) for lr in learning_rate_grid(r.low, r.high, s.lr_points)}
    reached = [t for t in trials if t.result.outcome == "reached"]
    best = min(reached, key=lambda t: t.result.steps_to_target)
    assert best.result.steps_to_target <= min(truth.values()) * 1.06 + 1
    race = min((t for t in reached if t.phase != "refine"), key=lambda t: t.result.steps_to_target)
    for t in trials:
        if t.result.outcome == "pruned":
            assert w.steps_to_target(batch_size, t.learning_rate) > best.result.steps_to_target
            assert t.result.steps_run < race.result.steps_to_target  # stopped before the race's best crossed
    spent = sum(t.result.examples_run for t in trials)
    assert spent < 3.5 * len(truth) * min(truth.values()) * batch_size  # far from every rate to the end


def test_a_prior_costs_less_and_lands_within_a_grid_step_of_the_optimum():
    """A prior (a neighbour's rate, 20% off, and its steps) centres three rates on it instead of racing the
    whole grid: cheaper, and its best is within a grid step of the optimum, as the grid's is."""
    w, s, b = CurveWorkload(s_min=20.0, b_crit=100.0), ScalingSettings(), 256
    optimum = w.lr0 * math.sqrt(b / 16)
    blind = coarse(curve_pool(w, b, s=s), w, s, "sgd", 0, 4000)
    prior = Prior(optimum * 1.2, w.steps_to_target(b, optimum) * 1.3, "a neighbour")
    guided = coarse(curve_pool(w, b, s=s), w, s, "sgd", 0, 4000, prior=prior)
    step = grid_ratio(*map(float, (search_range(s, "sgd").low, search_range(s, "sgd").high)), s.lr_points)
    for trials in (blind, guided):
        best = min((t for t in trials if t.result.outcome == "reached"), key=lambda t: t.result.steps_to_target)
        assert 1 / step < best.learning_rate / optimum < step
        assert best.result.steps_to_target <= w.steps_to_target(b, best.learning_rate) * 1.06 + 1
    assert len(guided) < len(blind)
    assert sum(t.result.examples_run for t in guided) < sum(t.result.examples_run for t in blind)


@pytest.mark.parametrize("batch_size, off", [(64, 1.0), (256, 1.1), (1024, 0.9)])
def test_a_rerun_from_a_finely_resolved_answer_starts_no_finer_than_the_refinement_stops(batch_size, off):
    """A rerun's prior is the previous study's answer with the bracket its refinement reached -- a few
    percent, where every rate ties on steps. Started that narrow, the search could only widen, trial by
    trial (6 trials on this bowl); started at scaling.lr_refine_ratio either side it is resolved by its
    three coarse rates: no widening, no rate between, and its best within lr_refine_ratio of the optimum."""
    w, s = CurveWorkload(s_min=20.0, b_crit=100.0), ScalingSettings()
    optimum = w.lr0 * math.sqrt(batch_size / 16)
    prior = Prior(optimum * off, w.steps_to_target(batch_size, optimum), "the previous study", spacing=1.03)
    pool = curve_pool(w, batch_size, s=s)
    trials = finish(coarse(pool, w, s, "sgd", 0, 4000, prior=prior), pool, w, s, "sgd", 0, 4000, seeds=False)
    assert sorted(t.learning_rate for t in trials) == pytest.approx(
        [optimum * off / s.lr_refine_ratio, optimum * off, optimum * off * s.lr_refine_ratio])
    best = min((t for t in trials if t.result.outcome == "reached"), key=lambda t: t.result.steps_to_target)
    assert 1 / s.lr_refine_ratio < best.learning_rate / optimum < s.lr_refine_ratio
    assert best.result.steps_to_target <= w.steps_to_target(batch_size, optimum) * 1.06 + 1
    assert sum(t.result.examples_run for t in trials) < 3.6 * w.steps_to_target(batch_size, optimum) * batch_size


def test_a_rate_pruned_at_a_rung_is_resumed_where_it_stopped_when_the_leaders_fail():
    """The fast starters reach half-way and then diverge; the slow one, pruned at an early rung, is
    resumed from where it stopped (never restarted) and is the answer."""
    def script(step, lr):
        if lr > 0.05:  # fast, then blows up
            return 0.8 if step < 60 else float("nan")
        return min(0.96, 0.1 + step / 200)  # slow and steady: at the target at step 170

    w = ScriptedWorkload(script)
    pool = TrialPool(lambda lr, seed: LiveTrial(w, PLAIN, lr, 1, seed, CPU, 1000, hold_factor=1.25))
    trials = rung_search(pool, [0.01, 0.1, 0.3], 0, TARGET, first_rung=16, max_steps=1000, resolution=0.05,
                         margin=0.5, widen_step=3.0, low_limit=0.01, high_limit=0.3)
    outcome = {t.learning_rate: t.result for t in trials}
    assert outcome[0.1].outcome == outcome[0.3].outcome == "diverged"
    slow = outcome[0.01]
    assert slow.outcome == "reached" and 165 <= slow.steps_to_target <= 180
    steps = [r["step"] for r in slow.curve]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # one continuous run: resumed, not restarted
    assert slow.steps_run < 1.3 * slow.steps_to_target + 10


def test_a_rate_pruned_early_is_resumed_even_when_the_leaders_fail_only_at_max_steps():
    """The fast starters keep crossing the target and falling back (the edge of stability) until max_steps,
    so they fail only at the last rung; the slow one, pruned at an early rung, still goes on from where it
    stopped, rung by rung, to its crossing -- not left paused at the step it was pruned."""
    def script(step, lr):
        if lr > 0.05:  # fast, then on the target's edge: up and down every few steps, never held
            return 0.8 if step < 40 else (0.96 if (step // 7) % 2 else 0.9)
        return min(0.96, 0.1 + step / 200)  # slow and steady: at the target at step 170

    w = ScriptedWorkload(script)
    pool = TrialPool(lambda lr, seed: LiveTrial(w, PLAIN, lr, 1, seed, CPU, 400, hold_factor=1.25,
                                                plateau_tolerance=0.0))
    trials = rung_search(pool, [0.01, 0.1, 0.3], 0, TARGET, first_rung=16, max_steps=400, resolution=0.05,
                         margin=0.5, widen_step=3.0, low_limit=0.01, high_limit=0.3)
    outcome = {t.learning_rate: t.result for t in trials}
    assert outcome[0.1].outcome == outcome[0.3].outcome == "not_reached"
    assert all(outcome[r].steps_run == 400 and "no step was left to check that it holds" in outcome[r].reason
               for r in (0.1, 0.3))
    slow = outcome[0.01]
    assert slow.outcome == "reached" and 165 <= slow.steps_to_target <= 180
    steps = [r["step"] for r in slow.curve]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # one continuous run: resumed, not restarted


def test_a_crossing_early_in_a_rung_stops_the_trial_ahead_of_it_there_not_at_the_rung_end():
    """lr 0.1 leads at every rung and crosses first, but falls back (the edge of stability) and crosses
    again only at step 110; lr 0.03 crosses at step 70 and holds. The trials race in one process, lr 0.1
    trained first at each rung: it must give up just past step 70 (as in a race run side by side), not
    run on to the rung's end, recross and hold there."""
    def script(step, lr):
        if lr > 0.05:
            if step < 60:
                return 0.1 + 0.85 * step / 60
            return 0.96 if step < 64 or step >= 110 else 0.94
        return 0.1 + 0.85 * step / 70 if step < 70 else 0.96

    w = ScriptedWorkload(script)
    pool = TrialPool(lambda lr, seed: LiveTrial(w, PLAIN, lr, 1, seed, CPU, 1000, hold_factor=1.25))
    trials = rung_search(pool, [0.03, 0.1], 0, TARGET, first_rung=16, max_steps=1000, resolution=0.05,
                         margin=0.5, widen_step=3.0, low_limit=0.03, high_limit=0.1)
    outcome = {t.learning_rate: t.result for t in trials}
    assert outcome[0.03].outcome == "reached" and 70 <= outcome[0.03].steps_to_target <= 74
    assert outcome[0.1].outcome == "stopped_early", outcome[0.1]
    assert outcome[0.1].steps_run <= 70 * 1.1 * 1.06 + 1  # one lockstep past the crossing, on the schedule


@pytest.mark.parametrize("low_rate_reaches, widened", [("overtaking", False), ("slowly", True)])
def test_a_rate_at_the_edge_widens_the_search_only_once_it_is_clearly_ahead(low_rate_reaches, widened):
    """Short-horizon bias: the larger rate, lr 0.1 at the top of what was tried, starts faster but reaches
    the target only at step 100, while lr 0.03 overtakes it and reaches at step 70. While lr 0.1 leads by
    less than scaling.prune_margin, nothing beyond it is tried: a rate there would race and lose (digits'
    reference spent 10% of its examples on such widened trials). Where lr 0.03 is slow (it would reach at step 300), lr 0.1
    is clearly ahead by step 64 and the search looks beyond it from there."""
    def script(step, lr):
        if lr > 0.15:  # beyond the edge: slower still
            return min(0.96, 0.1 + 0.85 * step / 200)
        if lr > 0.05:
            return min(0.96, 0.1 + 0.85 * step / 100)
        if low_rate_reaches == "slowly":
            return min(0.96, 0.1 + 0.85 * step / 300)
        return min(0.96, 0.1 + 0.85 * (step / 70) ** 2)

    w = ScriptedWorkload(script)
    pool = TrialPool(lambda lr, seed: LiveTrial(w, PLAIN, lr, 1, seed, CPU, 1000, hold_factor=1.25))
    trials = rung_search(pool, [0.03, 0.1], 0, TARGET, first_rung=16, max_steps=1000, resolution=0.05,
                         margin=0.5, widen_step=3.0, low_limit=0.03, high_limit=0.3)
    seen = [(t.learning_rate, t.phase, t.result.outcome, t.result.steps_to_target) for t in trials]
    best = min((t for t in trials if t.result.outcome == "reached"), key=lambda t: t.result.steps_to_target)
    assert best.learning_rate == (0.03 if low_rate_reaches == "overtaking" else 0.1), seen
    assert any(t.phase == "widen" for t in trials) == widened, seen
    if widened:  # looked beyond it, and the rate there lost
        assert next(t for t in trials if t.phase == "widen").result.outcome != "reached", seen

def test_a_best_rate_next_to_one_that_diverged_also_tries_the_rate_towards_it():
    """Steps to target are fewest at lr 1.5, just below the edge of stability (2.0). Of the grid 0.2, 0.75,
    3.0 the largest diverges and 0.75 leads: the rate between 0.75 and 0.2 is the better-neighbour guess,
    but a diverged neighbour says nothing about the rates just inside it -- the rate towards it (1.5) is
    tried too, in the race as soon as 3.0 diverged, and is the coarse answer."""
    def script(step, lr):
        if lr > 2.0:
            return float("nan") if step > 3 else 0.2
        needed = 40 * (1 + 4 * math.log(lr / 1.5) ** 2)
        return 0.96 if step >= needed else 0.1 + 0.8 * step / needed

    w = ScriptedWorkload(script)
    pool = TrialPool(lambda lr, seed: LiveTrial(w, PLAIN, lr, 1, seed, CPU, 2000, hold_factor=1.25))
    trials = rung_search(pool, [0.2, 0.75, 3.0], 0, TARGET, first_rung=16, max_steps=2000, resolution=0.05,
                         margin=0.5, widen_step=3.9, low_limit=0.2, high_limit=3.0, resolved=1.3)
    best = min((t for t in trials if t.result.outcome == "reached"), key=lambda t: t.result.steps_to_target)
    seen = [(t.learning_rate, t.phase, t.result.outcome, t.result.steps_to_target, t.result.steps_run) for t in trials]
    assert 1.0 < best.learning_rate < 2.0 and best.result.steps_to_target <= 45, seen
    # tried in the race as soon as 3.0 diverged: 0.75 (117 steps to the target) is left behind by the new rate
    # instead of running to its own crossing and hold (146 steps) first
    assert best.phase == "refine" and best.order == 3, seen
    grid = next(t for t in trials if t.learning_rate == 0.75)
    assert grid.result.outcome in ("stopped_early", "pruned") and grid.result.steps_run <= 60, seen


@pytest.mark.parametrize("prune_from", [8, 10**9])
def test_a_first_rung_longer_than_the_race_leaves_hopeless_rates_behind_within_it(prune_from):
    """No prior: the pilot rung is max_steps / 64 = 200 steps, the best rate (0.3) reaches at step 100. The
    rates far below it barely move: within the rung, from `prune_from` on, each is left behind (`pruned`,
    resumable) as soon as it is clearly behind by twice the margin -- not trained on to the best's steps,
    where nothing would have pruned it (nqm at batch 4096 spent 40% of its study's examples there) --, and
    successive halving keeps its pace within the rung: each time the steps double, half of the field still
    racing may be left behind. The rate just below the best (0.1, reaching at 140) stays in the better
    half: it races on and gives up at the best's steps. With within-rung pruning off (prune_from past the
    race), every rate runs to there."""
    needed = {0.001: 30_000, 0.003: 10_000, 0.01: 3_000, 0.03: 1_000, 0.1: 140, 0.3: 100}

    def script(step, lr):
        nearest = min(needed, key=lambda r: abs(math.log(r / lr)))  # the trial's rate is a float32
        return min(0.96, 0.1 + 0.85 * step / needed[nearest])

    w = ScriptedWorkload(script)
    pool = TrialPool(lambda lr, seed: LiveTrial(w, PLAIN, lr, 1, seed, CPU, 12_800, hold_factor=1.25))
    trials = rung_search(pool, sorted(needed), 0, TARGET, first_rung=200, max_steps=12_800, resolution=0.05,
                         margin=0.5, widen_step=3.0, low_limit=0.001, high_limit=0.3, prune_from=prune_from)
    outcome = {t.learning_rate: t.result for t in trials if t.phase == "coarse"}
    assert outcome[0.3].outcome == "reached" and 100 <= outcome[0.3].steps_to_target <= 105
    assert outcome[0.1].outcome == "stopped_early"
    slow = [outcome[lr] for lr in (0.001, 0.003, 0.01)]
    if prune_from == 8:
        assert all(r.outcome == "pruned" and r.steps_run <= 70 and "within a rung" in r.reason for r in slow), slow
        # 0.03 was in the better half of the first field; once the steps doubled, in the worse half of the next
        assert outcome[0.03].outcome == "pruned" and outcome[0.03].steps_run < 100, outcome[0.03]
    else:
        assert all(r.outcome == "stopped_early" and r.steps_run >= 100 for r in slow + [outcome[0.03]]), slow


def test_nothing_reached_tries_between_the_two_closest_rates_once():
    """A grid that straddles a narrow optimum: no grid rate reaches in max_steps, the rate between the two
    that came closest does."""
    def script(step, lr):
        closeness = math.exp(-abs(math.log(lr / 0.055)) * 3)  # 1 at lr 0.055
        return min(0.96, 0.1 + closeness * step / 300)

    w = ScriptedWorkload(script)
    pool = TrialPool(lambda lr, seed: LiveTrial(w, PLAIN, lr, 1, seed, CPU, 400, hold_factor=1.25))
    trials = rung_search(pool, [0.01, 0.03, 0.1, 0.3], 0, TARGET, first_rung=16, max_steps=400, resolution=0.05,
                         margin=0.5, widen_step=3.0, low_limit=0.01, high_limit=0.3)
    last = trials[-1]
    assert last.phase == "refine" and last.learning_rate == pytest.approx(math.sqrt(0.03 * 0.1))
    assert last.result.outcome == "reached"
    assert all(t.result.outcome != "reached" for t in trials[:-1])


def test_the_pilot_extrapolates_the_steps_a_curve_points_to():
    curve = [{"step": s, "accuracy": 0.1 + 0.2 * math.log(s)} for s in range(1, 17)]
    result = TrialResult("paused", None, 16, 16, 0.0, {"accuracy": curve[-1]["accuracy"]}, curve)
    expected = math.exp((0.95 - 0.1) / 0.2)  # the straight line in log(step) meets the target there
    assert extrapolate_steps(result, TARGET, 10_000) == pytest.approx(expected, rel=0.01)
    flat = TrialResult("paused", None, 16, 16, 0.0, {}, [{"step": s, "accuracy": 0.3} for s in range(1, 17)])
    assert extrapolate_steps(flat, TARGET, 10_000) is None


def test_the_search_is_replayed_from_its_journal_with_no_training(tmp_path):
    from stages.search.journal import Journal

    w, s, b = CurveWorkload(s_min=20.0, b_crit=100.0), ScalingSettings(), 64
    first_pool = make_pool(w, PLAIN, b, CPU, s, 0, 4000, journal=Journal.open(tmp_path / "j.jsonl"))
    first = coarse(first_pool, w, s, "sgd", 0, 4000)
    again_pool = make_pool(w, PLAIN, b, CPU, s, 0, 4000, journal=Journal.open(tmp_path / "j.jsonl"))
    again = coarse(again_pool, w, s, "sgd", 0, 4000)
    assert again_pool.trained_steps == 0 and first_pool.trained_steps > 0
    assert [(t.learning_rate, t.result.outcome, t.result.steps_to_target) for t in again] == \
           [(t.learning_rate, t.result.outcome, t.result.steps_to_target) for t in first]
    assert all(t.resumed for t in again)
    assert grid_ratio(0.01, 2.0, 6) == pytest.approx((2.0 / 0.01) ** 0.2)
