"""Throughput stage: examples per second and time per step for every feasible batch size.

    python -m stages.throughput

Reads reports/probe/probe.csv (rows with status "fits") and reports/probe/diagnostics.json (probe's
device, echoed), and the params sections workload, optimizer, runtime, throughput, data. Writes
reports/throughput/:
  windows.csv         every timed window (batch size, mode, steps, seconds, examples/s)
  throughput.csv      one row per batch size: median examples/s and interval, time per step, the
                      data wait / copy / compute split, on-device examples/s and the input-bound
                      flag, the doubling ratio with its interval and regime, FLOPs and utilisation
  metrics.json        the largest useful batch size and the recommended DataLoader num_workers (null
                      where not measured): what a reviewer compares
  diagnostics.json    the rest: peak FLOP/s, device, threads, regimes, the workers' speed-up over 0,
                      the first step's overhead (select adds it), seconds
  workers.csv         examples/s per DataLoader num_workers at the largest measured batch size, with its
                      interval and the recommended count (header only for workloads without a
                      DataLoader: stages/throughput/workers.py); measured first, so that every size
                      is then timed with the recommended setting (the one a training run uses)
  diagnosis.md        the diagnosis in words, how FLOPs, intervals and the time split were measured,
                      and what the recommended num_workers gains
  devices.csv         with throughput.devices beyond [1]: per device count, data-parallel examples/s and
                      interval, scaling efficiency and interval, compute and communication per step
                      (stages/throughput/ddp.py); device_windows.csv: its timed windows
  examples_per_s.png, time_per_step.png, time_split.png, devices.png

Every step is `stages.core.train.train_step` with the configured optimizer at a small fixed learning
rate (the value does not change the work of a step; small keeps the weights finite). How timing
works and what the intervals mean: stages/throughput/timing.py.
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pandas as pd
import torch

from stages.throughput import devices, timing, workers
from stages.core.config import ThroughputSettings
from stages.core.errors import ConfigError, StudyError
from stages.core import timer
from stages.core.context import Context, setup
from stages.core.device import describe, synchronize, usable_cpus
from stages.core import outputs as out
from stages.core.io import write_csv, write_text
from stages.core.log import info
from stages.core.progress import Progress, duration
from stages.core.optim import build_optimizer
from stages.core.plotting import figure, save
from stages.core.train import build_model, count_flops, train_step
from stages.pipeline.declaration import load_stage_params
from stages.workloads.base import parameter_count, to_device

STAGE = "throughput"
MEASURE_LR = 1.0e-4  # learning rate of the timed steps
NOISY_SPREAD = 2.0   # fastest / slowest window of one size above this: the machine was not quiet
FLOPS_COUNTED = ("torch.utils.flop_counter.FlopCounterMode over one full training step (forward, backward, "
                 "optimizer step): matrix multiplies (mm, addmm, bmm, baddbmm, _scaled_mm), convolutions "
                 "(forward and backward) and scaled-dot-product / flash / efficient / flex attention (forward and "
                 "backward). Not counted: elementwise ops, activations, normalisation, reductions, losses, the "
                 "optimizer update.")
INTERVAL_METHOD = ("examples/s: median over windows, distribution-free order-statistic interval; ratios: "
                   "ratio of medians, percentile bootstrap (2000 resamples, fixed seed)")
SPLIT_METHOD = ("median seconds per step of each phase over split_steps extra steps, timed separately from the "
                "throughput windows with a device sync between phases (so they need not add up exactly to "
                "time_per_step_s; on a GPU they lose copy/compute overlap)")


# ---------------------------------------------------------------------------- inputs

def feasible_batch_sizes() -> list[int]:
    probe = out.read_csv(out.PROBE_CSV)
    return sorted(int(b) for b in probe.loc[probe["status"] == "fits", "batch_size"].unique())


def check_settings(s: ThroughputSettings) -> None:
    need = timing.min_windows_for(s.confidence)
    if s.min_windows < need:
        raise ConfigError(f"throughput.min_windows: received {s.min_windows}; allowed: at least {need}, the fewest "
                          f"windows that give a {s.confidence:.0%} interval for a median (or lower throughput.confidence)")


# ---------------------------------------------------------------------------- measurement

def workers_of(workload) -> int:
    """The DataLoader workers the workload's batches come from (0: built in memory or in the training process)."""
    return 0 if workload.loader_settings is None else workload.loader_settings.num_workers


