"""The one training step and the one evaluation -- used by every stage that trains.

`train_step` is the unit that probe, throughput, scaling and baseline all run, so a number in any
report comes from the same code path; `evaluate` is the one evaluation (eval mode, no gradients).
Training to a target -- the trial loop of the learning-rate search and of the baseline -- is
stages/search/trial.py.
"""
from __future__ import annotations

import torch

from stages.core import log
from stages.core.device import seed_everything
from stages.workloads.base import Batch, Workload


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, workload: Workload, batch: Batch) -> torch.Tensor:
    """One optimizer step on a device batch; returns the detached mean loss (no host sync)."""
    optimizer.zero_grad(set_to_none=True)
    loss_sum, count = workload.loss(model, batch)
    loss = loss_sum / count
    loss.backward()
    optimizer.step()
    return loss.detach()


def count_flops(step, stage: str) -> float | None:
    """FLOPs of one call of `step` as torch's FlopCounterMode counts them (matrix products, convolutions,
    attention; not elementwise work); None, said on stderr, if the counter cannot trace an op -- an
    uncountable op must not sink a stage (throughput, family) that only reports the figure."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            step()
        return float(counter.get_total_flops())
    except Exception as e:
        log.info(stage, f"FLOP counting failed ({type(e).__name__}: {e}); flops_per_example = null")
        return None


def evaluate(model: torch.nn.Module, workload: Workload, device: torch.device) -> dict[str, float]:
    """The workload's metrics in eval mode without gradients; the model is put back in train mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            metrics = workload.evaluate(model, device)
    finally:
        model.train(was_training)
    if workload.target_metric not in metrics:
        raise KeyError(f"workload {workload.name!r}.evaluate() returned {sorted(metrics)}, "
                       f"which lacks its target_metric {workload.target_metric!r}")
    return {k: float(v) for k, v in metrics.items()}


def build_model(workload: Workload, seed: int, device: torch.device) -> torch.nn.Module:
    seed_everything(seed)
    model = workload.init_model().to(device)
    model.train()
    return model

