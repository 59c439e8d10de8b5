"""The learning-rate search at one batch size (stages/search/): the coarse race with early stopping,
refinement, successive halving over seeds, the per-size table, the plateau stop, resuming from the
journal -- on the noisy quadratic model and on trials whose steps are a known function of the rate;
and the gradient noise scale."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from stages.core.config import OptimizerSettings
from stages.search.journal import Journal
from stages.search.coarse import Target, Trial, best_learning_rate, best_steps, learning_rate_grid, rung_search
from stages.search.pool import TrialPool
from stages.search.refine import SEED_GIVE_UP, next_rate, resolve, successive_halving
from stages.scaling.tables import TRIAL_COLUMNS, per_size_table, search_cost_ratio, trial_row
from stages.scaling.noise_scale import MovingAverage, chunk_gradient_norms, measure_noise_scale, unbiased_estimates
from stages.search.trial import LiveTrial, TrialResult, plateaued, train_to_target
from stages.core.train import build_model
from stages.workloads.base import to_device
from stages.workloads.base import make_workload

CPU = torch.device("cpu")
SGD = OptimizerSettings(name="sgd", momentum=0.0)
LOSS = Target("loss", 0.05, "below")


@pytest.fixture(scope="module")
def nqm():
    torch.set_num_threads(1)
    return make_workload("nqm", {"dim": 10, "target": 0.05})


def nqm_pool(workload, batch_size, max_steps=400, journal=None, calls=None) -> TrialPool:
    def make(lr, seed):
        if calls is not None:
            calls.append((lr, seed))
        return LiveTrial(workload, SGD, lr, batch_size, seed, CPU, max_steps, hold_factor=1.0)
    return TrialPool(make, journal)


def race(pool, rates, max_steps=400, **kw):
    settings = dict(first_rung=8, max_steps=max_steps, resolution=0.05, margin=0.5, widen_step=3.0,
                    low_limit=min(rates), high_limit=max(rates))
    settings.update(kw)
    return rung_search(pool, rates, 0, LOSS, **settings)


class FakePool:
    """TrialPool's interface over trials whose steps to target are a known function of (rate, seed): a
    trial pauses at `until`, gives up past `give_up_after`, reaches at its steps (with the real rules)."""

    def __init__(self, steps_at, diverge_above=math.inf):
        self.steps_at, self.diverge_above, self.calls = steps_at, diverge_above, []

    def advance(self, lr, seed, *, until=None, give_up_after=None, hold=None, contender=None):
        self.calls.append((lr, seed, until, give_up_after))
        if lr > self.diverge_above:
            return TrialResult("diverged", None, 3, 3, 0.0, {"loss": math.nan}, reason="non-finite"), False
        steps = self.steps_at(lr, seed)
        stop = min(x for x in (until, give_up_after, 10**9) if x is not None)
        if steps <= stop:
            return TrialResult("reached", steps, steps, steps, 0.0, {"loss": 0.0}), False
        if give_up_after is not None and stop == give_up_after:
            return TrialResult("stopped_early", None, give_up_after, give_up_after, 0.0, {"loss": 1.0}), False
        return TrialResult("paused", None, stop, stop, 0.0, {"loss": 1.0}), False

    def release(self, lr, seed):
        pass


def bowl(optimum, depth=1000.0, curvature=4.0):
    """Steps to target with a single minimum at `optimum` (quadratic in log lr), integer steps."""
    return lambda lr, seed: int(round(depth * (1 + curvature * math.log(lr / optimum) ** 2)))


# ---------------------------------------------------------------------------- grid and order

def test_log_grid_spans_the_range_evenly_in_log_space():
    grid = learning_rate_grid(1e-3, 1.0, 4)
    assert grid == pytest.approx([1e-3, 1e-2, 1e-1, 1.0])
    assert learning_rate_grid(0.01, 1.0, 1) == pytest.approx([0.1])


def test_sobol_grid_is_deterministic_increasing_and_inside_the_range():
    grid = learning_rate_grid(1e-3, 1.0, 7, "sobol", seed=3)
    assert grid == learning_rate_grid(1e-3, 1.0, 7, "sobol", seed=3)
    assert grid == sorted(grid) and len(set(grid)) == 7
    assert all(1e-3 <= lr <= 1.0 for lr in grid)
    assert grid != learning_rate_grid(1e-3, 1.0, 7, "sobol", seed=4)


# ---------------------------------------------------------------------------- the coarse race

@pytest.mark.parametrize("batch_size", [2, 32])
def test_early_stopping_never_changes_the_best_steps_or_rate(nqm, batch_size):
    rates = learning_rate_grid(0.03, 3.0, 7)
    full = race(nqm_pool(nqm, batch_size), rates, early_stopping=False, margin=1e9)  # every rate to the end
    fast = race(nqm_pool(nqm, batch_size), rates, margin=1e9)
    assert {t.learning_rate for t in fast} >= set(rates)  # every rate is still tried
    rows = lambda trials: [(t.learning_rate, t.phase, t.result.steps_to_target) for t in trials if t.phase != "refine"]  # noqa: E731
    assert best_steps([t.result for t in fast if t.phase != "refine"]) == best_steps([t.result for t in full if t.phase != "refine"])
    assert best_learning_rate(rows(fast)) == best_learning_rate(rows(full))
    assert any(t.result.outcome == "stopped_early" for t in fast)
    assert sum(t.result.examples_run for t in fast) < sum(t.result.examples_run for t in full)
    pruned = race(nqm_pool(nqm, batch_size), rates)  # the default margin prunes, and finds the same best
    assert best_learning_rate(rows(pruned)) == best_learning_rate(rows(full))


def test_a_diverging_learning_rate_is_recorded_as_diverged(nqm):
    trials = race(nqm_pool(nqm, 8), [0.3, 50.0], margin=math.inf)  # not pruned first: trained until it blows up
    diverged = [t for t in trials if t.learning_rate == 50.0]
    assert diverged[0].result.outcome == "diverged"
    assert "non-finite" in diverged[0].result.reason


def test_seed_reruns_give_a_spread_and_pick_the_best_by_median(nqm):
    pool = nqm_pool(nqm, 4)
    trials = race(pool, learning_rate_grid(0.05, 1.0, 4), margin=math.inf, early_stopping=False)  # several reach
    assert sum(t.result.outcome == "reached" for t in trials) >= 2
    seeded = successive_halving(trials, pool, [1, 2], top=2)
    assert {t.seed for t in seeded} == {1, 2} and 3 <= len(seeded) <= 4
    assert all(t.phase == "seed" for t in seeded)
    # every seed run has a give-up point, far out: SEED_GIVE_UP x its rate's slowest seed so far
    for t in seeded:
        before = [x.result.steps_to_target for x in trials + seeded
                  if x.learning_rate == t.learning_rate and x.order < t.order and x.result.steps_to_target]
        assert t.give_up_after == math.ceil(SEED_GIVE_UP * max(before))
    best = best_learning_rate([(t.learning_rate, t.phase, t.result.steps_to_target) for t in trials + seeded])
    assert best in {t.learning_rate for t in seeded if t.seed == 2}


# ---------------------------------------------------------------------------- refinement (known optimum)

def _search_and_refine(pool, lo=0.01, hi=2.0, points=6, ratio=1.1, max_trials=20, widen=4.0):
    grid = learning_rate_grid(lo, hi, points)
    coarse = rung_search(pool, grid, 0, LOSS, first_rung=50, max_steps=100_000, resolution=0.0, margin=0.5,
                         widen_step=grid[1] / grid[0], low_limit=lo / widen, high_limit=hi * widen)
    refined = resolve(coarse, pool, 0, LOSS, ratio=ratio, max_trials=max_trials, resolution=0.0, low_limit=lo / widen,
                      high_limit=hi * widen, widen_step=grid[1] / grid[0], rungs=[50, 100], margin=0.5)
    return coarse, refined


@pytest.mark.parametrize("optimum", [0.037, 0.21, 0.9, 1.77])
def test_refinement_finds_a_rate_within_the_set_ratio_of_the_true_optimum(optimum):
    coarse, refined = _search_and_refine(FakePool(bowl(optimum)))
    trials = coarse + refined
    best = best_learning_rate([(t.learning_rate, t.phase, t.result.steps_to_target) for t in trials])
    assert max(best / optimum, optimum / best) <= 1.1
    assert {t.phase for t in refined} <= {"refine", "widen"} and len(refined) <= 10
    # every refinement trial gave up at the best steps known when it started (early stopping stays)
    assert all(t.give_up_after is not None for t in refined)


def test_refinement_stops_when_neighbours_tie_at_the_evaluation_resolution():
    flat = lambda lr, seed: 100 if 0.05 <= lr <= 1.0 else 400  # noqa: E731 -- a plateau of equally good rates
    coarse, refined = _search_and_refine(FakePool(flat))
    assert len(refined) <= 1  # a plateau: nothing to gain between its rates


def test_two_rates_tying_on_either_side_of_a_bowls_optimum_are_bisected_to_it():
    # steps 100 (1 + 4 ln^2(lr / 0.14)): the grid rates 0.083 and 0.24 tie (~130), the optimum between needs 100
    coarse, refined = _search_and_refine(FakePool(bowl(math.sqrt(0.0833 * 0.2402))))
    best = best_learning_rate([(t.learning_rate, t.phase, t.result.steps_to_target) for t in coarse + refined])
    assert max(best / 0.1414, 0.1414 / best) <= 1.1


def test_a_best_rate_beyond_the_range_widens_it_within_the_cap():
    coarse, refined = _search_and_refine(FakePool(bowl(5.0)), widen=4.0)  # lr_max 2, cap 8
    assert any(t.phase == "widen" for t in coarse + refined)
    best = best_learning_rate([(t.learning_rate, t.phase, t.result.steps_to_target) for t in coarse + refined])
    assert max(best / 5.0, 5.0 / best) <= 1.1


@pytest.mark.parametrize("optimum,edge", [(50.0, "higher"), (1e-4, "lower")])
def test_a_best_rate_beyond_the_cap_is_marked_boundary_with_the_way_to_widen(optimum, edge):
    coarse, refined = _search_and_refine(FakePool(bowl(optimum)), widen=2.0)
    tried = sorted(t.learning_rate for t in coarse + refined)
    assert tried[-1] == pytest.approx(4.0) if edge == "higher" else tried[0] == pytest.approx(0.005)
    rows = [trial_row(64, t, 10_000, "loss", t.learning_rate) for t in coarse + refined]
    table = per_size_table(pd.DataFrame(rows, columns=TRIAL_COLUMNS), [64])
    assert table["status"].iloc[0] == "boundary" and table["boundary"].iloc[0] == edge
    assert math.isnan(table["steps_to_target"].iloc[0]) and table["steps_to_target_at_edge"].iloc[0] > 0  # no finding
    assert ("lr_max" if edge == "higher" else "lr_min") in table["reason"].iloc[0]


def test_next_rate_bisects_the_wider_gap_in_log_space():
    r = lambda s: TrialResult("reached", s, s, s, 0.0, {})  # noqa: E731
    tried = {0.1: r(300), 0.4: r(100), 0.8: r(200)}
    phase, lr = next_rate(tried, ratio=1.1, resolution=0.05, low_limit=0.01, high_limit=10, widen_step=2)
    assert phase == "refine" and lr == pytest.approx(0.2)  # 0.4 / 0.1 = 4 > 0.8 / 0.4 = 2
    tried = {0.38: r(120), 0.4: r(100), 0.42: r(130)}  # neighbours within ratio 1.1: resolved
    assert next_rate(tried, ratio=1.1, resolution=0.05, low_limit=0.01, high_limit=10, widen_step=2) is None


# ---------------------------------------------------------------------------- seeds: successive halving

def test_successive_halving_drops_clear_losers_and_picks_by_median_not_the_luckiest_run():
    table = {(0.1, 0): 90, (0.1, 1): 150, (0.1, 2): 160,     # lucky once
             (0.2, 0): 100, (0.2, 1): 105, (0.2, 2): 104,    # steady
             (0.4, 0): 200, (0.4, 1): 210, (0.4, 2): 205}    # clearly worse
    pool = FakePool(lambda lr, seed: table[(lr, seed)])
    searched = [Trial(lr, 0, "coarse", i, None, pool.advance(lr, 0)[0], False) for i, lr in enumerate([0.1, 0.2, 0.4])]
    seeded = successive_halving(searched, pool, [1, 2], top=3)
    assert [(t.learning_rate, t.seed) for t in seeded] == [(0.1, 1), (0.2, 1), (0.4, 1), (0.2, 2), (0.1, 2)]
    rows = [(t.learning_rate, t.phase, t.result.steps_to_target) for t in searched + seeded]
    assert best_learning_rate(rows) == 0.2


def test_per_size_table_gives_bracket_phase_counts_interval_and_search_cost():
    steps = {(0.1, 0): 300, (0.2, 0): 120, (0.28, 0): 110, (0.4, 0): 150, (0.28, 1): 118, (0.28, 2): 104}
    kinds = {0.1: "coarse", 0.4: "coarse", 0.2: "refine", 0.28: "refine"}
    trials = []
    for (lr, seed), s in steps.items():
        result = TrialResult("reached", s, s, s * 64, 0.0, {"loss": 0.0})
        trials.append(Trial(lr, seed, kinds[lr] if seed == 0 else "seed", len(trials), None, result, False))
    rows = pd.DataFrame([trial_row(64, t, 1000, "loss", t.learning_rate) for t in trials], columns=TRIAL_COLUMNS)
    table = per_size_table(rows, [64], resolution=0.05)
    r = table.iloc[0]
    assert r["status"] == "reached" and r["best_learning_rate"] == 0.28
    assert (r["lr_bracket_low"], r["lr_bracket_high"]) == (0.2, 0.4)
    assert r["lr_resolution_ratio"] == pytest.approx(0.4 / 0.28)
    assert (r["trials_coarse"], r["trials_refine"], r["trials_seed"], r["trials_widen"]) == (2, 2, 2, 0)
    assert r["steps_to_target"] == 111  # median of the fresh seeds (118, 104): the search seed's 110 chose the rate
    assert r["steps_to_target_ci_low"] < 104 / 1.05 and r["steps_to_target_ci_high"] > 118
    assert search_cost_ratio(rows, table) == pytest.approx(sum(steps.values()) / (110 + 118 + 104))


# ---------------------------------------------------------------------------- plateau stop

def test_plateau_is_a_stall_short_of_the_target_not_slow_progress():
    steps = [1, 2, 4, 8, 16, 32]
    assert plateaued(steps, [1.0, 0.6, 0.5, 0.49, 0.5, 0.495], 0.05, "below", 0.01)        # floor at 0.49
    assert not plateaued(steps, [1.0, 0.6, 0.5, 0.4, 0.3, 0.2], 0.05, "below", 0.01)        # still falling
    assert plateaued(steps, [0.1, 0.5, 0.8, 0.9, 0.9, 0.899], 0.95, "above", 0.01)          # accuracy stuck at 0.9
    assert not plateaued(steps, [0.1, 0.5, 0.8, 0.9, 0.92, 0.93], 0.95, "above", 0.01)


def test_a_trial_at_its_noise_floor_stops_as_plateaued(nqm):
    # lr 1 at batch size 1: the loss settles at a floor far above the target 0.05 within ~30 steps
    r = train_to_target(nqm, SGD, 1.0, 1, 0, CPU, 2000, plateau_tolerance=0.01)
    assert r.outcome == "plateaued" and r.steps_run < 300 and "stalled" in r.reason
    off = train_to_target(nqm, SGD, 1.0, 1, 0, CPU, 300)
    assert off.outcome == "not_reached" and off.steps_run == 300
    # a trial that reaches the target is unaffected
    good = [train_to_target(nqm, SGD, 0.5, 64, 0, CPU, 2000, plateau_tolerance=t).steps_to_target for t in (0.0, 0.01)]
    assert good[0] is not None and good[0] == good[1]


# ---------------------------------------------------------------------------- resume

def test_an_interrupted_search_resumes_and_skips_finished_trials(nqm, tmp_path):
    rates = learning_rate_grid(0.03, 3.0, 6)
    reference = race(nqm_pool(nqm, 8), rates)

    class Interrupted(Exception):
        pass

    path = tmp_path / "journal.jsonl"
    crashing = nqm_pool(nqm, 8, journal=Journal.open(path))
    advance = crashing.advance

    def advance_then_crash(*args, **kw):
        if crashing.trained_steps > 60:
            raise Interrupted
        return advance(*args, **kw)

    crashing.advance = advance_then_crash
    with pytest.raises(Interrupted):
        race(crashing, rates)
    written = len(path.read_text().splitlines())
    assert written >= 3
    with open(path, "a") as f:
        f.write('{"learning_rate": 0.1, "seed"')  # a line cut short by the crash is ignored
    resumed_pool = nqm_pool(nqm, 8, journal=Journal.open(path))
    resumed = race(resumed_pool, rates)
    key = lambda t: (t.learning_rate, t.give_up_after, t.result.outcome, t.result.steps_to_target, t.result.steps_run)  # noqa: E731
    assert [key(t) for t in resumed] == [key(t) for t in reference]
    assert 0 < resumed_pool.trained_steps < sum(t.result.steps_run for t in reference)  # the journal saved work
    again_pool = nqm_pool(nqm, 8, journal=Journal.open(path))
    again = race(again_pool, rates)
    assert all(t.resumed for t in again) and again_pool.trained_steps == 0


# ---------------------------------------------------------------------------- gradient noise scale

def test_estimators_are_unbiased_on_synthetic_gradients():
    rng = np.random.default_rng(0)
    dim, b_small, b_big, reps = 20, 4, 32, 4000
    g = rng.normal(0, 0.3, dim)                     # true gradient G
    sigma_diag = rng.uniform(0.5, 2.0, dim)         # per-example gradient covariance (diagonal)
    per_example = g + rng.normal(0, 1, (reps, b_big, dim)) * np.sqrt(sigma_diag)  # (reps, B_big, dim)
    g_big = per_example.mean(1)                                        # (reps, dim)
    g_small = per_example[:, :b_small].mean(1)                         # (reps, dim)
    g2, trace = unbiased_estimates((g_small ** 2).sum(1), (g_big ** 2).sum(1), b_small, b_big)
    assert g2.mean() == pytest.approx((g ** 2).sum(), rel=0.1)
    assert trace.mean() == pytest.approx(sigma_diag.sum(), rel=0.05)
    # the naive estimates are biased by tr(Sigma)/B: the test can tell them apart
    assert abs((g_big ** 2).sum(1).mean() - (g ** 2).sum()) > 5 * abs(g2.mean() - (g ** 2).sum())


def test_chunk_gradients_estimate_the_known_noise_of_the_quadratic(nqm):
    """nqm: per-example gradient H theta + xi, xi ~ N(0, H): tr(Sigma) = sum(h), G = H theta."""
    model = build_model(nqm, 0, CPU)
    data = nqm.batches("train", 64, seed=1)
    g2s, traces = [], []
    for _ in range(300):
        g_small_sq, g_big_sq, _ = chunk_gradient_norms(model, nqm, to_device(next(data), CPU), 8)
        g2, trace = unbiased_estimates(g_small_sq, g_big_sq, 8, 64)
        g2s.append(g2)
        traces.append(trace)
    theta = model.theta.detach()
    assert np.mean(traces) == pytest.approx(float(nqm.h.sum()), rel=0.05)
    assert np.mean(g2s) == pytest.approx(float(((nqm.h * theta) ** 2).sum()), rel=0.15)


def test_moving_average_is_bias_corrected():
    avg = MovingAverage(0.9)
    assert avg.update(5.0) == pytest.approx(5.0)
    assert avg.update(5.0) == pytest.approx(5.0)
    assert math.isnan(MovingAverage(0.9).value)


def test_noise_scale_run_trains_to_the_target(nqm):
    result = measure_noise_scale(nqm, SGD, 0.5, 4, 64, seed=0, device=CPU, max_steps=300)
    assert result.reason.startswith("target reached")
    assert result.gradient_noise_scale is not None and result.gradient_noise_scale > 0
    assert len(result.rows) == result.steps_run
