"""The adaptive descent's rule (scaling.adaptive): the study runs from the largest batch size down and
stops once two consecutive halvings are confirmed in perfect scaling -- below them a smaller batch
needs proportionally more steps, so it can train no faster and no cheaper, and its steps are predicted
(perfect scaling from the smallest measured size) instead of trained. trials.py runs the descent;
plan.py uses the same rule to leave the predicted sizes out of the bill.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Prediction:
    """A size the adaptive descent does not train: its steps to target by perfect scaling, and why."""
    steps: float
    why: str


def halving_in_perfect_scaling(larger: tuple[int, float], smaller: tuple[int, float], ratio: float) -> bool:
    """Does the smaller size need at least `ratio` x the larger size's steps per halving between them
    (ratio ** k over k halvings; 2 per halving is exactly perfect scaling)?"""
    (b1, s1), (b2, s2) = larger, smaller
    return s2 >= s1 * ratio ** math.log2(b1 / b2)


def descent_stop(measured: list[tuple[int, float | None]], ratio: float) -> str | None:
    """Given the sizes searched so far, largest first, with their steps to target (None: no steps --
    not reached, or a best rate at the edge of the search): why the descent stops here -- the last two
    steps down both confirmed in perfect scaling -- or None to go on."""
    if len(measured) < 3:
        return None
    (b0, s0), (b1, s1), (b2, s2) = measured[-3:]
    if s0 is None or s1 is None or s2 is None:
        return None
    if not (halving_in_perfect_scaling((b0, s0), (b1, s1), ratio) and halving_in_perfect_scaling((b1, s1), (b2, s2), ratio)):
        return None
    return (f"bs {b0} -> {b1} -> {b2} took {s0:.0f} -> {s1:.0f} -> {s2:.0f} steps: both steps down confirmed in "
            f"perfect scaling (at least {ratio:g}x the steps per halving, scaling.adaptive_ratio)")
