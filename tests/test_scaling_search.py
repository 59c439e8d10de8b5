"""The learning-rate search (stages/lr_search.py) on the noisy quadratic model, and the gradient
noise scale estimators (stages/noise_scale.py) on gradients whose tr(Sigma) and |G|^2 are known."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages.core.config import OptimizerSettings
from stages.scaling.lr_search import (Journal, best_learning_rate, best_steps, learning_rate_grid, next_index,
                              rerun_seeds, search, start_index)
from stages.scaling.noise_scale import MovingAverage, chunk_gradient_norms, measure_noise_scale, unbiased_estimates
from stages.core.train import TrialResult, build_model, train_to_target
from stages.workloads.base import make_workload, to_device

CPU = torch.device("cpu")
SGD = OptimizerSettings(name="sgd", momentum=0.0)


@pytest.fixture(scope="module")
def nqm():
    torch.set_num_threads(1)
    return make_workload("nqm", {"dim": 10, "target": 0.05})


def runner(workload, batch_size, max_steps=400, calls=None):
    def run(lr, seed, give_up):
        if calls is not None:
            calls.append((lr, seed, give_up))
        return train_to_target(workload, SGD, lr, batch_size, seed, CPU, max_steps, give_up_after=give_up)
    return run


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


def _result(steps=None, outcome="not_reached", metric=1.0):
    return TrialResult(outcome if steps is None else "reached", steps, steps or 100, 0, 0.0, {"loss": metric})


def test_order_starts_at_the_centre_or_hint_and_follows_the_best():
    grid = learning_rate_grid(1e-3, 1.0, 7)
    assert start_index(grid) == 3
    assert start_index(grid, hint=0.2) == 5
    tried = {3: _result(50)}
    assert next_index(grid, tried, 3) == 2              # ties: the smaller rate first
    tried[2] = _result(80)
    assert next_index(grid, tried, 3) == 4              # nearest the best (index 3)
    tried[4] = _result(30)
    assert next_index(grid, tried, 3) == 5              # the best moved to index 4
    # before anything reaches the target, go towards the trial that came closest
    score = lambda r: r.final_metrics["loss"]  # noqa: E731
    tried = {3: _result(metric=0.5), 2: _result(metric=0.2)}
    assert next_index(grid, tried, 3, score) == 1


# ---------------------------------------------------------------------------- early stopping

@pytest.mark.parametrize("batch_size", [2, 32])
def test_early_stopping_never_changes_the_best_steps_or_rate(nqm, batch_size):
    grid = learning_rate_grid(0.03, 3.0, 7)
    full = search(grid, runner(nqm, batch_size), seed=0, early_stopping=False)
    fast = search(grid, runner(nqm, batch_size), seed=0, early_stopping=True)
    assert {t.learning_rate for t in fast} == set(grid)  # every rate is still tried
    assert best_steps([t.result for t in fast]) == best_steps([t.result for t in full])
    rows = lambda trials: [(t.learning_rate, t.phase, t.result.steps_to_target) for t in trials]  # noqa: E731
    assert best_learning_rate(rows(fast)) == best_learning_rate(rows(full))
    assert any(t.result.outcome == "stopped_early" for t in fast)
    assert sum(t.result.examples_run for t in fast) < sum(t.result.examples_run for t in full)


def test_a_diverging_learning_rate_is_recorded_as_diverged(nqm):
    trials = search([0.3, 50.0], runner(nqm, 8), seed=0)
    diverged = [t for t in trials if t.learning_rate == 50.0]
    assert diverged[0].result.outcome == "diverged"
    assert "non-finite" in diverged[0].result.reason


def test_seed_reruns_give_a_spread_and_pick_the_best_by_median(nqm):
    grid = learning_rate_grid(0.05, 1.0, 4)
    trials = search(grid, runner(nqm, 4), seed=0, keep=2)  # early stopping keeps the top two known
    assert sum(t.result.outcome == "reached" for t in trials) >= 2
    seeded = rerun_seeds(trials, runner(nqm, 4), [1, 2], top=2)
    assert len(seeded) == 4 and {t.seed for t in seeded} == {1, 2}
    assert all(t.give_up_after is None and t.phase == "seed" for t in seeded)
    best = best_learning_rate([(t.learning_rate, t.phase, t.result.steps_to_target) for t in trials + seeded])
    assert best in {t.learning_rate for t in seeded}


# ---------------------------------------------------------------------------- resume

def test_an_interrupted_search_resumes_and_skips_finished_trials(nqm, tmp_path):
    grid = learning_rate_grid(0.03, 3.0, 6)
    reference = search(grid, runner(nqm, 8), seed=0)

    class Interrupted(Exception):
        pass

    calls: list = []
    inner = runner(nqm, 8, calls=calls)

    def crashing(lr, seed, give_up):
        if len(calls) == 3:
            raise Interrupted
        return inner(lr, seed, give_up)

    path = tmp_path / "journal.jsonl"
    with pytest.raises(Interrupted):
        search(grid, crashing, seed=0, journal=Journal.open(path))
    assert len(path.read_text().splitlines()) == 3
    with open(path, "a") as f:
        f.write('{"learning_rate": 0.1, "seed"')  # a line cut short by the crash is ignored
    calls.clear()
    resumed = search(grid, inner, seed=0, journal=Journal.open(path))
    assert [t.resumed for t in resumed] == [True] * 3 + [False] * 3
    assert len(calls) == 3  # only the unfinished trials trained
    key = lambda t: (t.learning_rate, t.give_up_after, t.result.outcome, t.result.steps_to_target, t.result.steps_run)  # noqa: E731
    assert [key(t) for t in resumed] == [key(t) for t in reference]
    again = search(grid, inner, seed=0, journal=Journal.open(path))
    assert all(t.resumed for t in again) and len(calls) == 3


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
