"""digits_mlp: an MLP on the 8x8 handwritten digits that scikit-learn ships (1,797 images, no download).

The default workload: real data, trains to 95% validation accuracy in seconds on a CPU.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from stages.workloads.base import Batch
from stages.workloads.classification import Classification


def _digits_file() -> Path | None:
    """scikit-learn's digits.csv.gz, found without importing scikit-learn (0.8 s a process, every stage)."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    path = _digits_file()
    if path is not None:  # the file load_digits() reads: 64 pixel columns, then the label
        data = np.loadtxt(path, delimiter=",")
        pixels, labels = data[:, :-1], data[:, -1].astype(np.int64)
    else:  # another scikit-learn layout
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, labels = bunch.data, bunch.target
    x = torch.tensor(pixels, dtype=torch.float32) / 16.0  # (N, 64), pixel values 0..16 -> 0..1
    y = torch.tensor(labels, dtype=torch.long)            # (N,)
    return x, y


def epoch_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> Iterator[Batch]:
    """Endless shuffled batches of exactly batch_size examples (reshuffled each epoch, last partial batch dropped)."""
    n = x.shape[0]
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} exceeds the {n} training examples")
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = perm[start:start + batch_size]
            yield x[idx], y[idx]


class DigitsMLP(Classification):
    name = "digits_mlp"
    chance_score = 0.1  # ten balanced classes
    example_unit = "image"
    chance_explanation = "ten balanced classes: a guess is right one time in ten"

    def __init__(self, hidden: Sequence[int] = (64,), target: float = 0.95,
                 validation_fraction: float = 0.2, split_seed: int = 0):
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty list of positive widths, got {list(hidden)}")
        if not 0 < validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
        if not 0 < target <= 1:
            raise ValueError(f"target (validation accuracy) must be in (0, 1], got {target}")
        self.hidden = [int(h) for h in hidden]
        self.target_value = float(target)
        self.validation_fraction = validation_fraction
        self.split_seed = split_seed
        x, y = _load_digits()
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(split_seed))
        n_val = int(round(validation_fraction * x.shape[0]))
        val, train = perm[:n_val], perm[n_val:]
        self.x_train, self.y_train = x[train], y[train]
        self.x_val, self.y_val = x[val], y[val]
        self.num_train_examples = int(train.numel())

    def hyperparameters(self) -> dict:
        return {"hidden": self.hidden, "target": self.target_value,
                "validation_fraction": self.validation_fraction, "split_seed": self.split_seed}

    def init_model(self) -> nn.Module:
        layers, width = [], 64
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 10))
        return nn.Sequential(*layers)

    def batches(self, split: str, batch_size: int, seed: int) -> Iterator[Batch]:
        if split != "train":
            raise ValueError(f"digits_mlp streams only the 'train' split, got {split!r}")
        return epoch_batches(self.x_train, self.y_train, batch_size, seed)

    def fake_batch(self, batch_size: int) -> Batch:
        return torch.rand(batch_size, 64), torch.randint(0, 10, (batch_size,))
