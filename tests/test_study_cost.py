"""A study that costs what it must (issue 20): every trial has a give-up point from its first step, a
trial that makes no progress stops, only contenders hold the target past their crossing -- with the
best rate, and the chosen rate's guarantee, unchanged."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from stages.core.config import OptimizerSettings
from stages.search.coarse import Bound, Trial, best_learning_rate, learning_rate_grid, search
from stages.search.refine import successive_halving
from stages.search.trial import TrialResult, train_to_target
from stages.scaling import trials as scaling_trials
from stages.scaling.tables import TRIAL_COLUMNS, curve_rows, trial_row
from stages.select.decide import Target
from stages.select.rates import choose_rates
from stages.workloads.base import make_workload
from tests.scripted_workload import ScriptedWorkload

CPU = torch.device("cpu")
SGD = OptimizerSettings(name="sgd", momentum=0.0)


def rows(trials):
    return [(t.learning_rate, t.phase, t.result.steps_to_target) for t in trials]


def bowl_run(optimum, depth=1000, calls=None):
    """Steps to target with one minimum at `optimum` (quadratic in log lr), with the real give-up rule."""
    def run(lr, seed, give_up, contender=None):
        steps = int(round(depth * (1 + 4.0 * math.log(lr / optimum) ** 2)))
        if calls is not None:
            calls.append((lr, give_up))
        if give_up is not None and steps > give_up:
            return TrialResult("stopped_early", None, give_up, give_up, 0.0, {"loss": 1.0}, reason="cannot beat")
        return TrialResult("reached", steps, steps, steps, 0.0, {"loss": 0.0})
    return run


# ---------------------------------------------------------------------------- the first trial's bound

def _ctx(batch_sizes, max_steps=3000, margin=1.5):
    scaling = SimpleNamespace(batch_sizes=batch_sizes, max_steps=max_steps, give_up_margin=margin)
    return SimpleNamespace(params=SimpleNamespace(scaling=scaling, runtime=SimpleNamespace(seed=0)))


def test_first_trial_bound_from_a_smaller_size_and_from_a_larger_ones_perfect_scaling(monkeypatch):
    journalled = {}
    monkeypatch.setattr(scaling_trials, "_journalled_steps", lambda ctx, b: journalled.get(b))
    ctx = _ctx([16, 32, 64, 128])
    look = scaling_trials.first_trial_bound(ctx, 64)  # nothing known: a first look at max_steps / 32
    assert look.steps == 94 and "first look" in look.why
    journalled[32] = [100, 110]  # a smaller size: its slowest seed at its best rate x the margin
    bound = scaling_trials.first_trial_bound(ctx, 64)
    assert bound.steps == 165 and "bs 32" in bound.why and "never rise" in bound.why
    journalled[128] = [20, 18]   # a larger size: x 128/64 (perfect scaling) x the margin = 60, tighter
    bound = scaling_trials.first_trial_bound(ctx, 64)
    assert bound.steps == 60 and "bs 128" in bound.why and "perfect scaling" in bound.why
    journalled.clear()
    journalled[16] = [2500]      # a bound at or beyond max_steps is no bound (and no first look: it would only add waves)
    assert scaling_trials.first_trial_bound(ctx, 64) is None


def test_first_trials_give_up_at_the_bound_and_a_wrong_bound_costs_trials_not_the_result():
    grid = learning_rate_grid(0.01, 2.0, 6)
    reference = search(grid, bowl_run(0.9), seed=0, unimodal=True)
    calls: list = []
    bounded = search(grid, bowl_run(0.9, calls=calls), seed=0, unimodal=True, bound=Bound(1500, "bs 32: 1000 x 1.5"))
    assert calls[0][1] == 1500  # the first trial (the centre, far from the optimum) has a give-up point
    first = bounded[0].result
    assert first.outcome == "stopped_early" and first.steps_run == 1500 and "bs 32" in first.reason
    assert best_learning_rate(rows(bounded)) == best_learning_rate(rows(reference))
    assert sum(t.result.examples_run for t in bounded) < sum(t.result.examples_run for t in reference)
    # a bound below what any rate needs: every rate stops at it, then they run again without it
    tight = search(grid, bowl_run(0.9), seed=0, unimodal=True, bound=Bound(500, "too tight"))
    assert best_learning_rate(rows(tight)) == best_learning_rate(rows(reference))
    assert min(t.result.steps_to_target or math.inf for t in tight) == min(
        t.result.steps_to_target or math.inf for t in reference)


def test_a_bound_that_stops_every_grid_rate_tries_between_the_two_closest_before_it_is_lifted():
    """The bound is about the best rate; a grid a factor ~3 apart can straddle it with both neighbours
    beyond the bound: the rate between the two that came closest is tried within it, not the grid again."""
    grid = learning_rate_grid(0.01, 2.0, 6)
    optimum = math.sqrt(grid[2] * grid[3])  # halfway (in log) between 0.083 and 0.24: both need ~2100 steps

    def run(lr, seed, give_up, contender=None):
        steps = int(round(1000 * (1 + 4.0 * math.log(lr / optimum) ** 2)))
        if give_up is not None and steps > give_up:  # how far it got: the closer rates end nearer the target
            return TrialResult("stopped_early", None, give_up, give_up, 0.0, {"loss": steps / 1000}, reason="bound")
        return TrialResult("reached", steps, steps, steps, 0.0, {"loss": 0.0})

    score = lambda r: r.final_metrics["loss"]  # noqa: E731
    trials = search(grid, run, seed=0, unimodal=True, score=score, bound=Bound(1500, "bs 32: 1000 x 1.5"))
    assert all(t.result.outcome == "stopped_early" for t in trials[:-1]) and not any(t.phase == "bounded" for t in trials)
    last = trials[-1]
    assert last.phase == "refine" and last.learning_rate == pytest.approx(optimum) and last.result.steps_to_target == 1000
    assert last.give_up_after == 1500


def test_with_nothing_known_the_first_trials_take_a_first_look_deepened_until_a_rate_reaches():
    """No neighbour: the first trials give up at max_steps / 32, raised x4 while no rate reaches -- a
    first rate far from the best no longer runs to max_steps -- and the result is the unbounded search's."""
    from stages.search.coarse import first_look

    grid = learning_rate_grid(0.01, 2.0, 6)
    reference = search(grid, bowl_run(0.9), seed=0, unimodal=True)
    calls: list = []
    looked = search(grid, bowl_run(0.9, calls=calls), seed=0, unimodal=True, bound=first_look(32000), max_steps=32000)
    assert calls[0][1] == 1000  # 32000 / 32: the optimum needs 1000 steps, the grid rates more
    assert 4000 in [give_up for _, give_up in calls]  # nothing reached within 1000: x4
    assert any(t.phase == "bounded" for t in looked)
    assert best_learning_rate(rows(looked)) == best_learning_rate(rows(reference))
    assert min(t.result.steps_to_target or math.inf for t in looked) == min(
        t.result.steps_to_target or math.inf for t in reference)
    # the costliest trial is bounded by the deepened look, not max_steps
    far = search(grid, bowl_run(0.011, depth=100), seed=0, unimodal=True, bound=first_look(32000), max_steps=32000,
                 hint=2.0)  # starts at the far end: a rate needing ~10^4 steps
    assert max(t.result.steps_run for t in far) <= 1000


