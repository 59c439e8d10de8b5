"""How many DataLoader workers keep the training loop fed: examples/s for num_workers 0, 1, 2, 4, ...

At the largest useful batch size, each worker count runs the real training loop (next batch from a
fresh DataLoader with that many workers, copy, `train_step`) and is timed with the project's windows
and stop rule (stages/throughput/timing.py): median examples/s with its distribution-free interval.
The recommendation is the smallest count whose median lies within the interval of the best one (the
count with the highest lower end: surely the fastest, where a noisy count's wide interval would
otherwise make every count look as good): more workers cost processes, memory and start-up time, so a
count only wins by a measurable gain.

The counts are measured one after another, not interleaved like the batch sizes: a paused
DataLoader's workers keep loading into its prefetch queue, so the next window of an interleaved
count would start with batches loaded for free and look faster than it is. Each count first runs
untimed steps beyond its queue's depth, so its windows see the steady state, and its windows hold at
least two steps per worker: k workers deliver their batches in bursts of up to k, and a window of one
step would time either a burst (instant) or the wait between two.

Workloads whose batches are built in memory have no DataLoader (`loader_settings` None): nothing to
measure, and the stage says so instead of spending time.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from stages.core.config import ThroughputSettings
from stages.core.context import Context
from stages.core.device import synchronize, usable_cpus
from stages.core.log import info
from stages.core.optim import build_optimizer
from stages.core.train import build_model, train_step
from stages.throughput import timing
from stages.workloads.base import Workload, to_device

STAGE = "throughput"
TORCH_PREFETCH = 2  # batches each worker loads ahead when data.prefetch_factor is null (torch's default)
COLUMNS = ("num_workers", "batch_size", "examples_per_s", "examples_per_s_ci_low", "examples_per_s_ci_high",
           "windows", "stop_reason", "recommended")


def candidates(max_workers: int) -> list[int]:
    """0, 1, 2, 4, ... up to `max_workers`, which is included when it is not a power of two."""
    counts, k = [0], 1
    while k <= max_workers:
        counts.append(k)
        k *= 2
    if max_workers > 0 and counts[-1] != max_workers:
        counts.append(max_workers)
    return counts


def skip_reason(workload: Workload, s: ThroughputSettings) -> str | None:
    """Why the worker counts are not measured (None: they are)."""
    if workload.loader_settings is None:
        return f"workload {workload.name!r} builds its batches in memory (no DataLoader): no worker count to tune"
    if s.max_workers == 0:
        return "throughput.max_workers is 0"
    return None


def recommend(rows: list[dict]) -> int:
    """The smallest worker count whose median examples/s lies within the interval of the best count's,
    the best being the count whose interval's lower end is highest."""
    best = max(rows, key=lambda r: r["examples_per_s_ci_low"])
    return min(r["num_workers"] for r in rows if r["examples_per_s"] >= best["examples_per_s_ci_low"])


def measure(workload: Workload, counts: list[int], batch_size: int, seed: int, s: ThroughputSettings,
            make_step: Callable[[Workload], tuple[Callable[[], object], Callable[[], None]]],
            sync: Callable[[], None]) -> list[dict]:
    """One row per worker count: the median examples/s of the training loop and its interval.

    `make_step(workload)` returns (step, close): one training step drawing the next batch from a fresh
    iterator of that workload, and what shuts its workers down."""
    rule = timing.StopRule(s.min_windows, s.relative_precision, s.max_seconds_per_size, s.confidence)
    rows = []
    for k in counts:
        settings = dataclasses.replace(workload.loader_settings, num_workers=k)
        step, close = make_step(workload.with_loader_settings(settings))
        try:
            queued = k * (settings.prefetch_factor or TORCH_PREFETCH)  # loaded ahead while the workers start
            for _ in range(s.warmup_steps + queued):
                step()
            min_steps = max(s.min_window_steps, 2 * k)  # whole bursts of k batches per window
            steps = timing.steps_per_window(step, sync, s.window_seconds, min_steps)
            m = timing.Measurement(steps, batch_size, rule, s.window_seconds, min_steps)
            timing.measure_interleaved([(step, m)], sync)
        finally:
            close()  # this count's workers end before the next count's start
        rows.append({"num_workers": k, "batch_size": batch_size, "examples_per_s": m.median,
                     "examples_per_s_ci_low": m.ci_low, "examples_per_s_ci_high": m.ci_high,
                     "windows": m.windows, "stop_reason": m.stop_reason})
        info(STAGE, f"num_workers {k} at batch {batch_size}: {m.median:,.0f} examples/s "
                    f"[{m.ci_low:,.0f}, {m.ci_high:,.0f}] over {m.windows} windows ({m.stop_reason})")
    chosen = recommend(rows)
    for r in rows:
        r["recommended"] = r["num_workers"] == chosen
    return rows


