"""Fake workloads for the throughput tests: a tiny MLP whose input pipeline is deliberately slow.

Use from params.yaml as `workload: {name: 'tests.throughput_fakes:factory', kwargs: {...}}` (the
project root on PYTHONPATH). The data iterator sleeps `sleep_per_example_s` per example, so the
data wait grows in proportion to the batch size and caps throughput at 1 / sleep_per_example_s
examples/s, while a batch kept on the device trains at the model's own speed.
"""
from __future__ import annotations

import time
from typing import Iterator

import torch
from torch import nn

from stages.workloads.base import Batch, Workload


class SlowLoaderMLP(Workload):
    name = "slow_loader_mlp"
    target_metric = "accuracy"
    target_value = 0.5
    target_direction = "above"
    chance_score = 0.25
    num_train_examples = None

    def __init__(self, sleep_per_example_s: float = 5.0e-4, features: int = 8, classes: int = 4):
        self.sleep_per_example_s = float(sleep_per_example_s)
        self.features, self.classes = int(features), int(classes)

    def hyperparameters(self) -> dict:
        return {"sleep_per_example_s": self.sleep_per_example_s, "features": self.features}

    def init_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(self.features, 16), nn.ReLU(), nn.Linear(16, self.classes))

    def batches(self, split: str, batch_size: int, seed: int) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(seed)
        while True:
            time.sleep(self.sleep_per_example_s * batch_size)  # the slow input pipeline
            x = torch.randn(batch_size, self.features, generator=gen)
            yield x, (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        x, y = batch
        return nn.functional.cross_entropy(model(x), y, reduction="sum"), y.shape[0]

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        x, y = next(SlowLoaderMLP(0.0, self.features, self.classes).batches("train", 256, 1))
        return {"accuracy": (model(x.to(device)).argmax(1) == y.to(device)).float().mean().item()}

    def fake_batch(self, batch_size: int) -> Batch:
        return torch.randn(batch_size, self.features), torch.randint(0, self.classes, (batch_size,))


def factory(**kwargs) -> SlowLoaderMLP:
    return SlowLoaderMLP(**kwargs)
