"""A study that costs what it must (issues 20 and 26): a trial that makes no progress stops, only the
rates select may choose hold the target -- through exactly their step budget -- with the best rate, and
the chosen rate's guarantee, unchanged; the study's bill before it runs, and its cost in training runs."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from stages.core.config import OptimizerSettings
from stages.search.coarse import Trial, best_learning_rate
from stages.search.pool import TrialPool
from stages.search.refine import hold_to_budget, successive_halving
from stages.search.trial import LiveTrial, train_to_target
from stages.scaling.tables import TRIAL_COLUMNS, curve_rows, trial_row
from stages.select.decide import Target
from stages.select.rates import choose_rates
from stages.workloads.base import make_workload
from tests.scripted_workload import ScriptedWorkload

CPU = torch.device("cpu")
SGD = OptimizerSettings(name="sgd", momentum=0.0)


def rows(trials):
    return [(t.learning_rate, t.phase, t.result.steps_to_target) for t in trials]


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


# ---------------------------------------------------------------------------- holds for the rates select may choose

STEPS = {(0.1, 0): 120, (0.1, 1): 125, (0.1, 2): 108,    # the leader (its fastest seed needs the longest hold)
         (0.2, 0): 130, (0.2, 1): 160, (0.2, 2): 170,    # behind it on every seed, and a larger rate
         (0.05, 0): 200}


def scripted_pool(hold_factor: float, honour_contender: bool = True) -> TrialPool:
    """Real trials on a workload that crosses the target at STEPS[(lr, seed)] and stays there."""
    def make(lr, seed):
        at = STEPS[(lr, seed)]
        return LiveTrial(ScriptedWorkload(lambda s: 0.96 if s >= at else 0.5), SGD, lr, 1, seed, CPU, 1000,
                         resolution=0.0, hold_factor=hold_factor)

    pool = TrialPool(make)
    if not honour_contender:
        advance = pool.advance
        pool.advance = lambda lr, seed, contender=None, **kw: advance(lr, seed, **kw)
    return pool


def _study(hold_factor: float, budget_margin: float | None, honour_contender: bool = True):
    pool = scripted_pool(hold_factor, honour_contender)
    searched = [Trial(lr, 0, "coarse", i, None, pool.advance(lr, 0)[0], False) for i, lr in enumerate([0.05, 0.1, 0.2])]
    trials = searched + successive_halving(searched, pool, [1, 2], top=2)
    return trials if budget_margin is None else hold_to_budget(trials, pool, budget_margin)


def choice(trials):
    table = pd.DataFrame([trial_row(1, t, 1000, "accuracy", t.learning_rate) for t in trials], columns=TRIAL_COLUMNS)
    curves = pd.DataFrame([r for t in trials for r in curve_rows(1, t)])
    chosen = choose_rates(table, curves, Target("accuracy", 0.95, "above", 0.1, True), 1.2)
    return chosen[["learning_rate", "steps_to_target", "step_budget", "holds"]].to_dict("records")


def test_the_rates_select_may_choose_hold_exactly_through_their_budget_and_the_choice_stays():
    """Holding every reached trial to 2x its crossing (the old way) and holding a short 1.25x, then the
    contenders through their step budget, choose the same rate with the same guarantee, for less."""
    before, after = _study(2.0, None, honour_contender=False), _study(1.25, 1.2)
    assert best_learning_rate(rows(after)) == best_learning_rate(rows(before)) == 0.1
    assert choice(after) == choice(before) and choice(after)[0]["holds"]
    budget = choice(after)[0]["step_budget"]
    leader = [t for t in after if t.learning_rate == 0.1]
    assert all(t.result.steps_run >= budget for t in leader)  # every run of the chosen rate through its budget
    assert min(t.result.steps_run for t in leader) <= budget + 5  # and not much further
    behind = [t for t in after if t.phase == "seed" and t.learning_rate == 0.2]
    assert behind and "not held" in behind[0].result.reason  # a rate behind the leader stops at its crossing
    assert sum(t.result.examples_run for t in after) < 0.75 * sum(t.result.examples_run for t in before)


def test_a_run_that_falls_back_inside_the_budget_fails_its_rate_honestly():
    """The search seed crosses at 100, holds its short hold, then falls back for good: extended to the
    budget it does not hold, gives up as far out as a seed run would, and select does not trust the rate."""
    def make(lr, seed):
        script = (lambda s: 0.96 if 100 <= s < 130 else 0.5) if seed == 0 else (lambda s: 0.96 if s >= 110 else 0.5)
        return LiveTrial(ScriptedWorkload(script), SGD, lr, 1, seed, CPU, 1000, resolution=0.0, hold_factor=1.25)

    pool = TrialPool(make)
    searched = [Trial(0.1, 0, "coarse", 0, None, pool.advance(0.1, 0)[0], False)]
    trials = hold_to_budget(searched + successive_halving(searched, pool, [1, 2], top=1), pool, 1.2)
    first = next(t for t in trials if t.seed == 0)
    assert first.result.outcome == "stopped_early" and first.result.steps_to_target is None
    assert first.result.steps_run <= 3 * 110 + 10  # gave up where a seed run does, not at max_steps
    assert not choice(trials)[0]["holds"]


# ---------------------------------------------------------------------------- the bill before the study

def test_the_plan_counts_the_coarse_search_everywhere_and_refinement_only_where_it_will_be_done():
    from stages.core.config import ScalingSettings
    from stages.scaling.plan import plan_table, search_steps

    s = ScalingSettings()
    table = plan_table([16, 32, 64], {16: 800.0, 64: 200.0}, {32: 0.01}, s).set_index("batch_size")
    assert table.loc[32, "steps_to_target"] == 400 and "between bs 16 and 64" in table.loc[32, "from"]
    assert table.loc[32, "seconds"] == pytest.approx(search_steps(400, s) * 0.01)
    assert table["refined"].all()  # before wave 3 decides: the upper end
    known = plan_table([16, 32, 64], {16: 800.0, 64: 200.0}, {}, s, refined={64}).set_index("batch_size")
    assert known.loc[64, "steps"] == round(search_steps(200, s)) and known.loc[16, "steps"] == round(search_steps(800, s, False))
    assert search_steps(100, s, False) < search_steps(100, s)
    # a size refined only for B_crit's fit: its few refinement trials, no seeds and no holds
    fit_only = search_steps(100, s, seeds=False)
    assert search_steps(100, s, False) < fit_only < search_steps(100, s)
    assert fit_only < search_steps(100, ScalingSettings(fit_refine_trials=3), seeds=False)


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