# ---------------------------------------------------------------------------- the no-progress stop

def test_a_trial_that_keeps_crossing_and_falling_back_stops_with_its_reason():
    # below the target to step 20, then 3 steps above it in every 10: crosses, falls back, never holds
    script = lambda s: 0.96 if s >= 20 and s % 10 < 3 else 0.5  # noqa: E731
    r = train_to_target(ScriptedWorkload(script), SGD, 0.1, 1, 0, CPU, 2000, hold_factor=2.0,
                        plateau_tolerance=0.01, resolution=0.0)
    assert r.outcome == "plateaued" and r.steps_run == 128
    assert "no progress" in r.reason and "oscillating" in r.reason and r.fell_back_at is not None
    off = train_to_target(ScriptedWorkload(script), SGD, 0.1, 1, 0, CPU, 506, hold_factor=2.0, resolution=0.0)
    assert off.outcome == "not_reached" and off.steps_run == 506  # without the stop: to max_steps


def test_no_progress_stop_on_the_quadratic_oscillating_at_the_edge_of_stability():
    # lr 2 x the largest curvature 1 = 2: that direction neither shrinks nor grows, and its noise
    # makes the loss wander above and below the target (the batch-4096 trial, smaller)
    torch.set_num_threads(1)
    nqm = make_workload("nqm", {"dim": 20, "target": 0.05})
    r = train_to_target(nqm, SGD, 2.0, 1024, 1, CPU, 3000, hold_factor=2.0, plateau_tolerance=0.01)
    assert r.outcome == "plateaued" and r.steps_run < 2000 and "oscillating" in r.reason
    good = train_to_target(nqm, SGD, 1.0, 1024, 1, CPU, 3000, hold_factor=2.0, plateau_tolerance=0.01)
    assert good.outcome == "reached"  # a rate that converges is untouched


