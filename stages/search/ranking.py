"""How learning rates are ranked by their steps to target over seeds, and the step budget a rate gets:
one rule each, shared by the scaling study (which rate is best at a batch size, how long its seeds must
hold the target) and select (which rate holds the target through that budget)."""
from __future__ import annotations

import math

import numpy as np

from stages.core.types import Steps


def rank_key(steps: list[int | None], learning_rate: float) -> tuple:
    """Sort key of a learning rate by its steps to target over seeds: median (a seed that did not
    reach counts as infinitely slow), then the best seed, then the smaller rate."""
    values = sorted(math.inf if s is None else s for s in steps)
    return (float(np.median(values)), values[0], learning_rate)


def can_be_chosen(steps: list[int | None], learning_rate: float, leader_steps: list[int | None],
                  leader_rate: float) -> bool:
    """Could this rate still be picked over the leader at its batch size, on the seeds run so far? By
    rank (`rank_key`), or as select picks among qualifying rates (stages/select/rates.py `pick`): a
    smaller rate whose median lies within the leader's median + seed spread counts as fast within noise."""
    if rank_key(steps, learning_rate) <= rank_key(leader_steps, leader_rate):
        return True
    lead = [s for s in leader_steps if s is not None]
    if learning_rate >= leader_rate or not lead:
        return False
    return rank_key(steps, learning_rate)[0] <= rank_key(leader_steps, leader_rate)[0] + (max(lead) - min(lead))


def readable_steps(steps: float) -> Steps:
    """Round up to two significant digits (164.4 -> 170, 1234 -> 1300, 9.2 -> 10): a budget people can read."""
    if steps <= 10:
        return max(1, math.ceil(steps - 1e-9))
    unit = 10 ** (int(math.floor(math.log10(steps))) - 1)
    return int(math.ceil(steps / unit - 1e-9) * unit)


def step_budget(steps_to_target: float, margin: float) -> Steps:
    """Steps to target x margin, rounded up to a readable number."""
    return readable_steps(steps_to_target * margin)
