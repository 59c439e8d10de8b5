"""Factories for the `dataset` workload's tests: a tiny model, small Datasets (one whose __getitem__
sleeps, one that breaks each rule the workload checks), referenced from params as 'tests.dataset_fakes:NAME'.

The classification task: 8 Gaussian features, class = sign pattern of the first two (4 classes), so a
small MLP learns it in a few dozen steps and the chance level (majority class) is about 0.25-0.3.
"""
from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset, TensorDataset

FEATURES, CLASSES = 8, 4


class Quadrants(Dataset):
    """`n` examples (x: (8,) float32, y: int); `sleep_per_example_s` of sleep per __getitem__ (a slow decoder)."""

    def __init__(self, n: int = 256, seed: int = 0, sleep_per_example_s: float = 0.0):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, FEATURES, generator=gen)
        self.y = (self.x[:, 0] > 0).long() + 2 * (self.x[:, 1] > 0).long()
        self.sleep_per_example_s = sleep_per_example_s

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        if self.sleep_per_example_s:
            time.sleep(self.sleep_per_example_s)
        return self.x[i], int(self.y[i])


def train_set(n: int = 256, sleep_per_example_s: float = 0.0) -> Quadrants:
    return Quadrants(n, 0, sleep_per_example_s)


def validation_set(n: int = 256, sleep_per_example_s: float = 0.0) -> Quadrants:
    return Quadrants(min(n, 128), 1)


class SlowModel(nn.Module):
    """A tiny MLP whose forward also waits `step_s` (the compute of a bigger model, without using a core);
    `dropout` draws from torch's global random state in training, as a transformer's dropout does."""

    def __init__(self, step_s: float = 0.0, hidden: int = 16, outputs: int = CLASSES, spin: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, outputs))
        self.step_s, self.spin = step_s, spin

    def forward(self, x):
        if self.step_s and self.training:
            if self.spin:  # a busy wait: exactly step_s, where sleep's wake-up overshoot varies run to run
                end = time.perf_counter() + self.step_s
                while time.perf_counter() < end:
                    pass
            else:
                time.sleep(self.step_s)
        return self.net(x)


def model(step_s: float = 0.0, hidden: int = 16, outputs: int = CLASSES, spin: bool = False,
          dropout: float = 0.0) -> nn.Module:
    return SlowModel(step_s, hidden, outputs, spin, dropout)


# ---------------------------------------------------------------------------- outputs as libraries return them

class Wrapped(nn.Module):
    """The tiny MLP whose output comes back the way `form` says, as model libraries return theirs:
    tensor, dataclass (.logits, like a transformers ModelOutput), dict, tuple, or a form nothing can read.
    Given `labels`, it computes its own mean cross-entropy and returns it too (`loss`, or a tuple's first)."""

    def __init__(self, form: str):
        super().__init__()
        self.net, self.form = SlowModel(), form

    def forward(self, x, labels=None):
        logits = self.net(x)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        if self.form == "tensor":
            return logits
        if self.form == "dataclass":
            return Output(logits=logits, loss=loss)
        if self.form == "dict":
            return {"logits": logits, **({"loss": loss} if loss is not None else {})}
        if self.form == "tuple":  # transformers' return_dict=False: (loss, logits, ...) given labels, else (logits, ...)
            return (logits, logits.detach()) if loss is None else (loss, logits, logits.detach())
        if self.form == "scores":  # a dict without 'logits': the user says which key (workload.kwargs.output)
            return {"scores": logits, "hidden": logits.detach()}
        if self.form == "string":
            return "not a tensor"
        raise ValueError(self.form)


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class Unprintable:
    """An output whose repr and attributes raise: no error message may fail on it."""

    def __repr__(self):
        raise RuntimeError("no repr")

    def __getattr__(self, name):
        raise RuntimeError(f"no {name}")


class ReturnsUnprintable(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = SlowModel()

    def forward(self, x):
        self.net(x)
        return Unprintable()


def wrapped(form: str = "tensor") -> nn.Module:
    return Wrapped(form)


def unprintable() -> nn.Module:
    return ReturnsUnprintable()


def regression_set(**_) -> TensorDataset:
    x = torch.randn(64, FEATURES, generator=torch.Generator().manual_seed(2))
    return TensorDataset(x, 3.0 * x[:, :1])  # targets (1,) float, variance 9 about the mean


def margin_loss(output, target):
    """A loss of your own: per-example multi-class hinge, (B,)."""
    return torch.nn.functional.multi_margin_loss(output, target, reduction="none")


def top2(output, target):
    """A metric of your own: is the target among the two highest logits, (B,)."""
    return (output.topk(2, dim=-1).indices == target[:, None]).any(-1).float()


# ---------------------------------------------------------------------------- broken factories

def raises(**_):
    raise RuntimeError("the data folder /data/train is missing")


def a_list(**_):
    return [(torch.zeros(FEATURES), 0)] * 4


def empty(**_):
    return TensorDataset(torch.zeros(0, FEATURES), torch.zeros(0, dtype=torch.long))


class _Ragged(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.zeros(FEATURES if i < 5 else FEATURES + 1), 0


def ragged(**_):
    return _Ragged()


class _Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(FEATURES), 0


def stream(**_):
    return _Stream()


def not_a_model(**_):
    return "a model"
