"""The probe's batch-size search: which sizes to try, and in what order.

Candidates are powers of two (or an explicit list), capped at the training-set size; the search goes
up until the first size that does not fit, then optionally bisects between the last fit and the
first failure. `fits` is any predicate, so tests drive it with a fake out-of-memory threshold.
"""
from __future__ import annotations

import math
from typing import Callable

from stages.core.types import BatchSize

def candidate_batch_sizes(min_batch_size: int, max_batch_size: int, explicit: list[int] | None = None) -> list[BatchSize]:
    """The explicit list (sorted), or the powers of two from min to max inclusive."""
    if explicit:
        return sorted(set(int(b) for b in explicit))
    sizes, b = [], 1
    while b <= max_batch_size:
        if b >= min_batch_size:
            sizes.append(b)
        b *= 2
    return sizes


def cap_candidates(candidates: list[BatchSize], num_train_examples: int | None) -> tuple[list[BatchSize], list[BatchSize]]:
    """(kept, capped): sizes above the training-set size are never run (no batch could be that large)."""
    if num_train_examples is None:
        return list(candidates), []
    return ([b for b in candidates if b <= num_train_examples],
            [b for b in candidates if b > num_train_examples])


def search(candidates: list[BatchSize], fits: Callable[[BatchSize], bool], bisect: bool = False) -> tuple[list[BatchSize], BatchSize | None]:
    """Try candidates in ascending order until the first that does not fit; then, with `bisect`,
    halve the gap between the last fitting and the first failing size until it is 1.

    Returns (sizes in the order tried, largest size that was run and fit or None). A size larger
    than one already known not to fit is never tried."""
    tried: list[BatchSize] = []
    last_fit: BatchSize | None = None
    first_fail: BatchSize | None = None
    for b in sorted(candidates):
        tried.append(b)
        if fits(b):
            last_fit = b
        else:
            first_fail = b
            break
    if bisect and last_fit is not None and first_fail is not None:
        lo, hi = last_fit, first_fail
        while hi - lo > 1:
            mid = (lo + hi) // 2
            tried.append(mid)
            if fits(mid):
                lo = mid
            else:
                hi = mid
        last_fit = lo
    return tried, last_fit


def most_trials(candidates: list[BatchSize], bisect: bool = False) -> int:
    """An upper bound on the sizes `search` tries: every candidate, and with `bisect` the halvings of the
    widest gap between two neighbours (the search stops at the first failure, so it is rarely reached)."""
    ordered = sorted(candidates)
    gaps = [hi - lo for lo, hi in zip(ordered, ordered[1:])]
    return len(ordered) + (math.ceil(math.log2(max(gaps))) if bisect and gaps and max(gaps) > 1 else 0)


def trials_eta_s(seconds: list[float], left: int) -> float | None:
    """Seconds the next `left` trials may take: each the previous one's time times the growth between the
    last two trials, held in [1, 2] -- start-up dominated trials cost the same, compute-bound ones
    double with the batch size. None before any trial."""
    if not seconds:
        return None
    growth = min(2.0, max(1.0, seconds[-1] / seconds[-2])) if len(seconds) > 1 and seconds[-2] > 0 else 1.0
    return sum(seconds[-1] * growth ** k for k in range(1, left + 1))
