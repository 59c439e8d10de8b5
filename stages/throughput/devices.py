"""The throughput stage's data-parallel part: check `throughput.devices` against this machine, time every
device count (stages/throughput/ddp.py), and turn the results into devices.csv, device_windows.csv,
devices.png and a paragraph of diagnosis.md. With the default `devices: [1]` nothing is timed and the
outputs hold no rows (the stage costs what it did before)."""
from __future__ import annotations

import math

import pandas as pd
import torch

from stages.core import outputs as out
from stages.core.config import ThroughputSettings
from stages.core.context import Context
from stages.core.device import check_device_counts, usable_cpus
from stages.core.log import info
from stages.core.plotting import figure, save
from stages.throughput import ddp, timing

STAGE = "throughput"
WINDOW_COLUMNS = ("devices", "mode", "window", "steps", "seconds", "examples_per_s")


def wanted(s: ThroughputSettings) -> bool:
    return len(s.devices) > 1


def check(s: ThroughputSettings, device: torch.device, threads: int) -> str:
    """Raise ConfigError (before any measuring) for device counts this machine cannot run; return a warning
    ('' if none) for a CPU run that needs more cores than it has (the processes then share cores, and the
    efficiency measures that sharing too)."""
    if not wanted(s):
        return ""
    most = max(s.devices)
    check_device_counts(s.devices, device)  # also in every stage's setup (stages/core/context.py)
    cores = usable_cpus()
    if device.type == "cpu" and most * threads > cores:
        return (f"{most} processes x {threads} thread(s) need {most * threads} cores, but this process may use "
                f"{cores}: the processes share cores, so the measured efficiency includes that sharing.")
    return ""


def measure(ctx: Context, s: ThroughputSettings, per_device_batch_size: int) -> list[ddp.GroupResult]:
    """One group of processes per device count, in increasing order."""
    p = ctx.params
    results = []
    for n in s.devices:
        info(STAGE, f"data-parallel: {n} device(s) x batch {per_device_batch_size}, spawning {n} process(es)")
        job = ddp.GroupJob(p.workload.name, dict(p.workload.kwargs), p.optimizer, p.runtime.seed, ctx.threads,
                           ctx.device.type, n, per_device_batch_size, s.warmup_steps, s.window_seconds,
                           s.min_window_steps,
                           timing.StopRule(s.min_windows, s.relative_precision, s.max_seconds_per_size, s.confidence),
                           s.device_timeout_s)
        results.append(ddp.run_group(job, lambda message: info(STAGE, message)))
    return results


def frames(results: list[ddp.GroupResult], confidence: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(devices.csv, device_windows.csv); both keep their columns when nothing was measured."""
    rows = ddp.summarise(results, confidence)
    windows = [w for r in results for w in r.windows]
    return (pd.DataFrame(rows, columns=list(ddp.COLUMNS)), pd.DataFrame(windows, columns=list(WINDOW_COLUMNS)))


def metrics(table: pd.DataFrame) -> dict:
    """Numbers for diagnostics.json: the device counts measured and each one's efficiency (null if it failed)."""
    eff = {str(int(r.devices)): (None if not math.isfinite(r.scaling_efficiency) else float(r.scaling_efficiency))
           for r in table.itertuples() if r.devices > 1}
    return {"devices_measured": [int(d) for d in table.loc[table["status"] == "ok", "devices"]],
            "scaling_efficiency_measured": eff}


def notes(table: pd.DataFrame, warning: str) -> str:
    """The paragraph of diagnosis.md; '' when only one device count was asked for."""
    if table.empty:
        return ""
    lines = []
    for r in table.itertuples():
        if r.status != "ok":
            lines.append(f"- {r.devices} device(s): {r.status} -- {r.reason}")
            continue
        eff = ("" if r.devices == 1 or not math.isfinite(r.scaling_efficiency) else
               f", scaling efficiency {r.scaling_efficiency:.2f} [{r.scaling_efficiency_ci_low:.2f}, "
               f"{r.scaling_efficiency_ci_high:.2f}]")
        share = r.communication_s / r.time_per_step_s
        lines.append(f"- {r.devices} device(s), {r.global_batch_size} examples per step: {r.examples_per_s:,.0f} "
                     f"examples/s [{r.examples_per_s_ci_low:,.0f}, {r.examples_per_s_ci_high:,.0f}]{eff}; per step "
                     f"{r.compute_s * 1e3:.3g} ms compute, {r.communication_s * 1e3:.3g} ms communication not hidden "
                     f"({share:.0%} of the step{': the all-reduce, not compute, limits scaling' if share > 0.5 and r.devices > 1 else ''})")
    first = table.iloc[0]
    text = (f"Per-device batch {int(first.per_device_batch_size)} (the largest useful batch size), "
            f"{first.backend or 'no'} backend:\n\n" + "\n".join(lines) + f"\n\nMethod: {ddp.METHOD}")
    return text + (f"\n\nWarning: {warning}" if warning else "")


def plot(table: pd.DataFrame) -> None:
    """devices.png: examples/s by device count with its interval, and the ideal (linear) line from one device."""
    fig, ax = figure("Throughput by device count (data parallel)", "devices", "examples / s")
    ok = table[table["status"] == "ok"]
    if len(ok):
        ax.errorbar(ok.devices, ok.examples_per_s, yerr=[ok.examples_per_s - ok.examples_per_s_ci_low,
                    ok.examples_per_s_ci_high - ok.examples_per_s], marker="o", capsize=3, label="measured")
        ideal = ok[ok.ideal_examples_per_s.notna()]
        ax.plot(ideal.devices, ideal.ideal_examples_per_s, ":", color="gray", label="ideal (linear in devices)")
        for r in ideal[ideal.devices > 1].itertuples():
            ax.annotate(f"efficiency {r.scaling_efficiency:.2f}", (r.devices, r.examples_per_s),
                        textcoords="offset points", xytext=(-8, 8), ha="right", fontsize=8)
        ax.set_xticks(list(table.devices))
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no data-parallel measurement\n(throughput.devices lists one device count)"
                if table.empty else "every device count failed (see devices.csv)",
                ha="center", va="center", transform=ax.transAxes)
    save(fig, out.THROUGHPUT_DEVICES_PLOT.path)
