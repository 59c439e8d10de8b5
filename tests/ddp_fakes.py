"""A tiny workload for the data-parallel tests: an MLP on random data that can be told to fail on one rank.

Use from params.yaml (or a GroupJob) as `tests.ddp_fakes:factory`; the spawned ranks import it again,
so the project root must be on sys.path (it is, under pytest and `python -m`)."""
from __future__ import annotations

import os
import time
from typing import Iterator

import torch
from torch import nn

from stages.workloads.base import Batch, Workload


class TinyMLP(Workload):
    name = "tiny_mlp"
    target_metric, target_value, target_direction, chance_score = "accuracy", 0.5, "above", 0.25
    num_train_examples = None

    def __init__(self, features: int = 32, hidden: int = 64, classes: int = 4, fail_rank: int = -1,
                 fail: str = "raise"):
        self.features, self.hidden, self.classes = features, hidden, classes
        # fail: "raise" (an exception), "exit" (dies without a word) or "hang" (never returns)
        self.fail_rank, self.fail = fail_rank, fail

    def init_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(self.features, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.classes))

    def batches(self, split: str, batch_size: int, seed: int) -> Iterator[Batch]:
        g = torch.Generator().manual_seed(seed)
        while True:
            yield torch.randn(batch_size, self.features, generator=g), torch.randint(0, self.classes, (batch_size,), generator=g)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_rank() == self.fail_rank:
            if self.fail == "exit":
                os._exit(3)
            if self.fail == "hang":
                time.sleep(3600)
            raise RuntimeError(f"injected failure on rank {self.fail_rank}")
        x, y = batch
        return nn.functional.cross_entropy(model(x), y, reduction="sum"), y.shape[0]

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return {"accuracy": 0.0}

    def fake_batch(self, batch_size: int) -> Batch:
        return torch.zeros(batch_size, self.features), torch.zeros(batch_size, dtype=torch.long)


def factory(**kwargs) -> TinyMLP:
    return TinyMLP(**kwargs)
