"""What one candidate model costs, measured: parameters, FLOPs per example, time per training step."""
from __future__ import annotations

import torch

from stages.core import timer
from stages.core.config import OptimizerSettings
from stages.core.device import synchronize
from stages.core.optim import build_optimizer
from stages.core.train import build_model, count_flops, train_step
from stages.workloads.base import Workload, parameter_count, to_device


def flops_per_example(workload: Workload, optimizer: OptimizerSettings, batch_size: int, device: torch.device,
                      seed: int, stage: str) -> float | None:
    """FLOPs of one training step / its batch size, counted as throughput counts them (core/train.py)."""
    model = build_model(workload, seed, device)
    opt = build_optimizer(model.parameters(), optimizer, 1.0e-4)  # the rate does not change the work
    batch = to_device(next(workload.batches("train", batch_size, seed)), device)
    flops = count_flops(lambda: train_step(model, opt, workload, batch), stage)
    return None if flops is None else flops / batch_size


def time_per_step_s(workload: Workload, optimizer: OptimizerSettings, learning_rate: float, batch_size: int,
                    device: torch.device, seed: int, rule: timer.WindowRule = timer.WindowRule()) -> float:
    """Seconds per training step as a training run takes it (next batch, copy, forward, backward, optimizer
    step), timed by the one timer every stage shares (stages/core/timer.py: warm-up excluded, windows
    between device syncs, the stop rule): batch size / the median examples/s over its windows."""
    model = build_model(workload, seed, device)
    opt = build_optimizer(model.parameters(), optimizer, learning_rate)
    data = workload.batches("train", batch_size, seed)
    try:
        m = timer.time_steps(lambda: train_step(model, opt, workload, to_device(next(data), device)), batch_size,
                             rule, lambda: synchronize(device))
    finally:
        getattr(data, "close", lambda: None)()  # a DataLoader's workers end here
    return batch_size / m.median


def size_of(workload: Workload, seed: int) -> int:
    return parameter_count(build_model(workload, seed, torch.device("cpu")))
