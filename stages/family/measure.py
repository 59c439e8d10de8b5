"""What one candidate model costs, measured: parameters, FLOPs per example, time per training step."""
from __future__ import annotations

import statistics
import time

import torch

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
                    device: torch.device, seed: int, *, warmup: int = 3, steps: int = 20,
                    max_seconds: float = 1.0) -> float:
    """Median seconds of one training step (forward, backward, optimizer step) on real batches, the
    device synchronised around each, after `warmup` uncounted steps; at most `steps` steps or
    `max_seconds`."""
    model = build_model(workload, seed, device)
    opt = build_optimizer(model.parameters(), optimizer, learning_rate)
    data = workload.batches("train", batch_size, seed)
    times: list[float] = []
    started = time.perf_counter()
    for i in range(warmup + steps):
        batch = to_device(next(data), device)
        synchronize(device)
        t0 = time.perf_counter()
        train_step(model, opt, workload, batch)
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            if time.perf_counter() - started > max_seconds and len(times) >= 3:
                break
    return statistics.median(times)


def size_of(workload: Workload, seed: int) -> int:
    return parameter_count(build_model(workload, seed, torch.device("cpu")))
