"""How many DataLoader workers keep the training loop fed: examples/s for num_workers 0, 1, 2, 4, ...

Measured first, at the largest batch size throughput measures (the size whose loading costs most per
step next to its compute: workers enough there are enough below it), each worker count running the real
training loop (next batch from a fresh DataLoader with that many workers, copy, `train_step`) timed by
the one timer (stages/core/timer.py): median examples/s with its distribution-free interval. Every
batch size of the stage is then timed with the recommended setting, so the time per step select uses
is the one a run started with that setting takes.

The recommendation is the smallest count whose median lies within the interval of the best one (the
count with the highest lower end): more workers cost processes, memory and start-up time, so a count
only wins by a measurable gain. If any count's interval is wider than +-50% of its median, the counts
cannot be ranked: that is said, and the recommendation is the configured `data.num_workers`.

Workers persist across epochs (`persistent_workers`) where the Dataset allows it -- it does unless it
has a `set_epoch` method, whose per-epoch state would stay behind in persistent workers' copies; then
workers restart at each epoch boundary, as in training, and each window spans at least one epoch (up to
EPOCH_WINDOW_CAP steps) so every window pays its share of the restart. Without this, on a small dataset
(an epoch of a few batches) every epoch restarted the workers and 1 or 2 workers measured 30-60x slower
than 0.

The counts are measured one after another, not interleaved like the batch sizes: a paused
DataLoader's workers keep loading into its prefetch queue. Each count first runs untimed steps beyond
its queue's depth, so its windows see the steady state, and its windows hold at least two steps per
worker: k workers deliver their batches in bursts of up to k.

Workloads whose batches are built in memory have no DataLoader (`loader_settings` None): nothing to
measure, and the stage says so instead of spending time.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from stages.core.config import ThroughputSettings
from stages.core.context import Context
from stages.core.device import synchronize, usable_cpus
from stages.core import timer
from stages.core.log import info, sig
from stages.core.progress import Progress
from stages.core.optim import build_optimizer
from stages.core.train import build_model, train_step
from stages.throughput import timing
from stages.workloads.base import Workload, to_device

STAGE = "throughput"
TORCH_PREFETCH = 2       # batches each worker loads ahead when data.prefetch_factor is null (torch's default)
NOISY_HALF_WIDTH = 0.5   # a count whose interval's half-width exceeds this fraction of its median cannot be ranked
EPOCH_WINDOW_CAP = 64    # most steps a window spans to include an epoch boundary (non-persistent workers)
COLUMNS = ("num_workers", "batch_size", "persistent_workers", "examples_per_s", "examples_per_s_ci_low",
           "examples_per_s_ci_high", "relative_half_width", "windows", "stop_reason", "recommended")


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


def persistent_allowed(dataset) -> bool:
    """Workers may persist across epochs unless the Dataset keeps per-epoch state (a `set_epoch` method)."""
    return not hasattr(dataset, "set_epoch")


def settings_for(workload: Workload, k: int):
    """The DataLoader settings measured with k workers: persistent across epochs where the Dataset allows."""
    base = workload.loader_settings
    persistent = k > 0 and (base.persistent_workers or persistent_allowed(getattr(workload, "train_set", None)))
    return dataclasses.replace(base, num_workers=k, persistent_workers=persistent)


def too_noisy(rows: list[dict]) -> list[int]:
    """The worker counts whose interval is too wide to rank them (half-width above NOISY_HALF_WIDTH of the median)."""
    return [r["num_workers"] for r in rows if not r["relative_half_width"] <= NOISY_HALF_WIDTH]


def recommend(rows: list[dict], configured: int | None = None) -> int:
    """The smallest worker count whose median examples/s lies within the interval of the best count's,
    the best being the count whose interval's lower end is highest; the `configured` count (when given)
    if any count is too noisy to rank."""
    if configured is not None and too_noisy(rows):
        return configured
    best = max(rows, key=lambda r: r["examples_per_s_ci_low"])
    return min(r["num_workers"] for r in rows if r["examples_per_s"] >= best["examples_per_s_ci_low"])


def measure(workload: Workload, counts: list[int], batch_size: int, seed: int, s: ThroughputSettings,
            make_step: Callable[[Workload], tuple[Callable[[], object], Callable[[], None]]],
            sync: Callable[[], None]) -> list[dict]:
    """One row per worker count: the median examples/s of the training loop and its interval.

    `make_step(workload)` returns (step, close): one training step drawing the next batch from a fresh
    iterator of that workload, and what shuts its workers down."""
    rule = timer.rule_of(s)
    rows = []
    n_train = getattr(workload, "num_train_examples", None)
    progress = Progress(STAGE, f"num_workers at batch size {batch_size}", len(counts), every_s=0.0)
    for i, k in enumerate(counts):
        settings = settings_for(workload, k)
        step, close = make_step(workload.with_loader_settings(settings))
        step = timer.BurstAligned(step, k)  # k workers deliver k batches at a time: windows of whole bursts
        try:
            queued = k * (settings.prefetch_factor or TORCH_PREFETCH)  # loaded ahead while the workers start
            min_steps = max(s.min_window_steps, 2 * k)  # at least two bursts of k batches per window
            if k > 0 and not settings.persistent_workers and n_train:  # each window pays for an epoch's restart
                min_steps = max(min_steps, min(EPOCH_WINDOW_CAP, n_train // batch_size))
            m = timer.time_steps(step, batch_size, rule, sync, min_steps, warmup_steps=s.warmup_steps + queued)
        finally:
            close()  # this count's workers end before the next count's start
        rows.append({"num_workers": k, "batch_size": batch_size, "persistent_workers": settings.persistent_workers,
                     "examples_per_s": m.median, "examples_per_s_ci_low": m.ci_low, "examples_per_s_ci_high": m.ci_high,
                     "relative_half_width": m.relative_half_width, "windows": m.windows, "stop_reason": m.stop_reason})
        progress.update(i + 1, f"num_workers {k}: {m.median:,.0f} examples/s [{m.ci_low:,.0f}, {m.ci_high:,.0f}] "
                               f"over {m.windows} windows ({m.stop_reason})")
    chosen = recommend(rows, workload.loader_settings.num_workers)
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
    info(STAGE, f"timing num_workers {counts} at batch size {batch_size}, one count after another (each about "
                f"{s.max_seconds_per_size:g} s of windows at most, after its warm-up)")
    return measure(ctx.workload, counts, batch_size, ctx.params.runtime.seed, s, make_step,
                   lambda: synchronize(device)), None


def recommended_settings(workload: Workload, rows: list[dict]):
    """The DataLoader settings to train with (and to time every batch size with): the recommended count,
    persistent across epochs as it was measured; the workload's own settings when nothing was measured."""
    if not rows:
        return workload.loader_settings
    return settings_for(workload, next((r["num_workers"] for r in rows if r["recommended"]),
                                       workload.loader_settings.num_workers))


