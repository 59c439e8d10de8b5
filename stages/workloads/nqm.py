"""nqm: the noisy quadratic model (Zhang et al. 2019, "Which algorithmic choices matter at which batch sizes?").

loss(theta) = 0.5 * sum_i h_i theta_i^2 with h_i = 1/i (i = 1..dim), theta_0 ~ N(0, I).
Each example contributes a gradient H theta + xi with xi ~ N(0, H), so a batch of B examples gives
H theta + noise with covariance H / B. Its critical batch size is well understood, which makes it
the test bed for the scaling stage. The metric is the exact loss at the current parameters.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from stages.workloads.base import Batch, Workload


class Quadratic(nn.Module):
    def __init__(self, theta0: torch.Tensor, curvature: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(theta0.clone())         # (dim,)
        self.register_buffer("h", curvature.clone())      # (dim,) diagonal of H

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        """Per-example losses 0.5 theta^T H theta + xi_j^T theta for noise (B, dim) -> (B,)."""
        return 0.5 * (self.h * self.theta ** 2).sum() + noise @ self.theta

    def exact_loss(self) -> torch.Tensor:
        return 0.5 * (self.h * self.theta ** 2).sum()


class NoisyQuadratic(Workload):
    name = "nqm"
    target_metric = "loss"
    target_direction = "below"
    num_train_examples = None  # unbounded: every example is a fresh noise draw
    example_unit = "sample"
    chance_explanation = "the expected loss at the initial point, before any step"

    def __init__(self, dim: int = 100, target: float = 0.1, init_seed: int = 0):
        if int(dim) < 1:
            raise ValueError(f"dim must be a positive integer, got {dim}")
        if not target > 0:
            raise ValueError(f"target (loss) must be positive, got {target}")
        self.dim, self.target_value, self.init_seed = int(dim), float(target), int(init_seed)
        self.h = 1.0 / torch.arange(1, self.dim + 1, dtype=torch.float32)
        self.theta0 = torch.randn(self.dim, generator=torch.Generator().manual_seed(init_seed))
        self.chance_score = 0.5 * float(self.h.sum())  # expected loss at theta_0 ~ N(0, I): no learning

    def hyperparameters(self) -> dict:
        return {"dim": self.dim, "target": self.target_value, "init_seed": self.init_seed}

    def init_model(self) -> nn.Module:
        return Quadratic(self.theta0, self.h)

    def batches(self, split: str, batch_size: int, seed: int) -> Iterator[Batch]:
        if split != "train":
            raise ValueError(f"nqm streams only the 'train' split, got {split!r}")
        gen = torch.Generator().manual_seed(seed)
        scale = self.h.sqrt()
        while True:
            yield (torch.randn(batch_size, self.dim, generator=gen) * scale,)  # (B, dim), xi ~ N(0, H)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        (noise,) = batch
        return model(noise).sum(), noise.shape[0]

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return {"loss": model.exact_loss().item()}

    def fake_batch(self, batch_size: int) -> Batch:
        return (torch.randn(batch_size, self.dim),)
