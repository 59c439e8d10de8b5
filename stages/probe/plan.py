"""A memory plan for a device you do not have (`probe.plan_for`): peak training memory per batch size,
estimated without the device, and the largest batch size predicted to fit each target.

The estimate runs the probe's own training step (stages.core.train.train_step: forward, backward,
optimizer step) `steps` times, then the evaluation forward under no_grad, on the workload's
fake_batch(B) -- all under `torch._subclasses.FakeTensorMode`, so no tensor holds data and nothing is
allocated: tensors carry only shape, dtype and device. PyTorch's own MemTracker
(torch.distributed._tools.mem_tracker, a TorchDispatchMode that follows every storage by weak
reference) adds up the live storages by category and keeps the breakdown at the peak.

What it counts: tensor storages (parameters, buffers, gradients, optimizer state, activations saved
for backward, temporaries of the backward pass, the input batch), exactly: on real tensors the same
tracker finds the same peak to the byte. Kernels also hold buffers that are no tensors: on the CPU,
oneDNN convolutions reorder into and out of a blocked layout, one buffer of the output's size per
forward and one of grad_output's size per backward (two when it computes grad_input), measured op by
op on torch 2.13 (bench/bench_memory_plan.py); `workspace` adds that buffer while its op runs, and
the peak includes it. What it cannot see: allocator rounding and fragmentation, the CUDA context,
cuDNN/cuBLAS workspaces, the interpreter -- the safety margin is there for them.

A model whose control flow or output shapes depend on tensor values (`.item()` in an `if`,
`nonzero`, boolean masks) cannot run without data: the plan says so (status `refused`, with the
operation named) instead of guessing.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field

import torch

from stages.core import outputs as out
from stages.core.config import OptimizerSettings, parse_size
from stages.core.log import human_bytes
from stages.core.optim import build_optimizer
from stages.core.train import train_step
from stages.core.types import BatchSize, Bytes
from stages.probe.memory import memory_limit
from stages.workloads.base import Workload

ANY_LR = 1.0e-3  # memory does not depend on the learning rate

# MemTracker's reference types -> the plan's category names (CSV columns `<name>_bytes`)
CATEGORIES = {"Parameter": "parameters", "Buffer": "buffers", "Gradient": "gradients",
              "Optstate": "optimizer_state", "Activation": "activations", "Temp": "temporaries",
              "Other": "inputs"}  # the batch, registered with track_external as 'Other'
WORKSPACE = "workspace"  # kernel buffers that are no tensors, while their op runs (workspace_bytes)
assert (*CATEGORIES.values(), WORKSPACE) == out.PLAN_CATEGORIES, "the plan CSV's declared columns"


@dataclass(frozen=True)
class PlanTarget:
    label: str              # the target's name, or its memory as written ('80GiB')
    memory_bytes: Bytes


def plan_targets(value: dict | list | None) -> list[PlanTarget]:
    """probe.plan_for (already validated by the schema) as a list of targets; [] for null."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [PlanTarget(str(t.get("name") or t["memory"]), parse_size(t["memory"])) for t in items]


@dataclass
class Estimate:
    batch_size: BatchSize
    status: str                     # "estimated" or "refused"
    reason: str = ""
    peak_bytes: Bytes | None = None
    categories: dict[str, Bytes] = field(default_factory=dict)  # at the peak, keys of CATEGORIES' values


class RefusedUnderFakeTensors(Exception):
    """The model cannot run without real data; the message says which operation and why."""


def _data_dependent(exc: BaseException) -> str | None:
    """The operation, if `exc` is fake-tensor mode refusing a data-dependent operation."""
    from torch._subclasses import fake_tensor as ft

    kinds = tuple(k for k in (getattr(ft, "DataDependentOutputException", None),
                              getattr(ft, "DynamicOutputShapeException", None)) if k is not None)
    chain, e = [], exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, kinds):
            op = getattr(e, "func", None)
            return str(op) if op is not None else (str(e).strip().splitlines() or [type(e).__name__])[0]
        if type(e).__name__ in ("GuardOnDataDependentSymNode", "DataDependentOutputException"):
            return str(e).strip().splitlines()[0][:200]
    return None