def summary(rows: list[dict], skipped: str | None, configured: int | None = None) -> dict:
    """The worker keys (numbers and short labels): recommended_num_workers goes to metrics.json, the rest to
    diagnostics.json (stages/core/outputs.py)."""
    if not rows:
        return {"recommended_num_workers": None, "recommended_persistent_workers": None, "num_workers_batch_size": None,
                "examples_per_s_recommended_workers": None, "examples_per_s_0_workers": None,
                "num_workers_speedup": None, "num_workers_measured": False, "num_workers_too_noisy": []}
    chosen = next((r for r in rows if r["recommended"]), None)
    base = next((r for r in rows if r["num_workers"] == 0), None)
    recommended = chosen["num_workers"] if chosen else configured
    eps = chosen["examples_per_s"] if chosen else None
    return {"recommended_num_workers": recommended,
            "recommended_persistent_workers": bool(chosen["persistent_workers"]) if chosen else None,
            "num_workers_batch_size": rows[0]["batch_size"],
            "examples_per_s_recommended_workers": eps,
            "examples_per_s_0_workers": None if base is None else base["examples_per_s"],
            "num_workers_speedup": None if base is None or eps is None else eps / base["examples_per_s"],
            "num_workers_measured": True, "num_workers_too_noisy": too_noisy(rows)}


def _interval(r: dict) -> str:
    return f"{sig(r['examples_per_s'])} [{sig(r['examples_per_s_ci_low'])}, {sig(r['examples_per_s_ci_high'])}]"


def notes(rows: list[dict], skipped: str | None, cpus: int, configured: int = 0) -> str:
    """diagnosis.md's section on the workers, in words: every count's interval, the recommendation and what
    it gains over num_workers 0 -- or that the counts were too noisy to rank."""
    if not rows:
        return f"Not measured: {skipped}."
    m = summary(rows, skipped, configured)
    persistent = [r["num_workers"] for r in rows if r["persistent_workers"]]
    every = "; ".join(f"{r['num_workers']}: {_interval(r)}" for r in rows)
    text = (f"Measured first, at batch size {m['num_workers_batch_size']} (the largest measured: where loading costs "
            f"most next to compute), the training loop timed with each DataLoader num_workers ({cpus} CPU cores "
            f"available), examples/s with 95% intervals -- {every}. "
            + ("Workers persisted across epochs. " if persistent and len(persistent) == len(rows) - 1 else
               "Workers restarted at each epoch (the Dataset has set_epoch): each window spans an epoch boundary. "
               if len(rows) > 1 else ""))
    noisy = m["num_workers_too_noisy"]
    if noisy:
        return text + (f"**Too noisy to rank**: the interval of num_workers {', '.join(map(str, noisy))} is wider than "
                       f"+-{NOISY_HALF_WIDTH:.0%} of its median, so no count can be said to be faster; the "
                       f"recommendation falls back to the configured **num_workers {configured}** (`data.num_workers`). "
                       f"Rerun on a quieter machine or raise throughput.max_seconds_per_size.")
    text += (f"Recommended: **num_workers {m['recommended_num_workers']}**, the smallest count whose median lies within "
             f"the interval of the surely fastest (the highest lower end), at "
             f"{sig(m['examples_per_s_recommended_workers'])} examples/s")
    if m["examples_per_s_0_workers"] is not None and m["recommended_num_workers"] != 0:
        text += (f", {sig(m['num_workers_speedup'])}x num_workers 0 ({sig(m['examples_per_s_0_workers'])}). Every batch "
                 f"size below was timed with it, and select writes it into initial_config.yaml (`data`).")
    else:
        text += (": its median lies within the interval of the surely fastest count, so no count with workers "
                 "was measurably faster than loading in the training process.")
    return text
