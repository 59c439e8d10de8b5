"""The nqm closed form against known answers: noise-free gradient descent (exact), and a Monte-Carlo
run of the real workload through the project's own training step and optimizer."""
import math

import numpy as np
import pytest
import torch

from stages.core.config import OptimizerSettings
from stages.core.optim import build_optimizer
from stages.core.train import train_step
from stages.workloads.nqm import NoisyQuadratic
from stages.workloads.nqm_theory import NqmModel, expected_loss, steps_to_target, tuned_steps_to_target


def test_without_noise_it_is_gradient_descent():
    m = NqmModel.from_workload(dim=20)
    lr, steps = 0.7, 15
    got = expected_loss(m, lr, batch_size=10**12, steps=steps)
    want = [0.5 * float((m.h * (1 - lr * m.h) ** (2 * t) * m.theta0_sq).sum()) for t in range(steps + 1)]
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_vectorised_rates_match_one_at_a_time_and_unstable_rates_are_inf():
    m = NqmModel.from_workload(dim=10, momentum=0.5)
    rates = np.array([0.1, 0.5, 5.0])
    table = expected_loss(m, rates, 8, 30)
    for row, lr in zip(table, rates):
        np.testing.assert_allclose(row, expected_loss(m, float(lr), 8, 30))
    assert math.isinf(table[2, -1]) or table[2, -1] > 1e6  # lr 5 > 2 / h_max: diverges


def _monte_carlo(w: NoisyQuadratic, opt: OptimizerSettings, lr: float, batch_size: int, steps: int, seeds: int):
    """Exact loss per step of the real workload, trained with the project's own train_step."""
    losses = np.empty((seeds, steps + 1))
    for s in range(seeds):
        model = w.init_model()
        optimizer = build_optimizer(model.parameters(), opt, lr)
        data = w.batches("train", batch_size, seed=1000 + s)
        losses[s, 0] = model.exact_loss().item()
        for t in range(1, steps + 1):
            train_step(model, optimizer, w, next(data))
            losses[s, t] = model.exact_loss().item()
    return losses


@pytest.mark.parametrize("momentum,nesterov,lr", [(0.0, False, 0.8), (0.9, False, 0.08), (0.5, True, 0.3)])
def test_closed_form_matches_a_monte_carlo_run_of_the_workload(momentum, nesterov, lr):
    torch.set_num_threads(1)
    w = NoisyQuadratic(dim=30, target=0.05)
    opt = OptimizerSettings(name="sgd", momentum=momentum, nesterov=nesterov, weight_decay=0.0)
    steps, batch_size, seeds = 40, 2, 300
    mc = _monte_carlo(w, opt, lr, batch_size, steps, seeds)
    exact = expected_loss(NqmModel.from_workload(dim=30, momentum=momentum, nesterov=nesterov), lr, batch_size, steps)
    mean, se = mc.mean(axis=0), mc.std(axis=0, ddof=1) / math.sqrt(seeds)
    z = np.abs(mean[1:] - exact[1:]) / se[1:]
    # 40 correlated checks: a 4.5-sigma miss anywhere would mean the recurrence is wrong
    assert z.max() < 4.5, (z.max(), int(z.argmax()))
    # and the noise matters here: the noise-free curve is clearly different
    noiseless = expected_loss(NqmModel.from_workload(dim=30, momentum=momentum, nesterov=nesterov), lr, 10**12, steps)
    assert np.max(np.abs(mean[1:] - noiseless[1:]) / se[1:]) > 10


def test_weight_decay_enters_the_gradient_not_the_loss():
    m = NqmModel.from_workload(dim=5, weight_decay=0.1)
    got = expected_loss(m, 0.5, 10**12, 3)
    k = m.h + 0.1
    want = [0.5 * float((m.h * (1 - 0.5 * k) ** (2 * t) * m.theta0_sq).sum()) for t in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_tuned_steps_are_the_fewest_over_rates_and_fall_with_the_batch_size():
    m = NqmModel.from_workload(dim=100)
    lr, steps = tuned_steps_to_target(m, 256, 0.05, max_steps=2000)
    assert steps == steps_to_target(m, lr, 256, 0.05, 2000)
    for other in np.exp(np.linspace(math.log(0.05), math.log(3.0), 60)):
        s = steps_to_target(m, float(other), 256, 0.05, 2000)
        assert s is None or s >= steps
    small = tuned_steps_to_target(m, 16, 0.05, max_steps=5000)[1]
    assert small > 2 * steps  # below B_crit steps fall nearly in proportion
