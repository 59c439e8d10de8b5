"""The workload interface and its registry.

A workload is everything the playbook assumes the user brings: a model family (factory), data,
a loss, an evaluation, and a target metric with its value and direction. Built-in workloads
(stages/workloads/) and user workloads ('package.module:factory' in params.yaml) go through the
same interface and the same `make_workload()`.

Conventions:
- A batch is a tuple of CPU tensors; `to_device()` moves it. The leading dimension is the batch.
- The optional units (`example_unit`, `tokens_per_example`, `token_unit`, `metric_units`,
  `chance_explanation`) only change how the report words its numbers (stages/core/units.py).
- `loss()` returns (sum over examples, number of examples) so losses combine across batch sizes.
- `evaluate()` returns named metrics, one of which is `target_metric`.
"""
from __future__ import annotations

import abc
import collections.abc
import copy
import importlib
import inspect
import math
import types
import typing
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Iterator, Literal

import torch

from stages.core.config import DataSettings
from stages.core.errors import ConfigError
from stages.workloads.registry import BUILTINS

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
    # the `data:` settings of a workload whose batches come from a torch DataLoader (stages/workloads/dataset.py);
    # None = batches built in memory, nothing for a DataLoader setting to change (throughput skips num_workers)
    loader_settings: DataSettings | None = None
    # What the report counts in (optional: a workload without them reads in examples, as before)
    example_unit: str = "example"          # what one example is, singular: "image", "sequence", "sample"
    tokens_per_example: int | None = None  # tokens in one example (a language model's window): rates and amounts in tokens too
    token_unit: str = "token"              # what one token is, singular: "token", "byte", "character"
    metric_units: Mapping[str, str] = MappingProxyType({})  # metric -> unit; "nats" (per token) adds bits per token
    chance_explanation: str = ""           # what chance_score is, in words: "ten balanced classes: one guess in ten is right"

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

    def with_loader_settings(self, settings: DataSettings) -> "Workload":
        """This workload drawing its batches with other DataLoader settings (a shallow copy: datasets, model
        factory and cached validation data are shared); itself when it has no DataLoader."""
        if self.loader_settings is None:
            return self
        other = copy.copy(self)
        other.loader_settings = settings
        return other

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

def _raised_at(e: BaseException) -> str:
    """'NameError: name 'x' is not defined (my_project/workload.py, line 12)': the error and where it was raised in
    the user's code -- the innermost frame outside Python's import machinery, or the line a SyntaxError names."""
    import os
    import traceback

    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if isinstance(e, SyntaxError) and e.filename:
        file, line = e.filename, e.lineno
        text = f"{type(e).__name__}: {e.msg}"
    else:
        frames = [f for f in traceback.extract_tb(e.__traceback__)
                  if not f.filename.startswith("<frozen") and "importlib" not in f.filename]
        if not frames:
            return text
        file, line = frames[-1].filename, frames[-1].lineno
    try:
        file = os.path.relpath(file)
    except ValueError:
        pass
    return f"{text} ({file}, line {line})"


def import_path(path: str, key: str = "workload.name"):
    """The object 'package.module:attribute' names; a bad path raises ConfigError naming `key`."""
    builtin = f"a built-in name ({', '.join(BUILTINS)}) or " if key == "workload.name" else ""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}: received {path!r}; allowed: {builtin}'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        if not e.name or module_name == e.name or module_name.startswith(e.name + "."):  # the module itself is not there
            raise ConfigError(f"{key}: received {path!r}, but module {module_name!r} cannot be imported ({e}); "
                              f"allowed: {builtin}'package.module:factory' importable from the project root") from None
        raise ConfigError(f"{key}: received {path!r}, but importing module {module_name!r} failed: "
                          f"{_raised_at(e)}; allowed: a module whose imports are installed here") from None
    except Exception as e:  # noqa: BLE001 -- whatever the user's module raises while it runs (NameError, SyntaxError, ...)
        raise ConfigError(f"{key}: received {path!r}, but importing module {module_name!r} raised "
                          f"{_raised_at(e)}; allowed: a module that imports without error (fix that line, then rerun)") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{key}: received {path!r}, but module {module_name!r} has no attribute {attr!r}") from None


