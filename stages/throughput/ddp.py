"""Data-parallel throughput, measured: DistributedDataParallel training at one per-device batch size
on 1, 2, ... devices, each device count in its own group of freshly spawned processes.

Why a measurement: `select` divides a multi-device step's time by a scaling efficiency; assumed, it is
a guess (0.9); measured, it is examples/s on N devices / (N x examples/s on one device) with an interval.

How (one group per device count, the counts one after another):
- N processes are spawned (`torch.multiprocessing`, spawn: a fresh interpreter, never a fork of a
  process whose OpenMP pool exists), joined into a process group over a free localhost port
  (gloo on CPU, nccl on CUDA with rank r on cuda:r). On the CPU each process fixes its own
  runtime.threads torch threads, so N processes use N x threads cores.
- Every rank trains the same model (same seed) wrapped in DistributedDataParallel with the
  configured optimizer, each on its own data order (seed + rank): `stages.core.train.train_step`.
- Two streams of timed windows, alternated window by window (interleaving spreads a slow spell
  of the machine over both): *synced* steps (gradients all-reduced every step, what training
  does) and *local* steps under `DistributedDataParallel.no_sync()` (no communication: the compute
  of the same step). A window's time is the slowest rank's (all-reduce MAX), and its examples are
  N x the per-device batch. Rank 0 runs `timing.Measurement`'s stop rule and tells every rank
  (a broadcast) which window comes next and when to stop, so every rank runs the same number of
  synced steps -- a rank that ran one more would wait in an all-reduce forever.
- Communication per step = time per synced step - time per local step: the part of the all-reduce
  that backward's compute did not hide (DDP overlaps bucket all-reduces with backward). At N = 1 it
  is the wrapper's own cost.
- Failures are data: a rank that raises reports its error before it exits; a rank that dies (a
  signal, the OOM killer) is seen by its exit code; a group still running after `timeout_s` is
  killed. Process-group set-up and every collective carry the same timeout, so nothing hangs.
"""
from __future__ import annotations

import math
import os
import queue
import socket
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stages.core.config import OptimizerSettings
from stages.core.device import configure_cpu, synchronize
from stages.core.optim import build_optimizer
from stages.core.train import build_model, train_step
from stages.core.types import BatchSize, Seconds
from stages.throughput import timing
from stages.workloads.base import make_workload, to_device

MEASURE_LR = 1.0e-4  # the throughput stage's: the value does not change a step's work
MODES = ("synced", "local")  # all-reduce every step; under no_sync() (compute only)
_STOP = -1
ERROR_GRACE_S = 2.0  # after a rank died, how long the others may take to report their own error


@dataclass(frozen=True)
class GroupJob:
    """Everything a rank needs (plain, picklable values: a spawned process rebuilds the workload)."""
    workload_name: str
    workload_kwargs: dict
    optimizer: OptimizerSettings
    seed: int
    threads: int             # torch CPU threads per process
    device_type: str         # "cpu" or "cuda"
    devices: int             # world size
    per_device_batch_size: BatchSize
    warmup_steps: int
    window_seconds: Seconds
    min_window_steps: int
    rule: timing.StopRule
    timeout_s: Seconds       # process-group set-up and each collective; the parent's deadline for the group


@dataclass
class GroupResult:
    devices: int
    per_device_batch_size: BatchSize
    status: str                              # "ok", "crashed" or "timeout"
    reason: str = ""                         # why it is not "ok": which rank, what it raised or how it died
    windows: list[dict] = field(default_factory=list)  # mode, window, steps, seconds, examples_per_s
    stop_reason: str = ""
    threads: int | None = None
    backend: str = ""
    seconds: Seconds = 0.0                   # wall time of the group, spawn included


def free_port() -> int:
    """A localhost port nobody listens on now (the OS picks it; rank 0 binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- inside a rank

def _windows(job: GroupJob, rank: int, device: torch.device, window_steps: int, step_of: dict[str, Callable[[], None]],
             examples_per_step: int) -> dict | None:
    """The timed windows of both modes (MODES -> step function), alternated; rank 0 decides, every rank runs
    them. Returns rank 0's record: mode -> (steps per window, examples/s per window, stop reason)."""
    sync = lambda: synchronize(device)  # noqa: E731
    calibrated = torch.tensor([window_steps], dtype=torch.int64, device=device)
    dist.all_reduce(calibrated, op=dist.ReduceOp.MIN)  # the slowest rank's calibration: shortest windows
    window_steps = max(job.min_window_steps, int(calibrated.item()))
    m = {mode: timing.Measurement(window_steps, examples_per_step, job.rule, job.window_seconds, job.min_window_steps)
         for mode in MODES}
    control = torch.zeros(2, dtype=torch.int64, device=device)  # (mode index or _STOP, steps)
    elapsed = torch.zeros(1, dtype=torch.float64, device=device)
    turn = 0
    while True:
        if rank == 0:
            pending = [i for i, mode in enumerate(MODES) if not m[mode].stop_reason]
            index = pending[turn % len(pending)] if pending else _STOP
            control[0], control[1] = index, (m[MODES[index]].steps_per_window if pending else 0)
            turn += 1
        dist.broadcast(control, src=0)
        index, k = int(control[0].item()), int(control[1].item())
        if index == _STOP:
            break
        step = step_of[MODES[index]]
        step()  # untimed: settles caches after the switch of mode
        elapsed[0] = timing.timed_window(step, k, sync)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the group is as fast as its slowest rank
        if rank == 0:
            m[MODES[index]].add(float(elapsed.item()), k)
    if rank != 0:
        return None
    return {mode: (m[mode].steps, m[mode].samples, m[mode].stop_reason) for mode in MODES}


