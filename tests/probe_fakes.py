"""Fake workloads for the probe tests, importable by trial processes as 'tests.probe_fakes:factory'.

Each misbehaves on purpose above a batch size: raises an OOM (by type or by a device message),
kills its own process with a signal, raises an ordinary error, exits without reporting, hangs, or
returns a short fake batch. `wide=True` gives a model whose activation memory grows with the batch size
(about 0.5 MiB per example), so a CPU memory budget can be tested against a real measured peak.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Iterator

import torch
from torch import nn

from stages.workloads.base import Batch, Workload

IN = 16


class Fake(Workload):
    name = "probe_fake"
    target_metric = "accuracy"
    target_value = 0.5
    chance_score = 0.25

    def __init__(self, oom_above: int | None = None, message: str | None = None, kill_at: int | None = None,
                 error_at: int | None = None, exit_at: int | None = None, short_batch: bool = False,
                 wide: bool = False, batch_norm: bool = False, train_examples: int | None = None,
                 hang_at: int | None = None):
        self.oom_above, self.message, self.kill_at, self.hang_at = oom_above, message, kill_at, hang_at
        self.error_at, self.exit_at, self.short_batch = error_at, exit_at, short_batch
        self.width = 32768 if wide else 8
        self.batch_norm = batch_norm
        self.num_train_examples = train_examples

    def init_model(self) -> nn.Module:
        layers: list[nn.Module] = [nn.Linear(IN, self.width)]
        if self.batch_norm:
            layers.append(nn.BatchNorm1d(self.width))
        return nn.Sequential(*layers, nn.ReLU(), nn.Linear(self.width, 4))

    def batches(self, split: str, batch_size: int, seed: int) -> Iterator[Batch]:
        while True:
            yield self.fake_batch(batch_size)

    def _misbehave(self, b: int) -> None:
        if self.oom_above is not None and b > self.oom_above:
            if self.message is not None:
                raise RuntimeError(self.message)
            raise torch.OutOfMemoryError(f"fake out of memory at batch size {b}")
        if self.kill_at is not None and b >= self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.error_at is not None and b >= self.error_at:
            raise ValueError(f"fake model bug at batch size {b}")
        if self.exit_at is not None and b >= self.exit_at:
            os._exit(0)
        if self.hang_at is not None and b >= self.hang_at:
            time.sleep(3600)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        x, y = batch
        self._misbehave(x.shape[0])
        return nn.functional.cross_entropy(model(x), y, reduction="sum"), y.shape[0]

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return {"accuracy": 0.0}

    def fake_batch(self, batch_size: int) -> Batch:
        n = 0 if self.short_batch else batch_size
        return torch.randn(n, IN), torch.randint(0, 4, (n,))


def factory(**kwargs) -> Fake:
    return Fake(**kwargs)
