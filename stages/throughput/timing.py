"""Throughput's analysis of timed windows: the time split, the doubling analysis, what the numbers mean.

Measurement
- Windows of training steps are timed by the one timer every stage shares (stages/core/timer.py:
  warm-up excluded, windows between two device synchronisations, the stop rule, the median's
  order-statistic interval); its names are re-exported here for throughput's modules.
- Where the time goes (data wait / host-to-device copy / compute) is measured in *separate* steps,
  one phase at a time with a device sync between phases. Those syncs remove the overlap of copy and
  compute that the real loop enjoys, which is why they never touch the headline windows.

Statistics
- examples/s = median over windows; its interval is the distribution-free order-statistic interval
  for a median (binomial): no assumption about the shape of window timings, and one window slowed
  by another process cannot move it much.
- A ratio of two throughputs (doubling the batch size; on-device batch against the real pipeline)
  is a ratio of medians with a percentile-bootstrap interval (windows of both sides resampled,
  fixed seed, so a rerun on the same timings gives the same interval).
- Regimes are decided with the interval of the doubling ratio, never with its point value:
  scaling (lower end >= scaling_ratio: nearly 2x), partial (lower end > doubling_threshold: clearly
  worth it, not clearly 2x), saturated (upper end <= doubling_threshold: clearly not worth it),
  inconclusive (the interval straddles doubling_threshold: too noisy to tell).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import numpy as np

from stages.core.timer import (Measurement, StopRule, Stream, bounded_window, measure, measure_interleaved,  # noqa: F401
                               median_interval, min_windows_for, steps_per_window, timed_window)
from stages.core.types import ExamplesPerS, Seconds

ThroughputRegime = Literal["reference", "scaling", "partial", "saturated", "inconclusive"]
PHASES = ("data_wait_s", "copy_s", "compute_s")
PHASE_NAMES = {"data_wait_s": "data wait (next(iterator))", "copy_s": "host-to-device copy",
               "compute_s": "compute (forward, backward, optimizer step)"}

# ---------------------------------------------------------------------------- statistics


def ratio_interval(numerator: Sequence[float], denominator: Sequence[float], confidence: float = 0.95,
                   resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(median(numerator) / median(denominator), low, high) with a percentile-bootstrap interval."""
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    rng = np.random.default_rng(seed)
    med_a = np.median(a[rng.integers(0, a.size, (resamples, a.size))], axis=1)
    med_b = np.median(b[rng.integers(0, b.size, (resamples, b.size))], axis=1)
    ratios = med_a / med_b
    alpha = 1 - confidence
    low, high = np.quantile(ratios, [alpha / 2, 1 - alpha / 2])
    return float(np.median(a) / np.median(b)), float(low), float(high)


# ---------------------------------------------------------------------------- the time split

def split_steps(next_batch: Callable[[], object], copy: Callable[[object], object],
                compute: Callable[[object], object], steps: int, sync: Callable[[], None] = lambda: None,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, list[Seconds]]:
    """Seconds of each phase for `steps` steps, each phase closed by a device sync (never inside the
    throughput windows: the syncs remove the overlap of copy and compute)."""
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    sync()
    for _ in range(steps):
        t0 = clock()
        batch = next_batch()
        t1 = clock()
        batch = copy(batch)
        sync()
        t2 = clock()
        compute(batch)
        sync()
        t3 = clock()
        for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2)):
            times[phase].append(seconds)
    return times


# ---------------------------------------------------------------------------- doubling analysis

def classify(ratio_low: float, ratio_high: float, doubling_threshold: float, scaling_ratio: float) -> ThroughputRegime:
    """Regime of a doubling from its ratio interval (see module docstring)."""
    if ratio_low >= scaling_ratio:
        return "scaling"
    if ratio_low > doubling_threshold:
        return "partial"
    if ratio_high <= doubling_threshold:
        return "saturated"
    return "inconclusive"


@dataclass
class SizeTiming:
    """What the doubling analysis needs of one batch size."""
    batch_size: int
    samples: list[ExamplesPerS]
    split: dict[str, Seconds] = field(default_factory=dict)  # PHASES -> seconds per step