def _rank_main(rank: int, job: GroupJob, port: int, reports) -> None:
    """One rank: join the group, warm up, time windows; put ('ok', record) from rank 0, or ('error', rank,
    message) from any rank that raised."""
    try:
        threads = configure_cpu(job.threads)
        cuda = job.device_type == "cuda"
        device = torch.device("cuda", rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=job.devices,
                                timeout=timedelta(seconds=job.timeout_s))
        try:
            workload = make_workload(job.workload_name, job.workload_kwargs)
            model = build_model(workload, job.seed, device)  # same seed: the same weights on every rank
            ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if cuda else None)
            optimizer = build_optimizer(ddp.parameters(), job.optimizer, MEASURE_LR)
            data = workload.batches("train", job.per_device_batch_size, job.seed + rank)

            def synced() -> None:
                train_step(ddp, optimizer, workload, to_device(next(data), device))

            def local() -> None:
                with ddp.no_sync():
                    synced()

            for _ in range(job.warmup_steps):
                synced()
            # local steps may differ in number between ranks (no collective inside): calibrate on them
            per_window = timing.steps_per_window(local, lambda: synchronize(device), job.window_seconds,
                                                 job.min_window_steps)
            record = _windows(job, rank, device, per_window, {"synced": synced, "local": local},
                              job.devices * job.per_device_batch_size)
            if rank == 0:
                reports.put(("ok", {"windows": record, "threads": threads, "backend": backend}))
        finally:
            dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 -- reported to the parent as data, then the rank exits non-zero
        last = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        where = f" (at {os.path.basename(last.filename)}:{last.lineno})" if last else ""
        first_line = (str(e).strip().splitlines() or [""])[0][:300]
        reports.put(("error", rank, f"{type(e).__name__}: {first_line}{where}"))
        raise SystemExit(1)


# ---------------------------------------------------------------------------- the parent

def _died(code: int | None) -> str:
    return f"killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"


def run_group(job: GroupJob, log=lambda message: None) -> GroupResult:
    """Spawn the group, wait for rank 0's windows or the first failure, never past job.timeout_s. The free
    port is free when chosen, not when rank 0 binds it: if another process took it meanwhile, once more."""
    result = _run_group(job, free_port())
    if result.status == "crashed" and "address already in use" in result.reason.lower():
        log(f"{job.devices} device(s): the port was taken before rank 0 bound it; once more on another")
        result = _run_group(job, free_port())
    log(f"{job.devices} device(s): {result.status}{': ' + result.reason if result.reason else ''} "
        f"({result.seconds:.1f} s)")
    return result


