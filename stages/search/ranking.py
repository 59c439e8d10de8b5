"""How learning rates are ranked by their steps to target over seeds: one rule, shared by the
scaling study (which rate is best at a batch size) and select (which rate holds the target)."""
from __future__ import annotations

import math

import numpy as np


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
