"""The probe's trial processes: one fresh process per trial, so an OOM, a CUDA context left broken or
a kill by the OS cannot poison later trials or the stage.

On Linux a trial server is spawned once (a fresh interpreter that never touches the device). It
imports torch and pays the first optimizer's lazy imports (torch._dynamo, seconds) while the stage
validates params.yaml, then builds the workload with torch single-threaded (a process forked after
an OpenMP pool exists hangs in its first parallel op) and forks one trial process per request: a
trial costs a fork, not an interpreter start. Elsewhere (macOS: fork is unsafe there, MPS), or when
the workload initialises CUDA while being built, every trial is a freshly spawned process instead.

Requests: ('info',) -> device capacity, batch norm, parameter count and bytes (model on the meta
device); ('trial', batch_size, memory_fraction, cpu_limit_bytes) -> steps and examples run, peak
memory, or the OOM rule that fired.
Reports: {"result": dict or None, "signal": int or None, "exitcode": int or None, "seconds": float}.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from stages.probe import memory
from stages.core.config import OptimizerSettings, Params
from stages.core.device import describe, configure_cpu, synchronize
from stages.core.errors import StudyError
from stages.core.log import info
from stages.core.optim import build_optimizer
from stages.core.train import build_model, train_step
from stages.workloads.base import Workload, has_batch_norm, make_workload, parameter_count, to_device

ANY_LR = 1.0e-3  # the probe measures memory; the learning rate does not change it
Isolation = Literal["auto", "fork_server", "spawn"]


class TrialError(StudyError):
    """A trial failed for a reason other than memory (the workload raised, or ran nothing): the probe cannot
    go on. The message carries the workload's own traceback, since the fix is in the user's model."""


@dataclass(frozen=True)
class ProbeJob:
    params: Params
    device: str


# ---------------------------------------------------------------------------- inside a trial process

def _info(job: ProbeJob, workload: Workload) -> dict:
    device = torch.device(job.device)
    capacity, source = memory.device_capacity_bytes(device)
    try:  # on the meta device: no memory even for a model far larger than the CPU's RAM
        with torch.device("meta"):
            model = workload.init_model()
    except Exception:  # noqa: BLE001 -- init code that needs real values
        model = workload.init_model()
    return {"kind": "info", "capacity_bytes": capacity, "capacity_source": source, "device": describe(device),
            "threads": torch.get_num_threads(), "has_batch_norm": has_batch_norm(model),
            "parameter_count": parameter_count(model),
            "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


def _trial(job: ProbeJob, workload: Workload, batch_size: int, memory_fraction: float | None,
           cpu_limit_bytes: int | None = None) -> dict:
    """`probe.steps` training steps and one evaluation forward at `batch_size` on the fake batch. On the
    CPU the process cannot grow past `cpu_limit_bytes`: a bigger allocation fails here, as an oom."""
    device = torch.device(job.device)
    if device.type == "cpu" and cpu_limit_bytes is not None:
        memory.limit_address_space(cpu_limit_bytes)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if memory_fraction is not None and memory_fraction < 1:
            torch.cuda.set_per_process_memory_fraction(memory_fraction, device)  # the allocator enforces the limit
    meter = memory.PeakMeter(device)
    counts = {"steps_run": 0, "examples_run": 0}
    meter.start()
    try:
        model = build_model(workload, job.params.runtime.seed, device)
        optimizer = build_optimizer(model.parameters(), job.params.optimizer, ANY_LR)
        batch = to_device(workload.fake_batch(batch_size), device)
        n = int(batch[0].shape[0]) if batch and batch[0].dim() > 0 else 0
        if n != batch_size:
            return {"kind": "error", "message": f"workload.fake_batch({batch_size}) returned a batch of {n} examples; "
                                                f"it must return exactly {batch_size} (0 examples would run)"}
        synchronize(device)
        start = time.perf_counter()
        for _ in range(job.params.probe.steps):
            train_step(model, optimizer, workload, batch)
            synchronize(device)  # the step has really run (asynchronous device errors surface here)
            meter.sample()
            counts["steps_run"] += 1
            counts["examples_run"] += n
        model.eval()
        with torch.no_grad():
            workload.loss(model, batch)  # the evaluation forward at this batch size
        synchronize(device)
        meter.sample()
        train_seconds = time.perf_counter() - start
    except Exception as e:  # noqa: BLE001 -- anything that is not OOM goes back up as an error
        rule = memory.classify_exception(e)
        if rule is None:
            raise
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        return {"kind": "oom", "rule": rule, "message": first_line, **counts}
    return {"kind": "ok", **counts, "train_seconds": train_seconds, **asdict(meter.read())}


def _child_main(job: ProbeJob, workload: Workload, request: tuple) -> dict:
    if request[0] == "trial":  # a trial that swaps or hangs is stopped by the kernel: SIGALRM ends it
        signal.alarm(job.params.probe.trial_timeout_s)
    try:
        return _info(job, workload) if request[0] == "info" else _trial(job, workload, *request[1:])
    except Exception:  # noqa: BLE001
        return {"kind": "error", "message": traceback.format_exc()}


# ---------------------------------------------------------------------------- the fork server

def _fork_one(job: ProbeJob, workload: Workload, request: tuple) -> dict:
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the trial process: report through the pipe, never return into the server loop
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends a trial at once and silently
            os.close(read_fd)
            memory.volunteer_for_oom_killer()
            configure_cpu(job.params.runtime.threads)
            result = _child_main(job, workload, request)
            with os.fdopen(write_fd, "wb") as f:
                pickle.dump(result, f)
            code = 0
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    try:
        result = pickle.loads(data) if data else None
    except Exception:  # noqa: BLE001 -- a half-written report (killed while writing) is no report
        result = None
    return {"result": result, "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "exitcode": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}


def _warm_up() -> None:
    """Pay once, here, for what the first optimizer and step import lazily (torch._dynamo: seconds)."""
    layer = torch.nn.Linear(2, 2)
    layer(torch.zeros(1, 2)).sum().backward()
    for name in ("sgd", "adam"):
        build_optimizer(layer.parameters(), OptimizerSettings(name=name), ANY_LR).step()


def _load(job: ProbeJob) -> tuple[dict, Workload | None]:
    try:
        workload = make_workload(job.params.workload.name, job.params.workload.kwargs)
    except Exception:  # noqa: BLE001
        return {"kind": "error", "message": traceback.format_exc()}, None
    if torch.cuda.is_initialized():
        return {"kind": "fallback", "reason": "the workload initialised CUDA while being built, so forking is unsafe"}, None
    return {"kind": "ready"}, workload


def _serve(conn) -> None:
    """Requests: ('load', job) builds the workload; other requests fork a trial; None ends."""
    # Started with Ctrl-C ignored (see _sigint_ignored); the stage stops this server on Ctrl-C.
    torch.set_num_threads(1)  # no OpenMP pool here: a child forked after one hangs in its first parallel op
    # Python >= 3.12 warns on fork() with threads alive; the only ones here are idle BLAS pools
    # (numpy/scipy's OpenBLAS), which re-initialise in the child through their atfork handlers.
    warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks", category=DeprecationWarning)
    _warm_up()
    job = workload = None
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        if request[0] == "load":
            job = request[1]
            reply, workload = _load(job)
            conn.send(reply)
        else:
            conn.send(_fork_one(job, workload, request))


def _spawned_trial(job: ProbeJob, request: tuple, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends a trial at once and silently
    memory.volunteer_for_oom_killer()
    configure_cpu(job.params.runtime.threads)
    try:
        workload = make_workload(job.params.workload.name, job.params.workload.kwargs)
    except Exception:  # noqa: BLE001
        conn.send({"kind": "error", "message": traceback.format_exc()})
        return
    conn.send(_child_main(job, workload, request))


class _sigint_ignored:
    """Start child processes with Ctrl-C ignored (a disposition that survives exec, so a spawned
    interpreter never turns it into a KeyboardInterrupt traceback while importing): the stage alone
    reports the interrupt, in one line, and stops them."""

    def __enter__(self):
        self._old = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)


class TrialRunner:
    """Start it early (the server warms up while the stage validates), `load(job)`, then `run(request)`."""

    def __init__(self, isolation: Isolation = "auto"):
        if isolation == "auto":
            isolation = "fork_server" if sys.platform.startswith("linux") else "spawn"
        self._ctx = mp.get_context("spawn")  # never fork the stage itself: it may have touched the device
        self._server = self._conn = None
        self.job: ProbeJob | None = None
        self.note = ""
        if isolation == "fork_server":
            self._conn, child_conn = self._ctx.Pipe()
            self._server = self._ctx.Process(target=_serve, args=(child_conn,), daemon=True)
            with _sigint_ignored():
                self._server.start()
            child_conn.close()

    @property
    def isolation(self) -> str:
        return "fork_server" if self._server is not None else "spawn"

    def load(self, job: ProbeJob) -> None:
        """Build the workload for `job` in the server (ConfigError or TrialError if that fails)."""
        self.job = job
        if self._server is None:
            return
        reply = self._ask(("load", job))
        if reply["kind"] == "ready":
            return
        if reply["kind"] == "error":
            raise TrialError(f"building the workload in the trial server failed:\n{reply['message']}")
        self.close()
        self.note = reply["reason"] + "; every trial runs in a freshly spawned process instead"
        info("probe", self.note)

    def _ask(self, request: tuple) -> dict:
        try:
            self._conn.send(request)
            return self._conn.recv()
        except (EOFError, OSError):
            self._server.join(timeout=5)
            raise TrialError(f"the trial server died (exit code {self._server.exitcode}); its error, if any, "
                             f"is printed above") from None

    def run(self, request: tuple) -> dict:
        assert self.job is not None, "load(job) first"
        start = time.perf_counter()
        if self._server is not None:
            report = self._ask(request)
        else:
            reader, writer = self._ctx.Pipe(duplex=False)
            proc = self._ctx.Process(target=_spawned_trial, args=(self.job, request, writer))
            with _sigint_ignored():
                proc.start()
            writer.close()
            try:
                result = reader.recv()
            except EOFError:
                result = None
            proc.join()
            code = proc.exitcode
            report = {"result": result, "signal": -code if code is not None and code < 0 else None,
                      "exitcode": code if code is not None and code >= 0 else None}
        report["seconds"] = time.perf_counter() - start
        return report

    def close(self) -> None:
        """Stop the server at once: it holds nothing to save, and its interpreter shutdown takes seconds."""
        if self._server is None:
            return
        if self._server.is_alive():
            self._server.terminate()
        self._server.join()
        self._conn.close()
        self._server = None

    def __enter__(self) -> "TrialRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

