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
