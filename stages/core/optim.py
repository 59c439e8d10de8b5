"""Optimizers the playbook recommends for a new project: few hyperparameters, all but the learning
rate fixed. SGD with fixed momentum (Nesterov optional), Adam or AdamW with fixed betas and epsilon."""
from __future__ import annotations

from typing import Iterable

import torch

from stages.core.config import OPTIMIZER_KEYS, OptimizerSettings

def fixed_values(settings: OptimizerSettings) -> dict:
    """The optimizer's name and the values that stay fixed while the learning rate is tuned."""
    return {key: getattr(settings, key) for key in OPTIMIZER_KEYS[settings.name]}


def effective_learning_rate(settings: OptimizerSettings, lr: float) -> float:
    """lr / (1 - momentum) for SGD with momentum (the step size in steady state); lr otherwise."""
    return lr / (1.0 - settings.momentum) if settings.name == "sgd" else lr


def state_copies(settings: OptimizerSettings) -> int:
    """Tensors of each parameter's size the optimizer keeps: SGD's momentum buffer (none without
    momentum), Adam's and AdamW's first and second moments."""
    if settings.name == "sgd":
        return 1 if settings.momentum > 0 else 0
    return 2


def build_optimizer(params: Iterable[torch.nn.Parameter], settings: OptimizerSettings, lr: float) -> torch.optim.Optimizer:
    if not lr > 0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    if settings.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=settings.momentum,
                               nesterov=settings.nesterov,
                               weight_decay=settings.weight_decay)
    cls = torch.optim.Adam if settings.name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=(settings.beta1, settings.beta2), eps=settings.eps,
               weight_decay=settings.weight_decay)