# ---------------------------------------------------------------------------- hold checks for contenders only

STEPS = {(0.1, 0): 120, (0.1, 1): 125, (0.1, 2): 118,    # the leader
         (0.2, 0): 130, (0.2, 1): 160, (0.2, 2): 170,    # behind it on every seed, and a larger rate
         (0.05, 0): 200}


def scripted_run(honour_contender: bool):
    """A real trial loop on a workload that crosses the target at STEPS[(lr, seed)] and stays there."""
    def run(lr, seed, give_up, contender=None):
        at = STEPS[(lr, seed)]
        workload = ScriptedWorkload(lambda s: 0.96 if s >= at else 0.5)
        return train_to_target(workload, SGD, lr, 1, seed, CPU, 1000, give_up_after=give_up, resolution=0.0,
                               hold_factor=2.0, contender=contender if honour_contender else None)
    return run


def _study(honour_contender: bool):
    run = scripted_run(honour_contender)
    searched = [Trial(lr, 0, "coarse", i, None, run(lr, 0, None), False) for i, lr in enumerate([0.05, 0.1, 0.2])]
    return searched + successive_halving(searched, run, [1, 2], top=2)


def test_only_rates_that_can_be_chosen_hold_the_target_and_the_choice_and_guarantee_stay():
    before, after = _study(False), _study(True)
    assert best_learning_rate(rows(after)) == best_learning_rate(rows(before)) == 0.1
    behind = [t for t in after if t.phase == "seed" and t.learning_rate == 0.2]
    assert behind and all(t.result.steps_run == t.result.steps_to_target for t in behind)  # stopped at its crossing
    assert "not held" in behind[0].result.reason
    leader = [t for t in after if t.learning_rate == 0.1]
    assert all(t.result.steps_run == 2 * t.result.steps_to_target for t in leader)  # every seed held
    assert sum(t.result.examples_run for t in after) < sum(t.result.examples_run for t in before)

    def choice(trials):
        table = pd.DataFrame([trial_row(1, t, 1000, "accuracy", t.learning_rate) for t in trials], columns=TRIAL_COLUMNS)
        curves = pd.DataFrame([r for t in trials for r in curve_rows(1, t)])
        chosen = choose_rates(table, curves, Target("accuracy", 0.95, "above", 0.1, True), 1.2)
        return chosen[["learning_rate", "steps_to_target", "step_budget", "holds"]].to_dict("records")

    assert choice(after) == choice(before) and choice(after)[0]["holds"]


# ---------------------------------------------------------------------------- the bill before the study

def held_sgd_run(optimum, depth, hold_factor):
    """Steps to target as SGD's: inversely proportional to the rate below the optimum, rising fast above
    it; reaching trials hold the target to steps x hold_factor, as real trials do."""
    def run(lr, seed, give_up, contender=None):
        ratio = optimum / lr
        steps = int(round(depth * (ratio if ratio >= 1 else 1 + 4.0 * math.log(ratio) ** 2)))
        if give_up is not None and steps > give_up:
            return TrialResult("stopped_early", None, give_up, give_up, 0.0, {"loss": 1.0})
        held = math.ceil(steps * hold_factor)
        return TrialResult("reached", steps, held, held, 0.0, {"loss": 0.0})
    return run