@dataclass
class Doubling:
    batch_size: int
    doubling_from: int | None        # the next smaller measured size (B/2 for powers of two)
    doubling_ratio: float            # throughput gain per doubling of the batch size
    doubling_ratio_low: float
    doubling_ratio_high: float
    regime: ThroughputRegime
    grew_most: str | None            # the phase whose time per step grew most (non-scaling doublings)
    growth_s: dict[str, Seconds]     # per-step growth of each phase from doubling_from


def doubling_analysis(sizes: Sequence[SizeTiming], doubling_threshold: float, scaling_ratio: float,
                      confidence: float = 0.95) -> list[Doubling]:
    """For each size against the next smaller one: ratio per doubling (a gap of k doublings is
    normalised as ratio**(1/k)), its interval, its regime, and which phase grew."""
    ordered = sorted(sizes, key=lambda s: s.batch_size)
    out: list[Doubling] = []
    for i, cur in enumerate(ordered):
        if i == 0:
            out.append(Doubling(cur.batch_size, None, math.nan, math.nan, math.nan, "reference", None, {}))
            continue
        prev = ordered[i - 1]
        k = math.log2(cur.batch_size / prev.batch_size)
        r, lo, hi = (v ** (1 / k) for v in ratio_interval(cur.samples, prev.samples, confidence, seed=cur.batch_size))
        regime = classify(lo, hi, doubling_threshold, scaling_ratio)
        growth = {p: cur.split[p] - prev.split[p] for p in PHASES if p in cur.split and p in prev.split}
        grew = max(growth, key=growth.get) if growth and regime != "scaling" else None
        # Blame a phase only if it grew and the step as a whole grew: a split whose total shrank cannot
        # explain a slower step (the split is timed apart from the windows, with its own noise).
        grew = grew if grew is not None and growth[grew] > 0 and sum(growth.values()) > 0 else None
        out.append(Doubling(cur.batch_size, prev.batch_size, r, lo, hi, regime, grew, growth))
    return out


def largest_useful_batch_size(doublings: Sequence[Doubling], strict: bool = False) -> int:
    """The largest size reached by a doubling that clearly raised throughput by more than the threshold
    (scaling or partial); the smallest size when none did.

    Unless `strict`, an inconclusive doubling (too noisy to tell) also counts while no clearly saturated
    doubling came before it: without evidence, the playbook's default is the largest batch size the
    hardware supports, so noise must not shrink the sizes worth studying."""
    ordered = sorted(doublings, key=lambda d: d.batch_size)
    useful, saturated_below = [], False
    for d in ordered:
        saturated_below = saturated_below or d.regime == "saturated"
        if d.regime in ("scaling", "partial") or (d.regime == "inconclusive" and not strict and not saturated_below):
            useful.append(d.batch_size)
    return max(useful) if useful else ordered[0].batch_size


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:+.3g} ms"


def _gain(d: Doubling) -> str:
    """'Doubling 16 -> 32 raised throughput 1.47x' -- or, across a gap of several doublings, the raw gain and
    the gain per doubling, both said (1.47x per doubling over two doublings is 2.15x in all)."""
    k = math.log2(d.batch_size / d.doubling_from)
    interval = f"interval {d.doubling_ratio_low:.2f}-{d.doubling_ratio_high:.2f} per doubling, {d.regime}"
    if abs(k - 1) < 1e-9:
        return f"Doubling {d.doubling_from} -> {d.batch_size} raised throughput {d.doubling_ratio:.3g}x ({interval})"
    return (f"Going {d.doubling_from} -> {d.batch_size} ({k:.3g} doublings) raised throughput "
            f"{d.doubling_ratio ** k:.3g}x in all, {d.doubling_ratio:.3g}x per doubling ({interval})")