def _run_group(job: GroupJob, port: int) -> GroupResult:
    ctx = mp.get_context("spawn")
    reports = ctx.Queue()
    started = time.monotonic()
    procs = [ctx.Process(target=_rank_main, args=(r, job, port, reports), daemon=True, name=f"ddp-rank{r}")
             for r in range(job.devices)]
    for p in procs:
        p.start()
    result = GroupResult(job.devices, job.per_device_batch_size, "ok")
    record, errors, failed_at = None, [], None
    deadline = started + job.timeout_s
    try:
        while True:
            try:
                message = reports.get(timeout=0.2)
                if message[0] == "ok":
                    record = message[1]
                else:
                    errors.append(message[1:])  # arrival order: the rank that failed first reports first
            except queue.Empty:
                pass
            codes = [p.exitcode for p in procs]
            now = time.monotonic()
            if record is not None and all(c is not None for c in codes):
                break
            if errors or any(c not in (None, 0) for c in codes) or all(c is not None for c in codes):
                failed_at = failed_at or now  # the other ranks may still be blocked in a collective: kill them
                if errors or now - failed_at > ERROR_GRACE_S:
                    break
            if now > deadline:
                result.status = "timeout"
                result.reason = f"still running after {job.timeout_s:g} s (throughput.device_timeout_s); stopped"
                break
    finally:
        died = {r: p.exitcode for r, p in enumerate(procs) if p.exitcode not in (None, 0)}  # before our kills
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join(5)
        reports.close()
    result.seconds = time.monotonic() - started
    if result.status == "ok" and (errors or record is None):
        result.status = "crashed"
        # a rank that died without a word (a signal, os._exit) is the cause; the others only saw it leave
        silent = [f"rank {r} {_died(c)} without reporting an error" for r, c in died.items()
                  if r not in {rank for rank, _ in errors}]
        spoke = [f"rank {rank}: {message}" for rank, message in errors[:1]]  # arrival order: the first to fail
        result.reason = "; ".join(silent + spoke) or "no result from rank 0"
    if record is not None and result.status == "ok":
        result.threads, result.backend = record["threads"], record["backend"]
        for mode, (steps, samples, stop) in record["windows"].items():
            result.windows += [{"devices": job.devices, "mode": mode, "window": i, "steps": k,
                                "seconds": job.devices * job.per_device_batch_size * k / eps, "examples_per_s": eps}
                               for i, (k, eps) in enumerate(zip(steps, samples))]
            if mode == "synced":
                result.stop_reason = stop
    return result


# ---------------------------------------------------------------------------- analysis

def summarise(results: list[GroupResult], confidence: float) -> list[dict]:
    """devices.csv rows: examples/s with its interval per device count, the scaling efficiency against one
    device (ratio of medians / N, bootstrap interval), compute and communication seconds per step."""
    ok = {r.devices: r for r in results if r.status == "ok"}
    samples = {n: {mode: [w["examples_per_s"] for w in r.windows if w["mode"] == mode] for mode in MODES}
               for n, r in ok.items()}
    rows = []
    for r in sorted(results, key=lambda r: r.devices):
        row = {"devices": r.devices, "per_device_batch_size": r.per_device_batch_size,
               "global_batch_size": r.devices * r.per_device_batch_size, "status": r.status, "reason": r.reason,
               "backend": r.backend, "threads_per_process": r.threads, "group_seconds": r.seconds}
        nan_cols = ("examples_per_s", "examples_per_s_ci_low", "examples_per_s_ci_high", "windows",
                    "local_examples_per_s", "time_per_step_s", "compute_s", "communication_s", "scaling_efficiency",
                    "scaling_efficiency_ci_low", "scaling_efficiency_ci_high", "ideal_examples_per_s")
        row.update({c: math.nan for c in nan_cols})
        row["stop_reason"] = r.stop_reason
        if r.status == "ok":
            synced, local = samples[r.devices]["synced"], samples[r.devices]["local"]
            med, lo, hi = timing.median_interval(synced, confidence)
            local_med = timing.median_interval(local, confidence)[0]
            b = row["global_batch_size"]
            row.update({"examples_per_s": med, "examples_per_s_ci_low": lo, "examples_per_s_ci_high": hi,
                        "windows": len(synced), "local_examples_per_s": local_med, "time_per_step_s": b / med,
                        "compute_s": b / local_med, "communication_s": max(0.0, b / med - b / local_med)})
            if 1 in ok:
                one = samples[1]["synced"]
                eff, eff_lo, eff_hi = timing.ratio_interval(synced, one, confidence, seed=r.devices)
                row.update({"scaling_efficiency": eff / r.devices, "scaling_efficiency_ci_low": eff_lo / r.devices,
                            "scaling_efficiency_ci_high": eff_hi / r.devices,
                            "ideal_examples_per_s": r.devices * timing.median_interval(one, confidence)[0]})
        rows.append(row)
    return rows


COLUMNS = ("devices", "per_device_batch_size", "global_batch_size", "status", "reason", "examples_per_s",
           "examples_per_s_ci_low", "examples_per_s_ci_high", "ideal_examples_per_s", "scaling_efficiency",
           "scaling_efficiency_ci_low", "scaling_efficiency_ci_high", "time_per_step_s", "compute_s",
           "communication_s", "local_examples_per_s", "windows", "stop_reason", "backend", "threads_per_process",
           "group_seconds")

METHOD = ("DistributedDataParallel, one process per device (spawned; gloo on CPU, nccl on CUDA), the same model and "
          "optimizer on every rank at the per-device batch size above, each rank on its own data order. examples/s "
          "= N x per-device batch x steps / the slowest rank's window time, median over windows with the "
          "order-statistic interval; scaling efficiency = examples/s at N / (N x examples/s at 1), bootstrap "
          "interval of the ratio of medians. Communication per step = time per synced step - time per step under "
          "no_sync() (no all-reduce), windows of the two alternated: the all-reduce time backward did not hide. "
          "Device counts are measured one after another, not interleaved.")
