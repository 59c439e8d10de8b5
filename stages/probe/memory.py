"""Memory for the feasibility probe: the pure, testable pieces.

- OOM classification: exception type first (`torch.OutOfMemoryError`, `MemoryError`), then a table
  of device messages, then a child killed by a signal. Each answer names the rule that fired.
- Peak memory of the current process on its device (`PeakMeter`): CUDA peak allocated/reserved
  (reset at start), MPS driver memory sampled per step, CPU peak resident set size (reset at start).
- Memory budget: 'auto' = the device's capacity (CPU: physical RAM, or the limit of this process's
  own cgroup or an ancestor if lower), minus a safety margin; a CPU trial's address space is bounded
  to it; the parameters, gradients and optimizer state alone must fit it.
- The memory model peak = fixed + per_example x batch_size, and the size it predicts for the limit.
"""
from __future__ import annotations

import math
import os
import resource
import signal
import sys
from dataclasses import dataclass

import numpy as np
import torch

from stages.core.log import human_bytes
from stages.core.device import OOM_MESSAGES, classify_exception, classify_message  # noqa: F401 (the probe's names)
from stages.core.types import BatchSize, Bytes


# ---------------------------------------------------------------------------- OOM classification
# The OOM predicate itself (exception type, then device messages) is stages/core/device.py's, shared by
# every stage that trains; here the probe adds the case of a trial child killed by a signal.