def run(ctx: Context, batch_size: int, s: ThroughputSettings, learning_rate: float) -> tuple[list[dict], str | None]:
    """The rows of workers.csv (none when skipped) and why it was skipped (None when measured)."""
    skipped = skip_reason(ctx.workload, s)
    if skipped is not None:
        info(STAGE, f"num_workers not measured: {skipped}")
        return [], skipped
    device = ctx.device
    model = build_model(ctx.workload, ctx.params.runtime.seed, device)
    optimizer = build_optimizer(model.parameters(), ctx.params.optimizer, learning_rate)

    def make_step(w: Workload):
        data = w.batches("train", batch_size, ctx.params.runtime.seed)
        close = getattr(data, "close", lambda: None)  # a generator's close() ends its DataLoader's workers
        return (lambda: train_step(model, optimizer, w, to_device(next(data), device))), close

    counts = candidates(usable_cpus() if s.max_workers is None else s.max_workers)
    info(STAGE, f"timing num_workers {counts} at batch size {batch_size}, one count after another")
    return measure(ctx.workload, counts, batch_size, ctx.params.runtime.seed, s, make_step,
                   lambda: synchronize(device)), None


def summary(rows: list[dict], skipped: str | None) -> dict:
    """The worker keys (numbers and short labels): recommended_num_workers goes to metrics.json, the rest to
    diagnostics.json (stages/core/outputs.py)."""
    if not rows:
        return {"recommended_num_workers": None, "num_workers_batch_size": None,
                "examples_per_s_recommended_workers": None, "examples_per_s_0_workers": None,
                "num_workers_speedup": None, "num_workers_measured": False}
    chosen = next(r for r in rows if r["recommended"])
    base = next((r for r in rows if r["num_workers"] == 0), None)
    return {"recommended_num_workers": chosen["num_workers"], "num_workers_batch_size": chosen["batch_size"],
            "examples_per_s_recommended_workers": chosen["examples_per_s"],
            "examples_per_s_0_workers": None if base is None else base["examples_per_s"],
            "num_workers_speedup": None if base is None else chosen["examples_per_s"] / base["examples_per_s"],
            "num_workers_measured": True}


def notes(rows: list[dict], skipped: str | None, cpus: int) -> str:
    """diagnosis.md's section on the workers, in words: what the recommendation gains over num_workers 0."""
    if not rows:
        return f"Not measured: {skipped}."
    m = summary(rows, skipped)
    counts = ", ".join(str(r["num_workers"]) for r in rows)
    text = (f"At batch size {m['num_workers_batch_size']} (the largest useful), the training loop was timed with "
            f"num_workers {counts} ({cpus} CPU cores available). Recommended: **num_workers "
            f"{m['recommended_num_workers']}**, the smallest count whose median lies within the interval of the "
            f"best, at {m['examples_per_s_recommended_workers']:,.0f} examples/s")
    if m["examples_per_s_0_workers"] is not None and m["recommended_num_workers"] != 0:
        text += (f" against {m['examples_per_s_0_workers']:,.0f} with num_workers 0 ({m['num_workers_speedup']:.2f}x)"
                 f". select writes it into initial_config.yaml (`data.num_workers`).")
    else:
        text += ": loading batches in the training process is as fast as any worker count measured."
    return text + " Every count's interval is in workers.csv."
