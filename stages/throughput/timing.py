"""The one timer: timed windows of training steps, their statistics, and what the numbers mean.

Measurement
- A *window* is `steps` back-to-back calls of a step function between two device synchronisations,
  timed with the monotonic `time.perf_counter`. Nothing else happens inside a window, so the
  headline examples/s carries no per-step instrumentation (on CUDA/MPS the only syncs are at the
  window edges; on CPU a sync is a no-op).
- Windows repeat until the confidence interval of the median examples/s is narrower than a relative
  precision, or a time cap is spent (always at least `min_windows`).
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

from stages.core.types import ExamplesPerS, Seconds

ThroughputRegime = Literal["reference", "scaling", "partial", "saturated", "inconclusive"]
PHASES = ("data_wait_s", "copy_s", "compute_s")
PHASE_NAMES = {"data_wait_s": "data wait (next(iterator))", "copy_s": "host-to-device copy",
               "compute_s": "compute (forward, backward, optimizer step)"}

# ---------------------------------------------------------------------------- statistics


def min_windows_for(confidence: float) -> int:
    """Fewest samples for which the order-statistic median interval reaches `confidence`."""
    n = 2
    while 1 - 2 * 0.5 ** n < confidence:
        n += 1
    return n


def median_interval(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(median, low, high): low/high are the j-th smallest and largest samples, j the largest rank with
    P(Binomial(n, 1/2) <= j-1) <= (1-confidence)/2 -- coverage >= confidence for any continuous law."""
    x = np.sort(np.asarray(samples, dtype=float))
    n = x.size
    if n == 0:
        raise ValueError("no samples")
    alpha = 1 - confidence
    j, tail = 0, 0.0  # tail = P(Binomial(n, 1/2) <= j)
    while j + 1 <= n // 2 and (tail := tail + math.comb(n, j) / 2**n) <= alpha / 2:
        j += 1  # ranks are 1-based: interval [x_(j), x_(n+1-j)]
    if j == 0:
        raise ValueError(f"{n} samples cannot give a {confidence:.0%} interval for a median; need {min_windows_for(confidence)}")
    return float(np.median(x)), float(x[j - 1]), float(x[n - j])


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


# ---------------------------------------------------------------------------- timed windows

@dataclass(frozen=True)
class StopRule:
    min_windows: int = 6              # windows before the precision test applies
    relative_precision: float = 0.02  # stop when CI half-width / median <= this
    max_seconds: Seconds = 1.0        # ... or when this much time is spent in windows
    confidence: float = 0.95


@dataclass
class Measurement:
    """The windows of one stream (a batch size in one mode) and, once stopped, their statistics.

    When a window lasts more than 4x or less than 1/4 of `window_seconds` (the machine slowed down or
    sped up since calibration), later windows get proportionally fewer or more steps, so windows
    stay about `window_seconds` long and the time cap keeps its meaning."""
    steps_per_window: int
    examples_per_step: int
    rule: StopRule
    window_seconds: Seconds | None = None
    min_steps: int = 1
    samples: list[ExamplesPerS] = field(default_factory=list)  # examples/s of each window
    steps: list[int] = field(default_factory=list)             # steps of each window
    median: ExamplesPerS = math.nan
    ci_low: ExamplesPerS = math.nan
    ci_high: ExamplesPerS = math.nan
    seconds: Seconds = 0.0               # time spent in timed windows
    stop_reason: str = ""                # "precision" or "time_cap"

    @property
    def windows(self) -> int:
        return len(self.samples)

    @property
    def relative_half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2 / self.median

    def add(self, seconds: Seconds, steps: int | None = None) -> bool:
        """Record one window of `steps` steps (default `steps_per_window`); True when the stop rule says
        this stream is done."""
        steps = self.steps_per_window if steps is None else steps
        self.seconds += seconds
        self.steps.append(steps)
        self.samples.append(self.examples_per_step * steps / seconds)
        if self.window_seconds and not self.window_seconds / 4 <= seconds <= 4 * self.window_seconds:
            self.steps_per_window = max(self.min_steps, round(steps * self.window_seconds / seconds))
        if self.windows < self.rule.min_windows:
            return False
        self.median, self.ci_low, self.ci_high = median_interval(self.samples, self.rule.confidence)
        if self.relative_half_width <= self.rule.relative_precision:
            self.stop_reason = "precision"
        elif self.seconds >= self.rule.max_seconds:
            self.stop_reason = "time_cap"
        return bool(self.stop_reason)


