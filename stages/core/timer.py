"""The one timer of training steps, used by every stage that reports a time per step (family,
throughput, baseline): timed windows of back-to-back steps, their stop rule and their statistics.

The rule, the same everywhere:
- Warm-up excluded: `warmup_steps` untimed steps first (allocator growth, autotuning, a DataLoader's
  workers starting), then steps per window calibrated to about `window_seconds`.
- A *window* is `steps` back-to-back calls of a step function between two device synchronisations,
  timed with the monotonic `time.perf_counter`. Nothing else happens inside a window -- no
  evaluation, no per-step instrumentation (on CUDA/MPS the only syncs are at the window edges; on CPU
  a sync is a no-op).
- Windows repeat until the confidence interval of the median examples/s is narrower than a relative
  precision, or a time cap is spent (always at least `min_windows`).
- examples/s = median over windows; its interval is the distribution-free order-statistic interval
  for a median (binomial): no assumption about the shape of window timings, and one window slowed
  by another process cannot move it much. Time per step = batch size / that median.

`time_steps` times one step function so (family, throughput's worker counts); `measure_interleaved`
times several round-robin (throughput's batch sizes); `windows_from_clock` applies the same rule to a
training run's own clock, read at its evaluations (baseline), so its time per step excludes
evaluations and warm-up the same way.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from stages.core.types import ExamplesPerS, Seconds

# The rule's defaults, the same as throughput's settings (stages/core/config.py ThroughputSettings):
WARMUP_STEPS = 5           # untimed steps before the first window
WINDOW_SECONDS = 0.05      # target length of one timed window, seconds
MIN_WINDOWS = 6            # windows before the stop rule applies (the fewest giving a 95% interval)
RELATIVE_PRECISION = 0.02  # stop when the interval's half-width / median is below this
MAX_SECONDS = 1.0          # ... or when this much time was spent in windows
CONFIDENCE = 0.95          # of the median's interval

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
    multiple: int = 1                    # steps per window stay a multiple of this (k workers: whole bursts)
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
            wanted = max(self.min_steps, round(steps * self.window_seconds / seconds))
            self.steps_per_window = self.multiple * math.ceil(wanted / self.multiple)
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


class BurstAligned:
    """A training step drawing from a DataLoader with `workers` > 1, timed in whole bursts.

    k workers load batches round-robin and, started together, deliver them k at a time: the step that
    takes batch j waits when j is a multiple of k and finds the next k-1 ready. A window that started with
    ready batches in hand, or ended before a wait, would time part of a burst: 2 steps of 2 workers timed
    right after a burst arrived take one wait for two steps, 1.3x too fast. So every window starts right
    after a waiting step (`align`: untimed steps until the steps taken are 1 past a multiple of k) and holds
    a multiple of k steps (`Measurement.multiple`): it then spans whole bursts."""

    def __init__(self, step: Callable[[], object], workers: int):
        self.step, self.workers, self.calls = step, max(1, workers), 0

    def __call__(self) -> object:
        self.calls += 1
        return self.step()

    def align(self) -> None:
        while self.workers > 1 and self.calls % self.workers != 1:
            self()


def measure_interleaved(streams: Sequence[Stream], sync: Callable[[], None] = lambda: None,
                        clock: Callable[[], float] = time.perf_counter, settle: int = 1,
                        progress: Callable[[int, int], None] | None = None) -> None:
    """Round-robin: one window of each unfinished stream per round, until every stream is done.

    Interleaving spreads a slow spell of the machine (another process, thermal throttling) over all
    batch sizes and both modes instead of letting it land on one of them, so ratios between streams
    stay honest. After switching streams, `settle` untimed steps settle caches and the allocator -- and,
    for a DataLoader with workers, drain the batches its workers loaded while another stream was timed
    (pass its queue's depth + 1), so no window starts with batches loaded for free.
    `progress(done, total)` is called after each round with the streams finished so far."""
    pending = list(streams)
    last = None
    while pending:
        for item in list(pending):
            step, m = item
            if last is not item and len(streams) > 1:
                for _ in range(settle):
                    step()
            last = item
            align = getattr(step, "align", None)
            if align is not None:
                align()  # (a BurstAligned step: the window starts where a burst of batches begins)
            if m.window_seconds:
                done = m.add(*bounded_window(step, m.steps_per_window, sync, 4 * m.window_seconds, clock))
            else:
                done = m.add(timed_window(step, m.steps_per_window, sync, clock))
            if done:
                pending.remove(item)
        if progress is not None:
            progress(len(streams) - len(pending), len(streams))


def measure(step: Callable[[], object], examples_per_step: int, steps: int, rule: StopRule,
            sync: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.perf_counter) -> Measurement:
    """Timed windows of `steps` steps until the median's interval is within the precision or time is up."""
    m = Measurement(steps, examples_per_step, rule)
    measure_interleaved([(step, m)], sync, clock)
    return m


@dataclass(frozen=True)
class WindowRule:
    """Everything that decides how a stream of training steps is timed (see the module docstring)."""
    warmup_steps: int = WARMUP_STEPS
    window_seconds: Seconds = WINDOW_SECONDS
    min_window_steps: int = 1
    stop: StopRule = StopRule(MIN_WINDOWS, RELATIVE_PRECISION, MAX_SECONDS, CONFIDENCE)


def rule_of(settings) -> WindowRule:
    """The rule from throughput's settings (stages/core/config.py ThroughputSettings)."""
    return WindowRule(settings.warmup_steps, settings.window_seconds, settings.min_window_steps,
                      StopRule(settings.min_windows, settings.relative_precision, settings.max_seconds_per_size,
                               settings.confidence))


def time_steps(step: Callable[[], object], examples_per_step: int, rule: WindowRule = WindowRule(),
               sync: Callable[[], None] = lambda: None, min_steps: int | None = None, warmup_steps: int | None = None,
               clock: Callable[[], float] = time.perf_counter) -> Measurement:
    """Time one training step function by the rule: warm-up (`warmup_steps`, default the rule's), calibrated
    windows of at least `min_steps` steps (default the rule's), the stop rule. Its `median` is examples/s."""
    min_steps = rule.min_window_steps if min_steps is None else min_steps
    multiple = getattr(step, "workers", 1)  # a BurstAligned step: windows of whole bursts
    min_steps = multiple * math.ceil(min_steps / multiple)
    for _ in range(rule.warmup_steps if warmup_steps is None else warmup_steps):
        step()
    steps = multiple * math.ceil(steps_per_window(step, sync, rule.window_seconds, min_steps, clock=clock) / multiple)
    m = Measurement(steps, examples_per_step, rule.stop, rule.window_seconds, min_steps, multiple)
    measure_interleaved([(step, m)], sync, clock)
    return m


def windows_from_clock(marks: Sequence[tuple[int, Seconds]], warmup_steps: int = WARMUP_STEPS,
                       window_seconds: Seconds = WINDOW_SECONDS) -> list[tuple[int, Seconds]]:
    """(steps, seconds) windows from a training clock read after some steps -- `marks` are (step, training
    seconds so far), the device synchronised at each read and evaluations off the clock. Steps up to
    `warmup_steps` are warm-up (left out); consecutive stretches merge until each lasts `window_seconds`
    (a stretch of one step between two evaluations is too short to time on its own)."""
    points = sorted((int(s), float(t)) for s, t in marks)
    start = next((p for p in points if p[0] >= warmup_steps), None)
    if start is None:
        return []
    windows, (s0, t0) = [], start
    for s, t in points:
        if s <= s0:
            continue
        if t - t0 >= window_seconds:
            windows.append((s - s0, t - t0))
            s0, t0 = s, t
    return windows


def rate_of_windows(windows: Sequence[tuple[int, Seconds]], examples_per_step: int,
                    confidence: float = CONFIDENCE) -> tuple[float, float, float] | None:
    """(median examples/s, low, high) over (steps, seconds) windows; low/high NaN with too few windows
    for an interval; None without any window."""
    samples = [examples_per_step * k / t for k, t in windows if t > 0]
    if not samples:
        return None
    if len(samples) < min_windows_for(confidence):
        return float(np.median(samples)), math.nan, math.nan
    return median_interval(samples, confidence)