def settle_steps(workload) -> int:
    """Untimed steps after switching to a size: 1, plus the batches a DataLoader's workers loaded ahead
    while other sizes were timed (workers x prefetch factor), which would otherwise come for free."""
    loader = workload.loader_settings
    if loader is None or loader.num_workers == 0:
        return 1
    return 1 + loader.num_workers * (loader.prefetch_factor or workers.TORCH_PREFETCH)


def measure_sizes(ctx: Context, sizes: list[int], s: ThroughputSettings) -> tuple[list[dict], list[dict], float | None, dict]:
    """Windows for every size in two modes (real pipeline; one batch kept on the device), interleaved
    round-robin, then the phase split (also interleaved) and the FLOPs per example; also the time of
    the very first training step (the smallest size's first warm-up step), or None without warm-up; and
    the drift of a reference size's time per step from before the windows to after them (`reference_time`).
    Batches come with ctx.workload's DataLoader settings: the recommended ones, where workers were measured.

    One model and optimizer serve every size (their cost does not depend on the weights), so memory
    never exceeds what the probe found for the largest size plus the kept batches."""
    w, device = ctx.workload, ctx.device
    settle = settle_steps(w)
    model = build_model(w, ctx.params.runtime.seed, device)
    optimizer = build_optimizer(model.parameters(), ctx.params.optimizer, MEASURE_LR)
    rule = timing.StopRule(s.min_windows, s.relative_precision, s.max_seconds_per_size, s.confidence)

    def sync() -> None:
        synchronize(device)

    def compute(batch) -> None:
        train_step(model, optimizer, w, batch)

    def pipeline_step(data):  # exactly what a training loop does: next batch, copy, train_step
        return lambda: train_step(model, optimizer, w, to_device(next(data), device))

    streams, data_of, step_of, extras = [], {}, {}, []
    first_step_s: float | None = None
    warm = Progress(STAGE, "warm-up and calibration", len(sizes))
    for i, b in enumerate(sizes):
        data_of[b] = data = w.batches("train", b, ctx.params.runtime.seed)
        step_of[b] = step = timer.BurstAligned(pipeline_step(data), workers_of(w))  # windows of whole bursts
        for k in range(s.warmup_steps + settle - 1):  # (with workers: beyond the batches they load ahead)
            if not extras and k == 0:
                # The very first step of a fresh model and optimizer carries one-off costs (optimizer
                # state, autograd's first pass) that a training run pays once: timed on its own.
                sync()
                started = time.perf_counter()
                step()
                sync()
                first_step_s = time.perf_counter() - started
            else:
                step()
        k = step.workers
        min_steps = k * math.ceil(max(s.min_window_steps, 2 * k if k > 1 else 1) / k)
        steps = k * math.ceil(timing.steps_per_window(step, sync, s.window_seconds, min_steps) / k)
        resident = to_device(next(data), device)
        flops = count_flops(lambda: compute(resident), STAGE)
        streams += [(b, "pipeline", step, timing.Measurement(steps, b, rule, s.window_seconds, min_steps, k)),
                    (b, "on_device", lambda r=resident: compute(r),
                     timing.Measurement(steps, b, rule, s.window_seconds, s.min_window_steps))]
        extras.append({"batch_size": b, "steps_per_window": steps,
                       "flops_per_example": flops / b if flops else None})
        warm.update(i + 1, f"batch {b}: {steps} steps per window, "
                           f"{'unknown' if not flops else f'{flops / b:,.0f}'} FLOPs per example")
    reference = sizes[len(sizes) // 2]  # timed again after everything else: how far the machine drifted
    before = reference_time(step_of[reference], sync, extras[len(sizes) // 2]["steps_per_window"])
    cap = len(streams) * s.max_seconds_per_size  # each stream stops by its time cap at the latest
    info(STAGE, f"timing {len(sizes)} sizes x 2 modes, interleaved (windows of ~{s.window_seconds:g} s; at most "
                f"about {duration(cap)} of windows)")
    timed = Progress(STAGE, "sizes x modes timed", len(streams))
    spent = [time.perf_counter()]
    timing.measure_interleaved([(step, m) for _, _, step, m in streams], sync, settle=settle,
                               progress=lambda done, total: timed.update(
                                   done, eta_s=max(0.0, cap - (time.perf_counter() - spent[0]))))
    per_round = max(1, s.split_steps // 5)
    phases = {b: {p: [] for p in timing.PHASES} for b in sizes}
    for done in range(0, s.split_steps, per_round):
        for b in sizes:
            for _ in range(settle - 1):  # the batches loaded ahead while other sizes ran are not a data wait
                step_of[b]()
            got = timing.split_steps(lambda: next(data_of[b]), lambda x: to_device(x, device), compute,
                                     min(per_round, s.split_steps - done), sync)
            for p in timing.PHASES:
                phases[b][p] += got[p]
    for e in extras:
        e.update({p: float(np.median(v)) for p, v in phases[e["batch_size"]].items()})
    after = reference_time(step_of[reference], sync, extras[len(sizes) // 2]["steps_per_window"])
    drift = {"reference_batch_size": reference, "reference_time_per_step_s": [before, after],
             "time_per_step_drift": abs(after / before - 1) if before > 0 else None}
    rows = [{"batch_size": b, "mode": mode, "window": i, "steps": k, "seconds": b * k / eps,
             "examples_per_s": eps, "stop_reason": m.stop_reason}
            for b, mode, _, m in streams for i, (k, eps) in enumerate(zip(m.steps, m.samples))]
    for data in data_of.values():
        getattr(data, "close", lambda: None)()  # each size's DataLoader workers end here
    del model, optimizer, streams
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows, extras, first_step_s, drift


REFERENCE_WINDOWS = 5  # windows of a reference step timed before and after the sizes (their median)


def reference_time(step, sync, steps_per_window: int) -> float:
    """The median time per step over REFERENCE_WINDOWS windows of one size: timed before and after all
    the other measurements, its change is how much this machine's speed moved while throughput ran --
    a time per step measured in another run (another clone, another load) differs at least that much,
    which select counts in its ties."""
    times = []
    for _ in range(REFERENCE_WINDOWS):
        sync()
        started = time.perf_counter()
        for _ in range(steps_per_window):
            step()
        sync()
        times.append((time.perf_counter() - started) / steps_per_window)
    return float(np.median(times))


def peak_flops(ctx: Context, s: ThroughputSettings) -> tuple[float | None, str]:
    dtype = next(ctx.workload.init_model().parameters()).dtype
    try:
        value, n = timing.peak_matmul_flops_per_s(ctx.device, dtype, lambda: synchronize(ctx.device), s.peak_seconds)
    except Exception as e:  # e.g. a backend without matmul for this dtype: say so, do not guess
        return None, f"not measurable: {type(e).__name__}: {e}"
    return value, (f"best of {n}x{n} {str(dtype).replace('torch.', '')} matmuls (2n^3 FLOPs each) over "
                   f"{s.peak_seconds:g} s on {describe(ctx.device)}, {ctx.threads} CPU threads")


# ---------------------------------------------------------------------------- analysis (from the windows file)

def loader_text(loader) -> str | None:
    """The DataLoader setting the sizes were timed with, in words (None: batches built in memory)."""
    if loader is None:
        return None
    return f"num_workers {loader.num_workers}" + (", persistent workers" if loader.persistent_workers else "")


def summarise(windows: pd.DataFrame, extras: list[dict], s: ThroughputSettings, peak: float | None,
              threads: int, loader: str | None = None) -> tuple[pd.DataFrame, dict]:
    """throughput.csv rows and the decisions (largest useful batch size, strict and not; diagnosis),
    computed from the windows."""
    rows, sizes = [], []
    split = {e["batch_size"]: {p: e[p] for p in timing.PHASES} for e in extras}
    for e in sorted(extras, key=lambda e: e["batch_size"]):
        b = e["batch_size"]
        pipe = windows[(windows.batch_size == b) & (windows["mode"] == "pipeline")].examples_per_s.tolist()
        dev = windows[(windows.batch_size == b) & (windows["mode"] == "on_device")].examples_per_s.tolist()
        med, lo, hi = timing.median_interval(pipe, s.confidence)
        dmed, dlo, dhi = timing.median_interval(dev, s.confidence)
        slow, slow_lo, slow_hi = timing.ratio_interval(dev, pipe, s.confidence, seed=b)
        stop = windows[(windows.batch_size == b) & (windows["mode"] == "pipeline")].stop_reason.iloc[-1]
        rows.append({"batch_size": b, "examples_per_s": med, "examples_per_s_ci_low": lo, "examples_per_s_ci_high": hi,
                     "time_per_step_s": b / med, "windows": len(pipe), "steps_per_window": e["steps_per_window"],
                     "stop_reason": stop, "relative_half_width": (hi - lo) / 2 / med,
                     "window_spread": max(pipe) / min(pipe),
                     **split[b], "on_device_examples_per_s": dmed, "on_device_ci_low": dlo, "on_device_ci_high": dhi,
                     "input_slowdown": slow, "input_slowdown_low": slow_lo, "input_slowdown_high": slow_hi,
                     "input_bound": bool(slow_lo > s.input_bound_ratio)})
        sizes.append(timing.SizeTiming(b, pipe, split[b]))
    doublings = timing.doubling_analysis(sizes, s.doubling_threshold, s.scaling_ratio, s.confidence)
    largest = timing.largest_useful_batch_size(doublings)
    for row, d in zip(rows, doublings):
        fpe = next(e["flops_per_example"] for e in extras if e["batch_size"] == row["batch_size"])
        achieved = None if fpe is None else fpe * row["examples_per_s"]
        row.update({"doubling_from": d.doubling_from, "doubling_ratio": d.doubling_ratio,
                    "doubling_ratio_low": d.doubling_ratio_low, "doubling_ratio_high": d.doubling_ratio_high,
                    "regime": d.regime, "grew_most": d.grew_most, "useful": row["batch_size"] <= largest,
                    "flops_per_example": fpe, "achieved_flops_per_s": achieved,
                    "utilisation": None if achieved is None or not peak else achieved / peak, "threads": threads})
    diagnosis = timing.diagnose(doublings, {r["batch_size"]: r["input_bound"] for r in rows}, split, s.scaling_ratio,
                                loader)
    worst = max(rows, key=lambda r: r["window_spread"])
    if worst["window_spread"] > NOISY_SPREAD:
        parked = (f" (with {threads} torch threads, every parallel region waits for any thread the OS has parked;"
                  f" runtime.threads below the free cores helps)" if threads > 1 else "")
        diagnosis += (f" Warning: window throughput varied up to {worst['window_spread']:.1f}x within batch size "
                      f"{worst['batch_size']}: something else used the device or CPU during the measurement{parked}, "
                      f"so intervals are wide; rerun on an idle machine.")
    return pd.DataFrame(rows), {"largest_useful_batch_size": largest,
                                "largest_clearly_useful_batch_size": timing.largest_useful_batch_size(doublings, strict=True),
                                "diagnosis": diagnosis}


def notes_markdown(diagnosis: str, peak_method: str) -> str:
    """diagnosis.md: the sentences behind the numbers in metrics.json and diagnostics.json."""
    return (f"## Diagnosis\n\n{diagnosis}\n\n## How it was measured\n\n"
            f"- Intervals: {INTERVAL_METHOD}.\n- Time split: {SPLIT_METHOD}.\n"
            f"- FLOPs per example: {FLOPS_COUNTED}\n- Peak FLOP/s: {peak_method}.\n")


# ---------------------------------------------------------------------------- plots

def plot(frame: pd.DataFrame, largest: int) -> None:
    examples_png, step_png, split_png = (o.path for o in out.THROUGHPUT_PLOTS)
    b = frame.batch_size
    fig, ax = figure("Throughput by batch size", "batch size", "examples / s", logx=True, logy=True)
    ax.errorbar(b, frame.examples_per_s, yerr=[frame.examples_per_s - frame.examples_per_s_ci_low,
                frame.examples_per_s_ci_high - frame.examples_per_s], marker="o", capsize=3, label="real input pipeline")
    ax.plot(b, frame.on_device_examples_per_s, "s--", alpha=0.7, label="one batch kept on the device")
    ax.plot(b, frame.examples_per_s.iloc[0] * b / b.iloc[0], ":", color="gray", label="ideal doubling")
    ax.axvline(largest, color="green", alpha=0.4, label=f"largest useful ({largest})")
    ax.legend()
    save(fig, examples_png)

    fig, ax = figure("Time per step by batch size", "batch size", "seconds / step", logx=True, logy=True)
    ax.errorbar(b, frame.time_per_step_s, yerr=[frame.time_per_step_s - b / frame.examples_per_s_ci_high,
                b / frame.examples_per_s_ci_low - frame.time_per_step_s], marker="o", capsize=3)
    save(fig, step_png)

    fig, ax = figure("Where a step's time goes", "batch size", "share of the step (%)")
    total = frame[list(timing.PHASES)].sum(axis=1)
    bottom = pd.Series(0.0, index=frame.index)
    labels = [str(x) for x in b]
    for phase in timing.PHASES:
        share = 100 * frame[phase] / total
        ax.bar(labels, share, bottom=bottom, label=timing.PHASE_NAMES[phase])
        bottom += share
    for i, t in enumerate(total):  # vertical: with a dozen sizes, horizontal labels run into each other
        ax.text(i, 101, f"{t * 1e3:.2g} ms", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_ylim(0, 122)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=7, frameon=False)
    save(fig, split_png)


# ---------------------------------------------------------------------------- main

def main() -> None:
    started = time.perf_counter()
    params = load_stage_params("throughput")
    s = params.throughput
    check_settings(s)
    feasible = feasible_batch_sizes()  # inputs checked before any measuring (and before any output is written)
    # probe's device, echoed for the reader: optional (throughput can run without probe's diagnostics), checked if there
    probe_device = out.read_json(out.PROBE_DIAGNOSTICS).get("device") if out.PROBE_DIAGNOSTICS.at().exists() else None
    sizes = [b for b in feasible if s.max_batch_size is None or b <= s.max_batch_size]
    if not sizes:
        raise StudyError(f"throughput: no batch size to measure: probe found {feasible or 'none'} feasible"
                         + (f", throughput.max_batch_size is {s.max_batch_size}" if s.max_batch_size else "")
                         + f" (see {out.PROBE_CSV.path})")
    ctx = setup(params=params)
    parallel_warning = devices.check(s, ctx.device, ctx.threads)  # bad device counts stop before any timing
    info(STAGE, f"{ctx.workload.name} on {describe(ctx.device)}, {ctx.threads} threads; sizes {sizes}")
    peak, peak_method = peak_flops(ctx, s)
    info(STAGE, f"peak matmul: {'n/a' if peak is None else f'{peak / 1e9:.1f} GFLOP/s'} ({peak_method})")
    # The DataLoader workers first (at the largest size: where loading costs most next to compute), so that
    # every size is then timed with the setting a training run will use -- select's choice and prediction
    # and the baseline then agree (stages/throughput/workers.py).
    worker_rows, workers_skipped = workers.run(ctx, sizes[-1], s, MEASURE_LR)
    loader = workers.recommended_settings(ctx.workload, worker_rows)
    timed = dataclasses.replace(ctx, workload=ctx.workload.with_loader_settings(loader)) if loader is not None else ctx
    if worker_rows:
        info(STAGE, f"timing every size with the recommended num_workers {loader.num_workers}"
                    f"{' (persistent workers)' if loader.persistent_workers else ''}")
    windows, extras, first_step_s, drift = measure_sizes(timed, sizes, s)
    frame_windows = pd.DataFrame(windows)
    frame, decision = summarise(frame_windows, extras, s, peak, ctx.threads, loader_text(loader))
    largest, diagnosis = decision["largest_useful_batch_size"], decision["diagnosis"]
    for r in frame.itertuples():
        info(STAGE, f"batch {r.batch_size}: {r.examples_per_s:,.0f} examples/s [{r.examples_per_s_ci_low:,.0f}, "
                    f"{r.examples_per_s_ci_high:,.0f}] over {r.windows} windows ({r.stop_reason}); on device "
                    f"{r.on_device_examples_per_s:,.0f}; data {r.data_wait_s * 1e3:.3g} ms, copy {r.copy_s * 1e3:.3g} ms, "
                    f"compute {r.compute_s * 1e3:.3g} ms per step; {r.regime}")
    parallel = devices.measure(ctx, s, largest) if devices.wanted(s) else []  # at the largest useful per-device batch
    parallel_table, parallel_windows = devices.frames(parallel, s.confidence)
    model = ctx.workload.init_model()
    metrics = {
        **workers.summary(worker_rows, workers_skipped, None if loader is None else ctx.workload.loader_settings.num_workers),
        # the DataLoader setting every size was timed with (null: batches built in memory)
        "measured_with_num_workers": None if loader is None else loader.num_workers,
        "measured_with_persistent_workers": None if loader is None else loader.persistent_workers,
        **decision,
        "feasible_batch_sizes": feasible,
        "measured_batch_sizes": sizes,
        "input_bound_batch_sizes": [int(b) for b in frame.batch_size[frame.input_bound]],
        "regimes": {str(r.batch_size): r.regime for r in frame.itertuples()},
        "peak_flops_per_s": peak,
        **drift,
        # a run's one-off start-up: its first step's time beyond a steady step at that size (select adds it
        # to the predicted time to target, which the baseline's clock includes)
        "first_step_overhead_s": None if first_step_s is None else max(
            0.0, first_step_s - float(frame.loc[frame["batch_size"] == sizes[0], "time_per_step_s"].iloc[0])),
        "device": describe(ctx.device),
        "probe_device": probe_device,
        "threads": ctx.threads,
        "confidence": s.confidence,
        "learning_rate": MEASURE_LR,
        "workload": ctx.workload.name,
        "parameter_count": parameter_count(model),
        **devices.metrics(parallel_table),
        "seconds": time.perf_counter() - started,
    }
    metrics.pop("diagnosis")  # prose: it goes to diagnosis.md, so `dvc metrics diff` rows stay short
    write_csv(out.THROUGHPUT_WINDOWS.path, frame_windows)
    write_csv(out.THROUGHPUT_CSV.path, frame)
    out.write_results(out.THROUGHPUT_METRICS, out.THROUGHPUT_DIAGNOSTICS, metrics)
    write_csv(out.THROUGHPUT_WORKERS.path, pd.DataFrame(worker_rows, columns=list(workers.COLUMNS)))
    write_csv(out.THROUGHPUT_DEVICES.path, parallel_table)
    write_csv(out.THROUGHPUT_DEVICE_WINDOWS.path, parallel_windows)
    parallel_notes = devices.notes(parallel_table, parallel_warning)
    write_text(out.THROUGHPUT_NOTES.path, notes_markdown(diagnosis, peak_method)
               + f"\n## DataLoader workers\n\n{workers.notes(worker_rows, workers_skipped, usable_cpus(), 0 if loader is None else ctx.workload.loader_settings.num_workers)}\n"
               + (f"\n## Data parallelism\n\n{parallel_notes}\n" if parallel_notes else ""))
    plot(frame, largest)
    devices.plot(parallel_table)
    info(STAGE, f"largest useful batch size {largest}. {diagnosis}")