@pytest.mark.parametrize("optimum", [0.03, 0.3, 1.5])
def test_the_plans_estimate_is_within_a_factor_2_of_what_the_search_spends(optimum):
    from stages.core.config import ScalingSettings
    from stages.search.refine import resolve
    from stages.scaling.plan import plan_table, search_steps

    s = ScalingSettings()
    run = held_sgd_run(optimum, 400, s.hold_factor)
    grid = learning_rate_grid(s.lr_min, s.lr_max, s.lr_points)
    # the first rate predicted from the neighbouring sizes (lr_start: neighbour), 40% off
    coarse = search(grid, run, 0, hint=optimum * 1.4, unimodal=True, resolution=s.eval_resolution)
    refined = resolve(coarse, run, 0, ratio=s.lr_refine_ratio, max_trials=s.lr_refine_trials,
                      resolution=s.eval_resolution, low_limit=s.lr_min / s.lr_widen_factor,
                      high_limit=s.lr_max * s.lr_widen_factor, widen_step=grid[1] / grid[0])
    trials = coarse + refined
    trials += successive_halving(trials, run, [1, 2], s.rerun_top)
    spent = sum(t.result.steps_run for t in trials)
    best = min(t.result.steps_to_target for t in trials if t.result.steps_to_target)
    assert 0.5 <= search_steps(best, s) / spent <= 2.0
    # the table: a size predicted from its measured neighbours, its seconds from the time per step
    table = plan_table([16, 32, 64], {16: 800.0, 64: 200.0}, {32: 0.01}, s)
    row = table.set_index("batch_size").loc[32]
    assert row["steps_to_target"] == 400 and "between bs 16 and 64" in row["from"]
    assert row["seconds"] == pytest.approx(search_steps(400, s) * 0.01)


# ---------------------------------------------------------------------------- the bill during the study

def test_each_trial_line_carries_an_eta_from_the_plan_and_the_jobs_own_pace():
    from stages.core.config import ScalingSettings
    from stages.scaling.plan import SearchProgress, plan_line, plan_table, search_steps

    s = ScalingSettings()
    now, lines = [0.0], []
    progress = SearchProgress("bs 64", 400.0, s, time_per_step_s=0.01, clock=lambda: now[0],
                              say=lambda stage, text: lines.append(text))

    def finished(lr, steps_run, steps_to_target=None, seconds=0.0, resumed=False, phase="coarse"):
        now[0] += seconds
        result = TrialResult("reached" if steps_to_target else "stopped_early", steps_to_target, steps_run,
                             64 * steps_run, seconds, {"loss": 0.0})
        progress(Trial(lr, 0, phase, 0, None, result, resumed))

    # a replayed trial costs nothing: the ETA is the plan's steps left at throughput's time per step
    finished(0.1, 100, resumed=True)
    assert lines[-1].startswith("bs 64 trial 1/") and "-- coarse lr 0.1 seed 0" in lines[-1]
    assert f"about {round((search_steps(400, s) - 100) * 0.01)} s left" in lines[-1]
    # a trained trial reached in 50 steps: the plan shrinks to this size's best so far, at the job's pace
    finished(0.2, 100, steps_to_target=50, seconds=2.0)
    left = (search_steps(50, s) - 200) * 2.0 / 100
    assert left > 2.0 and f"about {left:.0f} s left" in lines[-1], lines[-1]
    # spent past the estimate: at least one more trial's time, never "done" while the search runs
    finished(0.3, 10_000, seconds=4.0)
    assert "about 3 s left" in lines[-1] and "done" not in lines[-1]
    progress.finish("3 trials")
    assert lines[-1] == "bs 64 trial 3/3, finished in 6 s -- 1 from the journal, 3 trials"
    # the line a job starts with: its size's row of the plan
    row = plan_table([64], {32: 800.0}, {64: 0.01}, s).iloc[0]
    text = plan_line(row)
    assert text.startswith(f"about {row['trials']} trials, {row['steps']} steps, {row['examples']} examples, about ")
    assert "(steps to target 800: no fewer than bs 32's)" in text


def test_the_study_cost_in_training_runs_of_the_chosen_configuration():
    from stages.core import outputs as out
    from stages.select.decide import Study
    from stages.select.stage import study_cost

    config = {"batch_size": 256, "train_steps": 120, "expected_training_time_s": 0.03}
    cost = study_cost(Study(1000, 0.01, 2.0, examples_run=3_686_400, seconds=6.0), config)
    assert cost == {"study_training_runs": pytest.approx(120.0), "study_time_training_runs": pytest.approx(200.0)}
    assert study_cost(Study(1000, 0.01, 2.0), config) == {"study_training_runs": None, "study_time_training_runs": None}
    # the examples are compared in review (metrics.json), the seconds are a timing (diagnostics.json)
    assert "examples_run" in out.SCALING_METRICS.fields and "seconds" in out.SCALING_DIAGNOSTICS.timings
    assert "study_training_runs" in out.SELECT_METRICS.fields
    assert "study_time_training_runs" in out.SELECT_DIAGNOSTICS.timings