def diagnose(doublings: Sequence[Doubling], input_bound: dict[int, bool],
             split: dict[int, dict[str, Seconds]], scaling_ratio: float = 1.8, loader: str | None = None) -> str:
    """Plain-text diagnosis: input-bound sizes first (with the DataLoader setting `loader` they were timed
    with: the input pipeline is then the limit), then the first doubling that clearly did not nearly
    double throughput (upper end of its interval below `scaling_ratio`) and which part of the step grew
    -- the playbook's 'diagnose the bottleneck first'."""
    lines = []
    bound = sorted(b for b, flag in input_bound.items() if flag)
    if bound:
        worst = max(bound, key=lambda b: split[b].get("data_wait_s", 0) + split[b].get("copy_s", 0))
        s = split[worst]
        setting = (f" even with the recommended DataLoader setting ({loader}) that every size was timed with"
                   if loader else "")
        lines.append(f"**The input pipeline is the limit.** Input-bound at batch sizes {bound}{setting}: a batch kept "
                     f"on the device trains clearly faster than batches from the input pipeline. At {worst}, data "
                     f"wait is {s['data_wait_s'] * 1e3:.3g} ms and copy {s['copy_s'] * 1e3:.3g} ms of each step "
                     f"(compute {s['compute_s'] * 1e3:.3g} ms). The time per step select uses at these sizes is this "
                     f"input-bound one, measured as a run{' with that setting' if loader else ''} will train, so the "
                     f"choice and its prediction hold; to train faster, speed up data loading (more workers or "
                     f"cores, caching, cheaper decoding, pinned memory) and rerun.")
    first = next((d for d in doublings if d.doubling_ratio_high < scaling_ratio), None)
    unclear = [f"{d.doubling_from}->{d.batch_size}" for d in doublings if d.regime == "inconclusive"]
    if unclear:
        lines.append(f"Doublings {', '.join(unclear)} are inconclusive (their interval straddles the threshold: "
                     f"the timings were too noisy); below the first clearly saturated doubling they count as "
                     f"possibly useful (without evidence the playbook prefers the largest batch size) -- rerun "
                     f"on a quieter machine or raise throughput.max_seconds_per_size to decide them.")
    if first is None:
        lines.append("No doubling of the batch size was clearly short of doubling throughput" +
                     (": the device is not saturated at the largest feasible size." if not unclear else "."))
    elif first is not None:
        total = sum(first.growth_s.values())
        detail = ", ".join(f"{PHASE_NAMES[p].split(' (')[0]} {_ms(v)}" for p, v in first.growth_s.items())
        where = f"mostly {PHASE_NAMES[first.grew_most]}" if first.grew_most else "no phase in particular"
        lines.append(f"{_gain(first)}, clearly short of 2x per doubling. Time per step grew by {_ms(total)}, "
                     f"{where} ({detail}).")
        if first.grew_most == "compute_s":
            either_bound = input_bound.get(first.batch_size) or input_bound.get(first.doubling_from)
            lines.append("Compute grew most: the device is doing more work per step, i.e. it is filling up" +
                         (" (the input pipeline, above, limits these sizes as well)." if either_bound else
                          f" -- at {first.doubling_from} -> {first.batch_size} a hardware limit, not the input "
                          f"pipeline (which limits only the sizes named above)." if bound else
                          " -- a hardware limit, not an input bottleneck."))
        elif first.grew_most == "data_wait_s":
            lines.append("The data wait grew: the input pipeline cannot keep up -- fix it before trusting larger sizes.")
        elif first.grew_most == "copy_s":
            lines.append("The host-to-device copy grew: pin memory, copy asynchronously, or move preprocessing "
                         "onto the device.")
        else:
            lines.append("No phase of the step grew when timed on its own: the loss comes from outside the step "
                         "(synchronisation, interference from other work on the machine).")
    return " ".join(lines)


# ---------------------------------------------------------------------------- hardware limit

def peak_matmul_flops_per_s(device, dtype, sync: Callable[[], None], seconds: Seconds = 0.5,
                            max_n: int = 8192) -> tuple[float, int]:
    """Best FLOP/s of square n x n matmuls (2 n^3 FLOPs each); n doubles from 256 until one takes
    >= 10 ms (or max_n). Returns (FLOP/s, n). The best window is the peak: slow ones are interference."""
    import torch

    n = 256
    while True:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        torch.matmul(a, b)  # warm-up (kernel selection, allocation)
        one = timed_window(lambda: torch.matmul(a, b), 1, sync)
        if one >= 0.01 or n >= max_n:
            break
        n *= 2
    reps = max(1, math.ceil(0.05 / max(one, 1e-6)))  # windows of ~50 ms
    best, spent = 0.0, 0.0
    while spent < seconds:
        elapsed = timed_window(lambda: torch.matmul(a, b), reps, sync)
        spent += elapsed
        best = max(best, 2 * n**3 * reps / elapsed)
    return best, n