def classify_signal(signum: int) -> tuple[str, str]:
    """(rule, reason) for a trial process killed by signal `signum`."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    reason = f"the trial process was killed by {name}"
    if name == "SIGKILL":
        reason += " (on Linux usually the kernel's out-of-memory killer)"
    elif name == "SIGALRM":
        reason = "the trial ran longer than probe.trial_timeout_s and was stopped (SIGALRM): swapping, or a hung model"
    return f"signal:{name}", reason


# ---------------------------------------------------------------------------- peak memory

def _proc_status_bytes(field: str) -> Bytes | None:
    """A 'Vm...' line of /proc/self/status in bytes (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


def _write_proc(path: str, text: str) -> bool:
    """Write a /proc/self control file; False where the kernel (or the OS) does not offer it."""
    try:
        with open(path, "w") as f:
            f.write(text)
        return True
    except OSError:
        return False


def volunteer_for_oom_killer() -> bool:
    """Make this process the Linux OOM killer's first victim (oom_score_adj 1000; raising it needs no
    privilege), so a trial that exhausts RAM dies instead of the stage, the server or the user's other work."""
    return _write_proc("/proc/self/oom_score_adj", "1000")


def reset_rss_peak() -> bool:
    """Reset this process's peak-RSS mark to its current RSS (Linux >= 4.0); False if impossible."""
    return _write_proc("/proc/self/clear_refs", "5")


def rss_peak_bytes() -> Bytes:
    """Peak resident set size: VmHWM (Linux), else ru_maxrss (kB on Linux, bytes on macOS)."""
    hwm = _proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


@dataclass(frozen=True)
class Peak:
    peak_memory_bytes: Bytes             # CUDA: peak allocated; MPS: peak driver-allocated; CPU: peak RSS
    peak_reserved_bytes: Bytes | None    # CUDA: peak reserved by the caching allocator; else None
    baseline_memory_bytes: Bytes | None  # CPU: RSS when the measurement started (interpreter, libraries, data)
    method: str                          # what the number is, for the record


class PeakMeter:
    """Peak memory of this process on `device` from `start()` on; `sample()` after each step (MPS)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._mps_peak = 0
        self._baseline: Bytes | None = None
        self._method = ""

    def start(self) -> None:
        kind = self.device.type
        if kind == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._method = "torch.cuda.max_memory_allocated (peak reserved in peak_reserved_bytes), reset at trial start; excludes the CUDA context"
        elif kind == "mps":
            self._mps_peak = torch.mps.driver_allocated_memory()
            self._method = "torch.mps.driver_allocated_memory, sampled after every step and the evaluation forward"
        else:
            self._baseline = _proc_status_bytes("VmRSS")
            if reset_rss_peak():
                self._method = ("peak resident set size of the trial process (VmHWM, reset at trial start): includes "
                                "the interpreter, torch's libraries and the workload's data")
            else:
                self._method = ("peak resident set size of the trial process since it started (ru_maxrss): includes "
                                "the interpreter, torch's libraries, the workload's data and what the process inherited")

    def sample(self) -> None:
        if self.device.type == "mps":
            self._mps_peak = max(self._mps_peak, torch.mps.driver_allocated_memory())

    def read(self) -> Peak:
        kind = self.device.type
        if kind == "cuda":
            return Peak(int(torch.cuda.max_memory_allocated(self.device)),
                        int(torch.cuda.max_memory_reserved(self.device)), None, self._method)
        if kind == "mps":
            self.sample()
            return Peak(int(self._mps_peak), None, None, self._method)
        return Peak(rss_peak_bytes(), None, self._baseline, self._method)


# ---------------------------------------------------------------------------- budget

def cgroup_memory_limit(proc_cgroup: str, root: str = "/sys/fs/cgroup") -> tuple[Bytes, str] | None:
    """(bytes, file) of the tightest memory limit on this process's own cgroup and its ancestors, or
    None. `proc_cgroup` is /proc/self/cgroup's text: under SLURM or a systemd scope the limit sits on
    the job's cgroup, not the top level. v2: memory.max and memory.high ("max" = none); v1: the
    memory controller's memory.limit_in_bytes (a huge number = none)."""
    limits: list[tuple[Bytes, str]] = []
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2 unified hierarchy
            base, files = root, ("memory.max", "memory.high")
        elif "memory" in controllers.split(","):
            base, files = os.path.join(root, "memory"), ("memory.limit_in_bytes",)
        else:
            continue
        rel = path.strip("/")
        while True:  # this cgroup, then each ancestor up to the root
            for name in files:
                file = os.path.join(base, rel, name) if rel else os.path.join(base, name)
                try:
                    text = open(file).read().strip()
                except OSError:
                    continue
                if text.isdigit() and 0 < int(text) < 2**60:
                    limits.append((int(text), file))
            if not rel:
                break
            rel = os.path.dirname(rel)
    return min(limits) if limits else None


def physical_memory_bytes() -> tuple[Bytes, str]:
    """(bytes, source): physical RAM, or this process's cgroup memory limit if lower."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = cgroup_memory_limit(open("/proc/self/cgroup").read())
    except OSError:
        limit = None
    if limit is not None and limit[0] < ram:
        return limit[0], f"cgroup memory limit ({limit[1]})"
    return ram, "physical RAM"


def training_state_bytes(parameter_bytes: Bytes, optimizer_state_copies: int) -> Bytes:
    """Memory every training step holds whatever the batch size: the parameters, their gradients and
    the optimizer's per-parameter state (copies of the parameters' size)."""
    return parameter_bytes * (2 + optimizer_state_copies)


def limit_address_space(limit: Bytes) -> Bytes | None:
    """Bound this (CPU trial) process so it cannot grow its resident memory past `limit`: its address
    space may grow by `limit` less what is resident now. An allocation beyond fails in this process
    alone -- torch's CPU allocator raises, the trial is recorded as oom -- instead of the kernel's
    OOM killer (or swapping) taking the machine. Returns the bound set, or None where not possible."""
    size, resident = _proc_status_bytes("VmSize"), _proc_status_bytes("VmRSS")
    if size is None or resident is None:
        return None
    bound = size + max(limit - resident, 0)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (bound, resource.getrlimit(resource.RLIMIT_AS)[1]))
    except (ValueError, OSError):
        return None
    return bound


def device_capacity_bytes(device: torch.device) -> tuple[Bytes, str]:
    """(bytes, source) of the memory a process can use on `device`. Initialises CUDA: call it in a child."""
    if device.type == "cuda":
        _free, total = torch.cuda.mem_get_info(device)
        return int(total), "torch.cuda.mem_get_info total"
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        return int(torch.mps.recommended_max_memory()), "torch.mps.recommended_max_memory"
    return physical_memory_bytes()


def resolve_budget(setting: str, capacity: Bytes) -> Bytes:
    """probe.memory_budget -> bytes: 'auto' is the device capacity, else a size such as '6GiB'."""
    from stages.core.config import parse_size

    return capacity if setting == "auto" else parse_size(setting)


def memory_limit(budget: Bytes, safety_margin: float) -> Bytes:
    """The peak a trial may reach: the budget minus its safety margin."""
    return int(math.floor(budget * (1.0 - safety_margin)))


# ---------------------------------------------------------------------------- memory model

@dataclass(frozen=True)
class MemoryModel:
    fixed_bytes: float | None        # ~ parameters, gradients, optimizer state (+ process baseline on CPU)
    per_example_bytes: float | None  # ~ activations per example
    r2: float | None                 # coefficient of determination of the fit
    points: int                      # distinct batch sizes fitted


def fit_memory_model(batch_sizes: list[BatchSize], peaks: list[float]) -> MemoryModel:
    """Least-squares fit peak = fixed + per_example x batch_size (needs two distinct sizes)."""
    x = np.asarray(batch_sizes, dtype=float)
    y = np.asarray(peaks, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    points = len(set(x.tolist()))
    if points < 2:
        return MemoryModel(None, None, None, points)
    per_example, fixed = np.polyfit(x, y, 1)
    residual = float(np.sum((y - (fixed + per_example * x)) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - residual / total if total > 0 else 1.0
    return MemoryModel(float(fixed), float(per_example), r2, points)


MIN_GROWTH_BYTES = 1 << 20   # a peak that grows less than this over the sizes fitted is within the measurement's noise
MIN_GROWTH_FRACTION = 0.01   # ... or less than this fraction of the peak (RSS and allocator jitter on the CPU)
MIN_FIT_R2 = 0.9             # peaks further from a line than this cannot be extrapolated to the limit


def fit_problem(model: MemoryModel, batch_sizes: list[BatchSize], peaks: list[float]) -> str | None:
    """Why the fitted line cannot predict the largest size under the limit (None: it can): fewer than two
    sizes, memory that does not grow with the batch size (0 B or less per example), growth over the sizes
    fitted within the measurement's noise (a tiny model on the CPU: a line through jitter predicts sizes
    like 1.6e+20), or peaks that do not lie on a line."""
    if model.points < 2 or model.per_example_bytes is None:
        return f"{model.points} batch size(s) fit, and a line needs two"
    sizes = [b for b, y in zip(batch_sizes, peaks) if y is not None and math.isfinite(y)]
    growth = model.per_example_bytes * (max(sizes) - min(sizes))
    peak = max(y for y in peaks if y is not None and math.isfinite(y))
    if model.per_example_bytes <= 0:
        return (f"the peak did not grow with the batch size ({round(model.per_example_bytes):d} B per example over batch "
                f"sizes {min(sizes)}-{max(sizes)})")
    if growth < max(MIN_GROWTH_BYTES, MIN_GROWTH_FRACTION * peak):
        return (f"the peak grew by {human_bytes(growth)} over batch sizes {min(sizes)}-{max(sizes)} "
                f"({model.per_example_bytes:.3g} B per example), less than the measurement resolves "
                f"(max(1 MiB, 1% of the {peak / 2**20:.1f} MiB peak)): the activations are too small to measure here")
    if model.r2 is not None and model.r2 < MIN_FIT_R2:
        return f"the peaks do not lie on a line (R^2 {model.r2:.2f} < {MIN_FIT_R2})"
    return None


def predicted_max_batch_size(model: MemoryModel, limit: Bytes) -> BatchSize | None:
    """The largest batch size the fitted model keeps under `limit`; None if memory does not grow with it."""
    if model.fixed_bytes is None or model.per_example_bytes is None or model.per_example_bytes <= 0:
        return None
    return max(0, int(math.floor((limit - model.fixed_bytes) / model.per_example_bytes)))