def timed_window(step: Callable[[], object], steps: int, sync: Callable[[], None],
                 clock: Callable[[], float] = time.perf_counter) -> Seconds:
    """Seconds for `steps` calls of `step`, queued device work included (sync at both edges only)."""
    sync()
    start = clock()
    for _ in range(steps):
        step()
    sync()
    return clock() - start


def bounded_window(step: Callable[[], object], steps: int, sync: Callable[[], None], limit: Seconds,
                   clock: Callable[[], float] = time.perf_counter) -> tuple[Seconds, int]:
    """Like timed_window, but stops early once `limit` seconds have passed on the host clock (a guard
    against a machine that slowed down 100-fold, one clock read per step); returns (seconds, steps run).
    On an asynchronous device the host runs at most a queue's depth ahead, so the guard still holds."""
    sync()
    start = clock()
    done = 0
    while done < steps:
        step()
        done += 1
        if clock() - start > limit:
            break
    sync()
    return clock() - start, done


def steps_per_window(step: Callable[[], object], sync: Callable[[], None], window_seconds: Seconds,
                     min_steps: int = 1, tries: int = 3, clock: Callable[[], float] = time.perf_counter) -> int:
    """Steps that fill about `window_seconds`: time 1, 2, 4, ... steps until a run lasts a tenth of it;
    the fastest of `tries` such estimates wins (a slow one is interference). These steps double as warm-up."""
    best = math.inf
    for _ in range(tries):
        k = 1
        while True:
            elapsed = timed_window(step, k, sync, clock)
            if elapsed >= window_seconds / 10 or k >= 2**20:
                break
            k *= 2
        best = min(best, elapsed / k)
    return max(min_steps, math.ceil(window_seconds / max(best, 1e-9)))


Stream = tuple[Callable[[], object], Measurement]


def measure_interleaved(streams: Sequence[Stream], sync: Callable[[], None] = lambda: None,
                        clock: Callable[[], float] = time.perf_counter) -> None:
    """Round-robin: one window of each unfinished stream per round, until every stream is done.

    Interleaving spreads a slow spell of the machine (another process, thermal throttling) over all
    batch sizes and both modes instead of letting it land on one of them, so ratios between streams
    stay honest. After switching streams, one untimed step settles caches and the allocator."""
    pending = list(streams)
    last = None
    while pending:
        for item in list(pending):
            step, m = item
            if last is not item and len(streams) > 1:
                step()
            last = item
            if m.window_seconds:
                done = m.add(*bounded_window(step, m.steps_per_window, sync, 4 * m.window_seconds, clock))
            else:
                done = m.add(timed_window(step, m.steps_per_window, sync, clock))
            if done:
                pending.remove(item)


def measure(step: Callable[[], object], examples_per_step: int, steps: int, rule: StopRule,
            sync: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.perf_counter) -> Measurement:
    """Timed windows of `steps` steps until the median's interval is within the precision or time is up."""
    m = Measurement(steps, examples_per_step, rule)
    measure_interleaved([(step, m)], sync, clock)
    return m


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


def diagnose(doublings: Sequence[Doubling], input_bound: dict[int, bool],
             split: dict[int, dict[str, Seconds]], scaling_ratio: float = 1.8) -> str:
    """Plain-text diagnosis: input-bound sizes, then the first doubling that clearly did not nearly
    double throughput (upper end of its interval below `scaling_ratio`) and which part of the step
    grew -- the playbook's 'diagnose the bottleneck first'."""
    lines = []
    bound = sorted(b for b, flag in input_bound.items() if flag)
    if bound:
        worst = max(bound, key=lambda b: split[b].get("data_wait_s", 0) + split[b].get("copy_s", 0))
        s = split[worst]
        lines.append(f"Input-bound at batch sizes {bound}: the input pipeline is clearly slower than a batch kept "
                     f"on the device. At {worst}, data wait is {s['data_wait_s'] * 1e3:.3g} ms and copy "
                     f"{s['copy_s'] * 1e3:.3g} ms of each step (compute {s['compute_s'] * 1e3:.3g} ms): speed up "
                     f"data loading (workers, prefetching, caching, pinned memory) before choosing a batch size.")
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
        lines.append(f"Doubling {first.doubling_from} -> {first.batch_size} raised throughput {first.doubling_ratio:.2f}x "
                     f"(interval {first.doubling_ratio_low:.2f}-{first.doubling_ratio_high:.2f}, {first.regime}), "
                     f"clearly short of 2x. Time per step grew by {_ms(total)}, {where} ({detail}).")
        if first.grew_most == "compute_s":
            lines.append("Compute grew: the device is doing more work per step, i.e. it is filling up -- a hardware "
                         "limit, not an input bottleneck.")
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