def refusal_reason(exc: BaseException) -> str:
    """One readable paragraph: why the model cannot be estimated under fake tensors."""
    op = _data_dependent(exc)
    where = next((f"{f.filename}:{f.lineno} ({f.name})" for f in reversed(traceback.extract_tb(exc.__traceback__))
                  if "/torch/" not in f.filename and f.filename != __file__), "")
    at = f" at {where}" if where else ""
    if op is not None:
        return (f"the model cannot run under fake tensors: operation {op}{at} depends on tensor values "
                f"(e.g. .item() in control flow, nonzero, a boolean mask), which fake tensors do not have; "
                f"no estimate is made -- measure on the device itself, or make the shapes and control flow "
                f"independent of the data")
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return (f"the model cannot run under fake tensors: {type(exc).__name__}: {first}{at}; no estimate is made -- "
            f"measure on the device itself")


def _nbytes(t) -> Bytes:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def workspace_bytes(func, args: tuple, result) -> Bytes:
    """Bytes a CPU kernel holds beyond its inputs and outputs while it runs (oneDNN layout reorders of
    convolutions, measured on torch 2.13: see the module docstring); 0 for every other operation."""
    if func is torch.ops.aten.convolution.default:
        return _nbytes(result)
    if func is torch.ops.aten.convolution_backward.default:
        grad_output, mask = args[0], args[-1]  # output_mask: (grad_input, grad_weight, grad_bias)
        return _nbytes(grad_output) * (2 if mask[0] else 1)
    return 0


def _tracker_class():
    """MemTracker with the peak taken over (live tensors + the running op's workspace) after every
    operation. Built on first use: importing the tracker loads torch.distributed."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class PlanTracker(MemTracker):
        def __init__(self):
            super().__init__()
            self.peak_total: Bytes = 0
            self.peak_snapshot: dict = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = super().__torch_dispatch__(func, types, args, kwargs)
            workspace = workspace_bytes(func, args, result)
            current = self._curr_mem_snap  # read only (get_tracker_snapshot deep-copies on every op)
            total = sum(snap.get("Total", 0) for snap in current.values()) + workspace
            if total > self.peak_total:
                self.peak_total = total
                self.peak_snapshot = {**{k: v for snap in current.values() for k, v in snap.items()},
                                      WORKSPACE: workspace}
            return result

    return PlanTracker


def estimate_peak(workload: Workload, optimizer: OptimizerSettings, batch_size: BatchSize, steps: int = 2) -> Estimate:
    """Peak tensor memory of `steps` training steps and one evaluation forward at `batch_size`, and
    its breakdown by category at the peak; `refused` (with the reason) if the model needs real data.
    At least 2 steps: the optimizer's state exists only from the first step on."""
    from torch._subclasses import FakeTensorMode

    try:
        tracker_class = _tracker_class()
    except ImportError as e:  # a torch build without torch.distributed (the tracker lives there)
        return Estimate(batch_size, "refused", f"this torch build cannot track memory by category "
                                               f"(torch.distributed._tools.mem_tracker: {e}); no estimate is made")
    try:
        # allow_non_fake_inputs: a workload may keep real constant tensors (a curvature vector, a
        # vocabulary table); they are converted, never allocated anew.
        with FakeTensorMode(allow_non_fake_inputs=True):
            # The model is built in place rather than through build_model(): `.to(device)` swaps
            # parameters, which fake parameters refuse; there is no device to move to anyway.
            model = workload.init_model()
            model.train()
            opt = build_optimizer(model.parameters(), optimizer, ANY_LR)
            batch = workload.fake_batch(batch_size)
            tracker = tracker_class()
            tracker.track_external(model, opt, *batch)
            with tracker:
                for _ in range(max(2, steps)):
                    train_step(model, opt, workload, batch)
                    tracker.reset_mod_stats()  # each step is a new iteration for its per-module stats
                model.eval()
                with torch.no_grad():
                    workload.loss(model, batch)  # the evaluation forward, as in a probe trial
    except Exception as e:  # noqa: BLE001 -- any failure here is a refusal to estimate, never a crash
        return Estimate(batch_size, "refused", refusal_reason(e))
    categories = dict.fromkeys([*CATEGORIES.values(), WORKSPACE], 0)
    for ref, nbytes in tracker.peak_snapshot.items():  # MemTracker's reference types (str enums), "Total"
        name = CATEGORIES.get(getattr(ref, "value", ref), WORKSPACE if ref == WORKSPACE else None)
        if name:
            categories[name] += int(nbytes)
    total = int(tracker.peak_total)
    return Estimate(batch_size, "estimated", f"predicted peak {human_bytes(total)}", total, categories)