def _matches(value: Any, tp: Any) -> bool:
    """Does a YAML value fit annotation `tp`? Strict where YAML is ambiguous: a string is not a sequence
    (`hidden: "64"` would otherwise build widths 6 and 4), a bool is not a number, numbers are finite.
    Annotations this does not understand (user classes, callables, type variables) accept anything."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is inspect.Parameter.empty:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    container = origin or tp
    if container in (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Iterable,
                     collections.abc.Collection):
        if not isinstance(value, (list, tuple)):
            return False
        if container is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return not args or all(_matches(v, args[0]) for v in value)
    if container in (dict, collections.abc.Mapping):
        return isinstance(value, dict) and (not args or all(_matches(k, args[0]) and _matches(v, args[1])
                                                            for k, v in value.items()))
    return True


def _describe_type(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    scalar = {int: "an integer", float: "a finite number", bool: "true/false", str: "a string"}.get(tp)
    if scalar:
        return scalar
    return getattr(tp, "__name__", None) if isinstance(tp, type) else str(tp).replace("typing.", "")


def check_kwarg_types(name: str, factory: Any, kwargs: dict, key: str = "workload.kwargs") -> None:
    """Each kwarg against the factory's annotation (or, where it has none, its default's scalar type);
    `key` is where the kwargs sit in params.yaml (an error names `key.<kwarg>`)."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # annotations naming what cannot be imported here: fall back to the defaults
        hints = {}
    params = inspect.signature(factory).parameters
    for kwarg, value in kwargs.items():
        tp = hints.get(kwarg)
        if tp is None and kwarg in params and type(params[kwarg].default) in (bool, int, float, str):
            tp = type(params[kwarg].default)
            tp = float if tp is int and isinstance(value, float) else tp  # an int default does not forbid 0.5
        if tp is not None and not _matches(value, tp):
            raise ConfigError(f"{key}.{kwarg}: received {value!r} ({type(value).__name__}); allowed: "
                              f"{_describe_type(tp)} (the annotation of {kwarg!r} in {name!r})")


def workload_factory(name: str, kwargs: dict | None = None):
    """The factory `name` resolves to, checked against `kwargs` (names and types) without building
    anything: cheap enough for the Snakefile to run before any job. Raises ConfigError."""
    kwargs = dict(kwargs or {})
    if name in BUILTINS:
        factory = import_path(BUILTINS[name])
    elif ":" in name:
        factory = import_path(name)
    else:
        raise ConfigError(f"workload.name: received {name!r}; allowed: one of {', '.join(BUILTINS)}, or 'package.module:factory' for your own")
    check_call(name, factory, kwargs)
    nested = getattr(factory, "check_kwargs", None)  # a workload whose kwargs feed factories of its own (dataset)
    if callable(nested):
        nested(kwargs)
    return factory


def check_call(name: str, factory: Any, kwargs: dict, key: str = "workload.kwargs") -> None:
    """`factory(**kwargs)` would be accepted: the names by its signature, the values by its annotations
    (ConfigError naming `key`, the place of kwargs in params.yaml). Builds nothing."""
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        try:
            allowed = ", ".join(p for p in inspect.signature(factory).parameters if p != "self") or "none"
        except (TypeError, ValueError):
            allowed = "see the factory's signature"
        raise ConfigError(f"{key}: received {kwargs!r}, which {name!r} does not accept ({e}); allowed arguments: {allowed}") from None
    except ValueError:  # no signature to read (a builtin): the call itself will tell
        return
    check_kwarg_types(name, factory, kwargs, key)


def make_workload(name: str, kwargs: dict | None = None) -> Workload:
    """Build a workload by built-in name or import path; bad names and arguments raise ConfigError."""
    kwargs = dict(kwargs or {})
    factory = workload_factory(name, kwargs)
    try:
        workload = factory(**kwargs)
    except ConfigError:  # already names its key (workload.kwargs.<key>), what it got and what is allowed
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"workload.kwargs: {name!r} rejected {kwargs!r}: {e}") from None
    if not isinstance(workload, Workload):
        raise ConfigError(f"workload.name: {name!r} returned {type(workload).__name__}; allowed: a factory returning a stages.workloads.base.Workload")
    return workload
