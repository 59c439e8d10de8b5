"""Ground truth for the built-in `nqm`: its exact expected loss per step under SGD (heavy-ball or
Nesterov momentum, weight decay), from closed-form second-moment recurrences per eigen-direction
(Zhang et al. 2019, "Which algorithmic choices matter at which batch sizes?", section 3).

The workload (stages/workloads/nqm.py) is diagonal: loss = 0.5 sum_i h_i theta_i^2, and a batch of
B examples gives the gradient h_i theta_i + n_i with n_i ~ N(0, h_i / B), independent across
directions and steps. torch's SGD (dampening 0) keeps a buffer v and updates

    g = (h + wd) theta + n;  v' = mu v + g;  theta' = theta - lr * (v'  or, Nesterov, g + mu v').

Each direction is a linear system in x = (theta, v) driven by Gaussian noise, so the raw second
moments P = E theta^2, Q = E theta v, R = E v^2 follow an exact recurrence; E loss_t =
0.5 sum_i h_i P_i(t). The start is P = theta_0^2 per direction: the workload's own fixed draw
(`from_workload`), or 1 (the average over theta_0 ~ N(0, I)). Pure numpy, float64.

    python -c "from stages.workloads.nqm_theory import *; print(tuned_steps_to_target(NqmModel.from_workload(), 64))"
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stages.core.types import Steps


@dataclass(frozen=True)
class NqmModel:
    """What decides the expected loss: curvatures, the start's second moment, and the optimizer."""
    h: np.ndarray                 # (dim,) curvature per direction
    theta0_sq: np.ndarray         # (dim,) E theta_0^2 per direction
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    @classmethod
    def from_workload(cls, dim: int = 100, init_seed: int = 0, *, average_start: bool = False,
                      momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0) -> "NqmModel":
        """The model of `NoisyQuadratic(dim, init_seed=...)`: its spectrum and its fixed theta_0
        (or, with `average_start`, E theta_0^2 = 1: the average over theta_0 ~ N(0, I))."""
        from stages.workloads.nqm import NoisyQuadratic

        w = NoisyQuadratic(dim=dim, init_seed=init_seed)
        h = w.h.double().numpy()
        start = np.ones_like(h) if average_start else w.theta0.double().numpy() ** 2
        return cls(h, start, momentum, nesterov, weight_decay)


def expected_loss(model: NqmModel, learning_rate: float | np.ndarray, batch_size: int, steps: Steps) -> np.ndarray:
    """E loss after 0..steps steps: shape (steps + 1,) for a scalar rate, (len(rates), steps + 1)
    for an array of rates (vectorised over rates). Unstable rates grow to inf, never NaN."""
    lrs = np.atleast_1d(np.asarray(learning_rate, dtype=float))[:, None]   # (L, 1)
    out = np.empty((lrs.shape[0], steps + 1))
    h = model.h[None, :]                                                  # (1, dim)
    k = h + model.weight_decay                                            # gradient's linear term
    mu, noise = model.momentum, h / batch_size                            # Var n_i per step
    # theta' = a11 theta + a12 v + b1 n ; v' = k theta + mu v + n
    if model.nesterov:
        a11, a12, b1 = 1 - lrs * (1 + mu) * k, -lrs * mu * mu, -lrs * (1 + mu)
    else:
        a11, a12, b1 = 1 - lrs * k, -lrs * mu, -lrs
    p = np.broadcast_to(model.theta0_sq[None, :], (lrs.shape[0], h.shape[1])).copy()
    q, r = np.zeros_like(p), np.zeros_like(p)
    out[:, 0] = 0.5 * (h * p).sum(axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(1, steps + 1):
            p, q, r = (a11 * a11 * p + 2 * a11 * a12 * q + a12 * a12 * r + b1 * b1 * noise,
                       a11 * k * p + (a11 * mu + a12 * k) * q + a12 * mu * r + b1 * noise,
                       k * k * p + 2 * k * mu * q + mu * mu * r + noise)
            out[:, t] = 0.5 * (h * p).sum(axis=1)
    out[~np.isfinite(out)] = math.inf
    return out[0] if np.ndim(learning_rate) == 0 else out


def first_step_below(losses: np.ndarray, target: float) -> np.ndarray:
    """Per row, the first step whose expected loss is <= target (-1 where none)."""
    hit = np.atleast_2d(losses) <= target
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def steps_to_target(model: NqmModel, learning_rate: float, batch_size: int, target: float,
                    max_steps: Steps) -> Steps | None:
    """First step at which the expected loss is at or below the target (None within max_steps)."""
    s = int(first_step_below(expected_loss(model, learning_rate, batch_size, max_steps), target)[0])
    return None if s < 0 else s


def _fewest_steps(model: NqmModel, rates: np.ndarray, batch_size: int, target: float,
                  max_steps: Steps) -> tuple[int, Steps | None]:
    """(index of the rate reaching the target first, its steps), stepping all rates together and
    stopping at the first step any of them reaches it -- so the cost is the answer, not max_steps."""
    horizon = 64  # doubled until a rate reaches the target: the expected loss is recomputed from step 0 (cheap)
    while True:
        horizon = min(horizon, max_steps)
        losses = expected_loss(model, rates, batch_size, horizon)
        first = first_step_below(losses, target)
        if (first >= 0).any():
            reached = np.where(first >= 0, first, np.iinfo(np.int64).max)
            i = int(np.argmin(reached))  # ties -> the smaller rate (rates increase)
            return i, int(reached[i])
        if horizon >= max_steps:
            return int(np.argmin(losses[:, -1])), None
        horizon *= 2


def tuned_steps_to_target(model: NqmModel, batch_size: int, target: float = 0.1, *, lr_min: float = 1e-3,
                          lr_max: float = 10.0, max_steps: Steps = 100_000, rel_tol: float = 1e-3) -> tuple[float, Steps | None]:
    """(learning rate, steps) with the fewest expected steps to the target at this batch size: a
    200-point log grid, then grids of 41 points between the best's neighbours until they are within
    a factor 1 + rel_tol. Steps are integers, so the optimum is a set of rates; the smallest
    steps found are exact, the rate is one of that set."""
    rates = np.exp(np.linspace(math.log(lr_min), math.log(lr_max), 200))
    i, steps = _fewest_steps(model, rates, batch_size, target, max_steps)
    best = float(rates[i])
    while steps is not None:
        lo, hi = float(rates[max(i - 1, 0)]), float(rates[min(i + 1, len(rates) - 1)])
        if hi / lo <= 1 + rel_tol:
            break
        rates = np.exp(np.linspace(math.log(lo), math.log(hi), 41))
        i, found = _fewest_steps(model, rates, batch_size, target, steps)
        if found is not None and found <= steps:
            best, steps = float(rates[i]), found
        else:
            i = 20  # the centre is the old best
    return best, steps