@dataclass
class TargetFit:
    target: PlanTarget
    limit_bytes: Bytes                      # memory x (1 - safety margin)
    max_batch_size: BatchSize | None        # the largest estimated size whose peak is within the limit
    at_largest_candidate: bool              # every estimated size fits: larger ones may fit too


def fit_targets(estimates: list[Estimate], targets: list[PlanTarget], safety_margin: float) -> list[TargetFit]:
    """For each target, the largest batch size predicted to fit within memory x (1 - margin). Peak
    memory grows with the batch size, so the sizes are taken in order and the first misfit ends it."""
    done = sorted((e for e in estimates if e.status == "estimated"), key=lambda e: e.batch_size)
    fits = []
    for target in targets:
        limit = memory_limit(target.memory_bytes, safety_margin)
        best = None
        for e in done:
            if e.peak_bytes > limit:
                break
            best = e.batch_size
        fits.append(TargetFit(target, limit, best, bool(done) and best == done[-1].batch_size))
    return fits


def plan_memory(workload: Workload, optimizer: OptimizerSettings, batch_sizes: list[BatchSize], steps: int,
                progress=None) -> list[Estimate]:
    """Estimates for `batch_sizes` in increasing order; stops at the first refusal (a data-dependent
    operation does not depend on the batch size), recording the other sizes as refused for that reason."""
    estimates: list[Estimate] = []
    for b in sorted(batch_sizes):
        e = estimate_peak(workload, optimizer, b, steps)
        estimates.append(e)
        if progress is not None:
            progress(e)
        if e.status == "refused":
            estimates += [Estimate(x, "refused", e.reason) for x in sorted(batch_sizes) if x > b]
            break
    return estimates


def plan_frame(estimates: list[Estimate]):
    """The rows of memory_plan.csv (its declared columns; no rows without a plan)."""
    import pandas as pd

    rows = [{"batch_size": e.batch_size, "status": e.status, "predicted_peak_bytes": e.peak_bytes,
             **{f"{c}_bytes": e.categories.get(c) for c in out.PLAN_CATEGORIES}, "reason": e.reason}
            for e in estimates]
    frame = pd.DataFrame(rows, columns=list(out.PROBE_PLAN_CSV.columns))
    for column in out.PROBE_PLAN_CSV.numeric:
        frame[column] = frame[column].astype("Int64")
    return frame


def plan_markdown(estimates: list[Estimate], fits: list[TargetFit], safety_margin: float) -> str:
    """The "Memory plan" section of notes.md (shown in the report's probe section)."""
    refused = next((e for e in estimates if e.status == "refused"), None)
    if refused is not None and not any(e.status == "estimated" for e in estimates):
        return f"No estimate: {refused.reason}."
    lines = [f"Peak training memory estimated without the device: the probe's training step under fake tensors, "
             f"live tensors tracked by category (stages/probe/plan.py). A size fits a target if its predicted peak "
             f"is at most memory x (1 - {safety_margin:g}).", "",
             "| target | memory | limit | largest batch size predicted to fit |", "|---|---:|---:|---:|"]
    for f in fits:
        best = "none" if f.max_batch_size is None else str(f.max_batch_size)
        if f.at_largest_candidate:
            best += " (the largest candidate: raise probe.max_batch_size to look further)"
        lines.append(f"| {f.target.label} | {human_bytes(f.target.memory_bytes)} | {human_bytes(f.limit_bytes)} | {best} |")
    shown = [c for c in out.PLAN_CATEGORIES if any(e.categories.get(c) for e in estimates)]
    lines += ["", "Predicted peak by batch size and what holds it at that moment:", "",
              "| batch size | predicted peak | " + " | ".join(c.replace("_", " ") for c in shown) + " |",
              "|---:|---:|" + "---:|" * len(shown)]
    for e in estimates:
        if e.status == "estimated":
            lines.append(f"| {e.batch_size} | {human_bytes(e.peak_bytes)} | "
                         + " | ".join(human_bytes(e.categories[c]) for c in shown) + " |")
    if refused is not None:
        lines += ["", f"From batch size {refused.batch_size} on: {refused.reason}."]
    return "\n".join(lines)
