"""The workload interface and its registry.

A workload is everything the playbook assumes the user brings: a model family (factory), data,
a loss, an evaluation, and a target metric with its value and direction. Built-in workloads
(stages/workloads/) and user workloads ('package.module:factory' in params.yaml) go through the
same interface and the same `make_workload()`.

Conventions:
- A batch is a tuple of CPU tensors; `to_device()` moves it. The leading dimension is the batch.
- `loss()` returns (sum over examples, number of examples) so losses combine across batch sizes.
- `evaluate()` returns named metrics, one of which is `target_metric`.
"""
from __future__ import annotations

import abc
import importlib
import inspect
import math
from typing import Any, Iterator, Literal

import torch

from stages.core.errors import ConfigError

Batch = tuple[torch.Tensor, ...]
Direction = Literal["above", "below"]


class Workload(abc.ABC):
    """Subclass this for your own model; see docs/own-model.md."""

    name: str = "workload"
    target_metric: str = "accuracy"   # a key of evaluate()'s result
    target_value: float = 0.0         # the goal in that metric
    target_direction: Direction = "above"  # reached when metric >= value ("above") or <= value ("below")
    chance_score: float = 0.0         # the metric of a model that guesses (the floor for "reasonable")
    num_train_examples: int | None = None  # size of the training set; None = unbounded stream

    @abc.abstractmethod
    def init_model(self) -> torch.nn.Module:
        """Build a freshly initialised model (the caller seeds torch first)."""

    @abc.abstractmethod
    def batches(self, split: str, batch_size: int, seed: int) -> Iterator[Batch]:
        """Endless iterator of CPU training batches of exactly `batch_size` examples, order from `seed`."""

    @abc.abstractmethod
    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        """(sum of per-example losses, number of examples) for a batch already on the model's device."""

    @abc.abstractmethod
    def evaluate(self, model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """Named metrics on the validation data (called under torch.no_grad, model in eval mode)."""

    @abc.abstractmethod
    def fake_batch(self, batch_size: int) -> Batch:
        """A worst-case (largest) CPU batch of `batch_size` examples, for memory probing without data."""

    def hyperparameters(self) -> dict[str, Any]:
        """The model-family hyperparameters and workload settings, recorded with every result."""
        return {}

    def source_files(self) -> list[str]:
        """Files whose edits change this workload: the modules of its class and of its base classes."""
        return [inspect.getfile(c) for c in type(self).__mro__ if issubclass(c, Workload) and c is not Workload]


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Copy a CPU batch to `device` (asynchronously on CUDA). On the CPU there is nothing to copy,
    and skipping the per-tensor .to() calls keeps tiny steps' timings free of a few microseconds."""
    if device.type == "cpu":
        return batch
    non_blocking = device.type == "cuda"
    return tuple(t.to(device, non_blocking=non_blocking) for t in batch)


def target_reached(value: float, target: float, direction: Direction) -> bool:
    """The one "target reached" check: NaN never reaches a target."""
    if value is None or not math.isfinite(value):
        return False
    return value >= target if direction == "above" else value <= target


def better_than_chance(workload: Workload) -> bool:
    """Is the target strictly better than guessing? (the playbook's floor for 'reasonable performance')"""
    if workload.target_direction == "above":
        return workload.target_value > workload.chance_score
    return workload.target_value < workload.chance_score


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def has_batch_norm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


# ---------------------------------------------------------------------------- registry

BUILTINS: dict[str, str] = {
    "digits_mlp": "stages.workloads.digits_mlp:DigitsMLP",
    "synthetic_cnn": "stages.workloads.synthetic_cnn:SyntheticCNN",
    "nqm": "stages.workloads.nqm:NoisyQuadratic",
}


def _import(path: str, key: str = "workload.name"):
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}: received {path!r}; allowed: a built-in name ({', '.join(BUILTINS)}) or 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{key}: received {path!r}, but module {module_name!r} cannot be imported ({e}); "
                          f"allowed: a built-in name ({', '.join(BUILTINS)}) or 'package.module:factory' importable from the project root") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{key}: received {path!r}, but module {module_name!r} has no attribute {attr!r}") from None


def make_workload(name: str, kwargs: dict | None = None) -> Workload:
    """Build a workload by built-in name or import path; bad names and arguments raise ConfigError."""
    kwargs = dict(kwargs or {})
    if name in BUILTINS:
        factory = _import(BUILTINS[name])
    elif ":" in name:
        factory = _import(name)
    else:
        raise ConfigError(f"workload.name: received {name!r}; allowed: one of {', '.join(BUILTINS)}, or 'package.module:factory' for your own")
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        try:
            allowed = ", ".join(p for p in inspect.signature(factory).parameters if p != "self") or "none"
        except (TypeError, ValueError):
            allowed = "see the factory's signature"
        raise ConfigError(f"workload.kwargs: received {kwargs!r}, which {name!r} does not accept ({e}); allowed arguments: {allowed}") from None
    try:
        workload = factory(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"workload.kwargs: {name!r} rejected {kwargs!r}: {e}") from None
    if not isinstance(workload, Workload):
        raise ConfigError(f"workload.name: {name!r} returned {type(workload).__name__}; allowed: a factory returning a stages.workload.Workload")
    return workload
