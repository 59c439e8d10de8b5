"""dataset: your own nn.Module and torch Datasets, batched by a real torch DataLoader (docs/dataset.md).

Configured entirely in params.yaml with import paths, so code that already has a model and a
`torch.utils.data.Dataset` plugs in without writing a Workload:

    workload:
      name: dataset
      kwargs: {model: my_project.data:make_model, train: my_project.data:train_set,
               validation: my_project.data:validation_set, loss: cross_entropy, target: 0.9}

An example is a tuple (x1, ..., xk, y): the model is called as model(x1, ..., xk) and the loss and
metrics compare its output with y. Training batches come from a DataLoader built with the `data:`
section of params.yaml (num_workers, pin_memory, persistent_workers, prefetch_factor), shuffled from
the seed, last partial batch dropped. Everything checkable is checked when the workload is built,
before any stage works: each factory is imported and called, each Dataset is map-style and
non-empty, and a few examples spread over each Dataset have the same shapes and dtypes. The
validation set is read once per process (through a DataLoader with the same workers) and kept.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from functools import partial
from typing import Any, Callable, Iterator, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from torch.utils.data._utils.collate import default_collate

from stages.core.advice import metric_range
from stages.core.config import DataSettings
from stages.core.errors import ConfigError
from stages.workloads.base import Batch, Workload, check_call, import_path

LOSSES = ("cross_entropy", "mse", "model")  # built-in losses ("model": the model's own, given the labels); else 'package.module:function'
METRICS = ("accuracy", "loss")      # built-in metrics; anything else is 'package.module:function'
EVAL_CHUNK = 512                    # validation examples per forward pass: bounds evaluation memory
CHECKED_EXAMPLES = 5                # examples read per Dataset at build time (first, last, spread between)
KEY = "workload.kwargs"

PerExample = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (output, target) -> (B,) values


def data_loader(dataset: Dataset, batch_size: int, settings: DataSettings, seed: int | None = None,
                shuffle: bool = True, drop_last: bool = True, collate_fn: Callable | None = None) -> DataLoader:
    """A DataLoader with the `data:` settings; persistent_workers and prefetch_factor only mean something
    with workers (torch refuses them without), so num_workers 0 leaves them out. Pinning needs CUDA.

    With a `seed`, the order of every epoch comes from the seed alone (`EpochShuffle`), whatever
    num_workers and persistent_workers: torch's own shuffle shares its generator with the workers' base
    seed, which a new iterator draws every epoch but persistent workers draw once, so the second epoch's
    order would differ between the study (timed without workers) and a run with the recommended ones.
    The loader's generator is always seeded, so reading a loader never draws from torch's global random
    state (which a model's dropout uses: the study's first trial in a process and its later ones would
    otherwise train differently)."""
    extra: dict[str, Any] = {}
    if settings.num_workers > 0:
        extra["persistent_workers"] = settings.persistent_workers
        if settings.prefetch_factor is not None:
            extra["prefetch_factor"] = settings.prefetch_factor
    generator = torch.Generator().manual_seed(0 if seed is None else seed)  # the workers' base seed, from `seed`
    sampler = EpochShuffle(len(dataset), seed) if shuffle and seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      drop_last=drop_last, num_workers=settings.num_workers,
                      pin_memory=settings.pin_memory and torch.cuda.is_available(),
                      generator=generator, collate_fn=collate_fn, **extra)


class EpochShuffle(Sampler):
    """Epoch k's order is the k-th permutation drawn from a generator seeded with `seed`, and nothing else
    draws from that generator: the same batches in the same order for the same seed, however many
    workers load them and whether they persist across epochs."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:  # a generator: the permutation is drawn when the epoch starts
        yield from torch.randperm(self.n, generator=self.generator).tolist()


def endless(loader: DataLoader) -> Iterator[Batch]:
    """Epoch after epoch of `loader` as tuples of tensors (each epoch reshuffled by the loader's generator)."""
    while True:
        with one_line_errors():
            for batch in loader:
                yield tuple(batch)


class Numbered(Dataset):
    """The user's Dataset, each example with its index: a batch that cannot be made names the bad example."""

    def __init__(self, dataset: Dataset, key: str):
        self.dataset, self.key = dataset, key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            return i, self.dataset[i]
        except Exception as e:
            raise ConfigError(f"{self.key}: reading example {i} raised {_first_line(e)}; allowed: a Dataset whose "
                              f"every index below its length returns an example") from None


def collate_checked(numbered: list, key: str = KEY, spec: "Spec | None" = None) -> tuple:
    """default_collate of the examples; when they cannot be stacked or one differs from `spec` (the shapes
    and dtypes checked at build time), a ConfigError naming the first example that differs and its index."""
    indices, examples = zip(*numbered)
    try:
        batch = default_collate(list(examples))
        fine = spec is None or tuple((tuple(f.shape[1:]), f.dtype) for f in batch) == spec
    except Exception:
        batch, fine = None, False
    if fine:
        return batch
    expected = spec or _example_spec(examples[0])
    for i, example in zip(indices, examples):
        found = _example_spec(example)
        if found != expected:
            raise ConfigError(f"{key}: example {i} is {_describe(found) if isinstance(found, tuple) else found}, but "
                              f"the examples checked are {_describe(expected)}; allowed: every example with the same "
                              f"shapes and dtypes, a tuple (inputs..., target) of tensors or numbers")
    default_collate(list(examples))  # no single example to blame: its own error
    return batch


def _example_spec(example) -> "Spec | str":
    if not isinstance(example, (tuple, list)):
        return f"a {type(example).__name__}"
    try:
        return tuple((tuple(f.shape), f.dtype) for f in (default_collate([x]).squeeze(0) for x in example))
    except Exception:
        return "(" + ", ".join(type(x).__name__ for x in example) + ")"


class one_line_errors:
    """A ConfigError raised in a DataLoader worker comes back wrapped in its traceback: keep its one line."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is ConfigError and str(exc).startswith("Caught ConfigError"):
            raise ConfigError(str(exc).rstrip().splitlines()[-1].split("ConfigError: ", 1)[-1]) from None
        return False


# ---------------------------------------------------------------------------- per-example losses and metrics

def _class_dim_second(output: torch.Tensor) -> torch.Tensor:
    """(B, T, C) logits -> (B, C, T), the layout cross_entropy expects for per-position targets."""
    return output.movedim(-1, 1) if output.dim() > 2 else output


def _per_example(values: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,): the mean over everything but the batch dimension (e.g. over sequence positions)."""
    return values.reshape(values.shape[0], -1).float().mean(1)


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return _per_example(nn.functional.cross_entropy(_class_dim_second(output), target, reduction="none"))


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if output.shape != target.shape and output.numel() == target.numel():
        output = output.reshape(target.shape)  # (B, 1) outputs against (B,) targets
    if output.shape != target.shape:  # broadcasting would compare every output with every target, silently
        raise ValueError(f"mse compares the model's outputs {list(output.shape)} with the targets "
                         f"{list(target.shape)}: they must have the same shape (class labels: use cross_entropy)")
    return _per_example(nn.functional.mse_loss(output, target.to(output.dtype), reduction="none"))


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return _per_example(output.argmax(-1) == target)


BUILTIN_LOSSES: dict[str, PerExample] = {"cross_entropy": cross_entropy, "mse": mse}


def _function(key: str, value: Any, builtins: tuple[str, ...], what: str) -> Callable:
    if not isinstance(value, str) or (value not in builtins and ":" not in value):
        raise ConfigError(f"{key}: received {value!r}; allowed: {', '.join(builtins)}, or 'package.module:function' "
                          f"taking (output, target) and returning one {what} per example")
    found = import_path(value, key)
    if not callable(found):
        raise ConfigError(f"{key}: received {value!r}, which is a {type(found).__name__}; allowed: a function "
                          f"(output, target) -> one {what} per example")
    return found


# ---------------------------------------------------------------------------- the model's output, as libraries return it

OUTPUT_FORMS = ("a tensor, an object with .logits (a transformers ModelOutput, a dataclass), a dict with 'logits', "
                "or a tuple (its first element)")


def kind_of(value: Any) -> str:
    """What a value is, in a few words for a message ('a tensor [2, 10] float32', 'a dict with keys [...]'). Never
    raises: it describes what a user's model returned, whatever that is."""
    try:
        if isinstance(value, torch.Tensor):
            return f"a tensor {list(value.shape)} {str(value.dtype).replace('torch.', '')}"
        name = type(value).__name__
        if isinstance(value, Mapping):
            keys = [str(k) for k in list(value.keys())[:8]]
            return f"a {name} with keys {keys}"
        if isinstance(value, (tuple, list)):
            parts = ", ".join(type(v).__name__ for v in value[:4]) + (", ..." if len(value) > 4 else "")
            return f"a {name} of {len(value)} ({parts})"
        fields = [f.name for f in dataclasses.fields(value)][:8] if dataclasses.is_dataclass(value) else None
        return f"a {name}" + (f" with fields {fields}" if fields is not None else "")
    except Exception:  # a type whose own methods fail: its name alone
        try:
            return f"a {type(value).__name__}"
        except Exception:
            return "an object"


def _is_loss(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 0


_MISSING = object()


def _attribute(value: Any, name: str) -> Any:
    """getattr that a user's object cannot make raise (a __getattr__ may raise anything): _MISSING instead."""
    try:
        return getattr(value, name)
    except Exception:
        return _MISSING


def output_part(output: Any, field: str | int | None, own_loss: bool = False) -> torch.Tensor:
    """The predictions in what the model returned, the tensor the loss and metrics compare with the targets:
    `field` names it (an attribute, a dict key, a tuple index); None takes the output itself if it is a
    tensor, else its `logits` (attribute or key), else a tuple's first element (with the model's own loss,
    the first that is not that scalar loss). Anything else: ConfigError naming what came back and the setting."""
    key = f"{KEY}.output"
    if field is not None:
        found, ok = None, False
        if isinstance(output, Mapping) and field in output:
            found, ok = output[field], True
        elif isinstance(field, int) and isinstance(output, (tuple, list)) and -len(output) <= field < len(output):
            found, ok = output[field], True
        elif isinstance(field, str) and not isinstance(output, (torch.Tensor, Mapping, tuple, list)) and \
                _attribute(output, field) is not _MISSING:
            found, ok = _attribute(output, field), True
        if not ok:
            raise ConfigError(f"{key}: received {field!r}, but the model returned {kind_of(output)}, which has no "
                              f"{field!r}; allowed: the attribute or key (a tuple: the index) holding the predictions, "
                              f"or null for {OUTPUT_FORMS}")
    elif isinstance(output, torch.Tensor):
        return output
    elif isinstance(_attribute(output, "logits"), torch.Tensor):
        found = _attribute(output, "logits")
    elif isinstance(output, Mapping) and "logits" in output:
        found = output["logits"]
    elif isinstance(output, (tuple, list)) and len(output):
        rest = [v for v in output if not (own_loss and _is_loss(v))]
        found = rest[0] if rest else output[0]
    else:
        raise ConfigError(f"{key}: received null, but the model returned {kind_of(output)}; allowed: {OUTPUT_FORMS} "
                          f"-- or set {key} to the attribute or key (a tuple: the index) that holds the predictions")
    if not isinstance(found, torch.Tensor):
        raise ConfigError(f"{key}: the predictions taken from the model's output ({kind_of(output)}) are "
                          f"{kind_of(found)}; allowed: a tensor (set {key} to the attribute or key that holds it)")
    return found


def own_loss(output: Any, labels_keyword: str) -> torch.Tensor:
    """The mean loss a model computed itself when given the targets as `labels_keyword`: its output's `loss`
    (attribute or key), or the one scalar tensor of a tuple (transformers' (loss, logits, ...), or (logits, loss))."""
    if isinstance(output, Mapping):
        found = output.get("loss")
    elif isinstance(output, (tuple, list)):
        scalars = [v for v in output if _is_loss(v)]
        found = scalars[0] if len(scalars) == 1 else None
    else:
        found = _attribute(output, "loss")
    if isinstance(found, torch.Tensor) and found.numel() == 1:
        return found.reshape(())
    raise ConfigError(f"{KEY}.loss: received 'model', but called with {labels_keyword}=<targets> the model returned "
                      f"{kind_of(output)}, with no loss in it; allowed: 'model' for a model whose output then has a "
                      f"`loss` (a transformers model given labels) or holds one scalar loss in a tuple, else a loss "
                      f"function: {', '.join(x for x in LOSSES if x != 'model')}, or 'package.module:function'")


def _first_line(e: BaseException) -> str:
    """An exception's first line for a message, never raising (a user's exception may fail to print)."""
    try:
        text = str(e).strip()
    except Exception:
        text = ""
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


# ---------------------------------------------------------------------------- build-time checks

def _call(key: str, path: str, kwargs: dict, expected: str) -> Any:
    factory = import_path(path, key) if isinstance(path, str) else None
    if not callable(factory):
        raise ConfigError(f"{key}: received {path!r}; allowed: 'package.module:factory' naming a callable that "
                          f"returns {expected}")
    try:
        return factory(**kwargs)
    except Exception as e:  # the user's code: its own error, named, on one line
        raise ConfigError(f"{key}: {path} raised {_first_line(e)}; allowed: a factory that returns {expected} "
                          f"when called with {kwargs!r}") from None


def _check_dataset(key: str, path: str, dataset: Any) -> int:
    if isinstance(dataset, IterableDataset) or not isinstance(dataset, Dataset):
        raise ConfigError(f"{key}: {path} returned {type(dataset).__name__}; allowed: a map-style "
                          f"torch.utils.data.Dataset (with __len__ and __getitem__)")
    try:
        n = len(dataset)
    except TypeError:
        raise ConfigError(f"{key}: {path} returned a {type(dataset).__name__} without __len__; allowed: a map-style "
                          f"torch.utils.data.Dataset (with __len__ and __getitem__)") from None
    if n < 1:
        raise ConfigError(f"{key}: {path} returned a Dataset of length {n}; allowed: at least one example")
    return n


Spec = tuple[tuple[tuple[int, ...], torch.dtype], ...]  # (shape, dtype) of each field of one example


def _spec(key: str, dataset: Dataset, index: int) -> tuple[Spec, tuple[torch.Tensor, ...]]:
    try:
        example = dataset[index]
    except Exception as e:
        raise ConfigError(f"{key}: reading example {index} raised {_first_line(e)}") from None
    if not isinstance(example, (tuple, list)) or len(example) < 2:
        raise ConfigError(f"{key}: example {index} is a {type(example).__name__}"
                          f"{f' of {len(example)} field(s)' if isinstance(example, (tuple, list)) else ''}; allowed: a "
                          f"tuple (inputs..., target) of tensors or numbers, at least one input and the target")
    try:
        fields = tuple(default_collate([f]).squeeze(0) for f in example)  # what the DataLoader makes of each field
    except Exception:
        kinds = ", ".join(type(f).__name__ for f in example)
        raise ConfigError(f"{key}: example {index} holds ({kinds}); allowed: tensors, numpy arrays or numbers") from None
    return tuple((tuple(f.shape), f.dtype) for f in fields), fields


def _describe(spec: Spec) -> str:
    return "(" + ", ".join(f"{list(shape)} {str(dtype).replace('torch.', '')}" for shape, dtype in spec) + ")"


def check_examples(key: str, dataset: Dataset, n: int) -> tuple[Spec, tuple[torch.Tensor, ...]]:
    """The shapes and dtypes of a few examples spread over the Dataset (first and last included), which must
    agree -- a DataLoader could not batch them; returns the spec and the first example's fields."""
    indices = sorted({round(i * (n - 1) / (CHECKED_EXAMPLES - 1)) for i in range(CHECKED_EXAMPLES)})
    first_spec, first = _spec(key, dataset, indices[0])
    for i in indices[1:]:
        spec, _ = _spec(key, dataset, i)
        if spec != first_spec:
            raise ConfigError(f"{key}: examples differ in shape or dtype: example {indices[0]} is {_describe(first_spec)}, "
                              f"example {i} is {_describe(spec)}; allowed: every example with the same shapes and "
                              f"dtypes (pad or crop inside the Dataset), since a batch stacks them")
    return first_spec, first


# ---------------------------------------------------------------------------- the workload

class DatasetWorkload(Workload):
    name = "dataset"

    def __init__(self, model: str, train: str, validation: str, target: float, loss: str = "cross_entropy",
                 metrics: list[str] | None = None, target_metric: str = "accuracy",
                 direction: Literal["above", "below"] | None = None, chance: float | None = None,
                 model_kwargs: dict | None = None, data_kwargs: dict | None = None,
                 output: str | int | None = None, labels_keyword: str = "labels",
                 example_unit: str = "example", tokens_per_example: int | None = None, token_unit: str = "token",
                 metric_units: dict[str, str] | None = None):
        self.kwargs = {"model": model, "train": train, "validation": validation, "target": target, "loss": loss,
                       "metrics": metrics, "target_metric": target_metric, "direction": direction, "chance": chance,
                       "model_kwargs": model_kwargs or {}, "data_kwargs": data_kwargs or {}}
        # the settings added later are recorded only where set, so a study run before them keeps its identity
        added = {"output": (output, None), "labels_keyword": (labels_keyword, "labels"),
                 "example_unit": (example_unit, "example"), "tokens_per_example": (tokens_per_example, None),
                 "token_unit": (token_unit, "token"), "metric_units": (metric_units, None)}
        self.kwargs.update({k: v for k, (v, default) in added.items() if v != default})
        self.output_field, self.labels_keyword = output, labels_keyword
        self.own_loss = loss == "model"  # the model computes its loss itself, given the targets as `labels_keyword`
        self._set_units(example_unit, tokens_per_example, token_unit, metric_units)
        # loss_fn: per-example losses of (predictions, targets); None for the model's own loss
        self.loss_fn: PerExample | None = None if self.own_loss else (
            BUILTIN_LOSSES.get(loss) or _function(f"{KEY}.loss", loss, LOSSES, "loss"))
        names = list(metrics) if metrics is not None else ["loss"] + (["accuracy"] if loss == "cross_entropy" else [])
        if not names:
            raise ConfigError(f"{KEY}.metrics: received []; allowed: a non-empty list of {', '.join(METRICS)} or "
                              f"'package.module:function' names")
        self.metric_fns: dict[str, PerExample | None] = {}  # None: the model's own loss (loss: model)
        for i, m in enumerate(names):
            fn = {"accuracy": accuracy, "loss": self.loss_fn}.get(m) if m in METRICS else \
                _function(f"{KEY}.metrics[{i}]", m, METRICS, "value")
            self.metric_fns[m.rpartition(":")[2]] = fn  # an import path's metric is named after its function
        if target_metric not in self.metric_fns:
            raise ConfigError(f"{KEY}.target_metric: received {target_metric!r}; allowed: one of the metrics "
                              f"{list(self.metric_fns)} ({KEY}.metrics)")
        unknown = [m for m in self.metric_units if m not in self.metric_fns]
        if unknown:
            raise ConfigError(f"{KEY}.metric_units: received units for {unknown}; allowed: units of the metrics "
                              f"{list(self.metric_fns)} ({KEY}.metrics), e.g. {{loss: nats}}")
        if direction is None and target_metric not in METRICS:
            raise ConfigError(f"{KEY}.direction: received null for the metric {target_metric!r}; allowed: 'above' "
                              f"(higher is better) or 'below' (lower is better)")
        self.target_metric = target_metric
        self.target_direction = direction or ("above" if target_metric == "accuracy" else "below")
        self.target_value = float(target)
        bounds = metric_range(target_metric) if target_metric in METRICS else None  # a metric of your own: unknown
        if bounds and not bounds[0] <= self.target_value <= bounds[1]:
            raise ConfigError(f"{KEY}.target: received {target!r} for {target_metric}; allowed: a value in "
                              f"[{bounds[0]:g}, {bounds[1]:g}]{' (a fraction, not a percentage)' if target_metric == 'accuracy' else ''}")
        self._chance = None if chance is None else float(chance)
        self.loader_settings = DataSettings()  # the stages that read batches set params.yaml's `data:` section

        self.model_factory = import_path(model, f"{KEY}.model") if isinstance(model, str) else None
        self._check_model(model)
        data_kwargs = data_kwargs or {}
        self.train_set = _call(f"{KEY}.train", train, data_kwargs, "a torch.utils.data.Dataset")
        self.num_train_examples = _check_dataset(f"{KEY}.train", train, self.train_set)
        self.validation_set = _call(f"{KEY}.validation", validation, data_kwargs, "a torch.utils.data.Dataset")
        n_val = _check_dataset(f"{KEY}.validation", validation, self.validation_set)
        spec, self.first_example = check_examples(f"{KEY}.train", self.train_set, self.num_train_examples)
        self.spec = spec  # every batch is checked against it (collate_checked)
        val_spec, _ = check_examples(f"{KEY}.validation", self.validation_set, n_val)
        if val_spec != spec:
            raise ConfigError(f"{KEY}.validation: its examples are {_describe(val_spec)} but the training examples "
                              f"are {_describe(spec)}; allowed: the same shapes and dtypes in both Datasets")
        if self._chance is None and self._chance_rule() is None:
            raise ConfigError(f"{KEY}.chance: received null, but the chance level of {target_metric!r} is known only "
                              f"for accuracy on class targets, loss with cross_entropy on class targets, and loss "
                              f"with mse{' (not for a loss the model computes itself)' if self.own_loss else ''}; "
                              f"allowed: the score of a model that guesses, as a number")
        self._check_outputs(spec)
        self._validation: tuple[torch.Tensor, ...] | None = None

    @staticmethod
    def check_kwargs(kwargs: dict) -> None:
        """model_kwargs against the model factory's signature and data_kwargs against the Datasets' (names and
        types), importing them but building nothing: workload_factory runs it, so a family candidate's
        model_kwargs are checked before any job (ConfigError naming workload.kwargs.model_kwargs)."""
        for path_key, kwargs_key in (("model", "model_kwargs"), ("train", "data_kwargs"), ("validation", "data_kwargs")):
            path, given = kwargs.get(path_key), kwargs.get(kwargs_key) or {}
            if not isinstance(path, str) or not isinstance(given, dict):  # building the workload names these
                continue
            factory = import_path(path, f"{KEY}.{path_key}")
            if callable(factory):
                check_call(path, factory, given, f"{KEY}.{kwargs_key}")

    def _check_outputs(self, spec: Spec) -> None:
        """The model's output for two training examples through the loss and each metric (on the meta
        device: no memory, no compute), so a loss that does not fit the targets -- mse on class labels --
        or an output that holds no predictions stops here with one line instead of a traceback mid-trial.
        Skipped where the model cannot run on meta (the first training step then says the same)."""
        try:
            with torch.device("meta"):
                model = self.model_factory(**self.kwargs["model_kwargs"])
            *inputs, target = (f.unsqueeze(0).expand(2, *f.shape).to("meta") for f in self.first_example)
            output = self.forward(model, inputs, target)
        except Exception:  # an op without a meta kernel, init code that needs values: the first trial will tell
            return
        if self.own_loss:
            own_loss(output, self.labels_keyword)  # ConfigError: no loss in it
        functions = [(f"{KEY}.metrics", name, fn) for name, fn in self.metric_fns.items()
                     if fn is not None and fn is not self.loss_fn]
        if self.loss_fn is not None:
            functions.insert(0, (f"{KEY}.loss", self.kwargs["loss"], self.loss_fn))
        if not functions:
            return
        predictions = output_part(output, self.output_field, self.own_loss)  # ConfigError: none to be found
        for key, name, fn in functions:
            try:
                values = fn(predictions, target)
                shape = list(values.shape) if isinstance(values, torch.Tensor) else None
            except Exception as e:
                raise ConfigError(f"{key}: {name!r} fails on the model's output {kind_of(predictions).removeprefix('a tensor ')} "
                                  f"against the targets {kind_of(target).removeprefix('a tensor ')} ({_first_line(e)}); "
                                  f"allowed: a function of (output, target) returning one value per example, e.g. "
                                  f"cross_entropy for class labels") from None
            if shape != [2]:
                raise ConfigError(f"{key}: {name!r} returned {shape if shape is not None else kind_of(values)} for "
                                  f"two examples; allowed: one value per example, shape [2]")

    def _check_model(self, path: str) -> None:
        key, kwargs = f"{KEY}.model", self.kwargs["model_kwargs"]
        if not callable(self.model_factory):
            raise ConfigError(f"{key}: received {path!r}; allowed: 'package.module:factory' returning a torch.nn.Module")
        try:
            with torch.device("meta"):  # no memory, even for a large model
                built = self.model_factory(**kwargs)
        except Exception:  # init code that needs real values: build it for real
            built = _call(key, path, kwargs, "a torch.nn.Module")
        if not isinstance(built, nn.Module):
            raise ConfigError(f"{key}: {path} returned {type(built).__name__}; allowed: a factory returning a torch.nn.Module")
        if self.own_loss:
            try:
                params = inspect.signature(built.forward).parameters.values()
            except (TypeError, ValueError):  # no signature to read: the first forward will tell
                return
            if not any(p.name == self.labels_keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
                names = [p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]
                raise ConfigError(f"{KEY}.labels_keyword: received {self.labels_keyword!r}, but {path}'s forward takes "
                                  f"{names}; allowed: the argument the model takes its targets under, to compute its "
                                  f"own loss (loss: model)")

    def forward(self, model: nn.Module, inputs: list[torch.Tensor], target: torch.Tensor) -> Any:
        """What the model returns for a batch: called as model(*inputs), with the targets as
        `labels_keyword` when it computes its own loss."""
        if self.own_loss:
            return model(*inputs, **{self.labels_keyword: target})
        return model(*inputs)

    # -- chance level

    def _chance_rule(self) -> Callable[[torch.Tensor], float] | None:
        """How to compute the chance level of the target metric from the validation targets, if known."""
        integer_targets = not self.first_example[-1].is_floating_point()
        if self.target_metric == "accuracy" and integer_targets:
            return lambda y: float(torch.bincount(y.flatten()).max()) / y.numel()  # always the majority class
        if self.target_metric == "loss" and self.loss_fn is cross_entropy and integer_targets:
            def entropy(y: torch.Tensor) -> float:  # predicting the class frequencies: their entropy, in nats
                p = torch.bincount(y.flatten()).double() / y.numel()
                return float(-(p[p > 0] * p[p > 0].log()).sum())
            return entropy
        if self.target_metric == "loss" and self.loss_fn is mse:
            return lambda y: float(((y.double() - y.double().mean(0)) ** 2).mean())  # predicting the mean target
        return None

    @property
    def chance_score(self) -> float:
        if self._chance is None:
            self._chance = self._chance_rule()(self.validation_tensors()[-1])
        return self._chance

    @property
    def chance_explanation(self) -> str:
        """What the chance level is, in words (the report shows it beside the number)."""
        if self.kwargs["chance"] is not None:
            return f"as given in {KEY}.chance"
        what = self.token_unit if self.tokens_per_example else "class"
        if self.target_metric == "accuracy":
            return (f"the share of the most common {what} in the validation targets: the accuracy of always "
                    f"guessing it")
        if self.loss_fn is cross_entropy:
            return (f"the entropy of the {what} frequencies in the validation targets, in nats: the loss of a model "
                    f"that predicts every {what} by its frequency alone, ignoring the input")
        return "the variance of the validation targets: the mse of always predicting their mean"

    def _set_units(self, example_unit: str, tokens_per_example: int | None, token_unit: str,
                   metric_units: dict[str, str] | None) -> None:
        """What one example (and token) is, and the metrics' units: the report speaks them (tokens/s, bits per byte)."""
        for key, value in (("example_unit", example_unit), ("token_unit", token_unit)):
            if not value.strip():
                raise ConfigError(f"{KEY}.{key}: received {value!r}; allowed: a word naming one of them, e.g. "
                                  f"{'image, sequence, sample' if key == 'example_unit' else 'token, byte, character'}")
        if tokens_per_example is not None and tokens_per_example < 1:
            raise ConfigError(f"{KEY}.tokens_per_example: received {tokens_per_example}; allowed: a positive integer "
                              f"(the tokens in one example), or null")
        self.example_unit, self.tokens_per_example, self.token_unit = example_unit.strip(), tokens_per_example, token_unit.strip()
        self.metric_units = dict(metric_units or {})

    # -- the interface

    def hyperparameters(self) -> dict:
        return dict(self.kwargs)

    def source_files(self) -> list[str]:
        """This module, and the modules of the model, Dataset, loss and metric functions (so the scaling
        study's journal reruns trials when the user's code changes)."""
        found = list(super().source_files())
        for fn in (self.model_factory, self.loss_fn, *self.metric_fns.values(),
                   import_path(self.kwargs["train"], f"{KEY}.train"), import_path(self.kwargs["validation"], f"{KEY}.validation")):
            try:
                path = inspect.getfile(fn)
            except TypeError:  # a builtin
                continue
            if path not in found:
                found.append(path)
        return found

    def init_model(self) -> nn.Module:
        model = self.model_factory(**self.kwargs["model_kwargs"])
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{KEY}.model: {self.kwargs['model']} returned {type(model).__name__}; allowed: a torch.nn.Module")
        return model

    def batches(self, split: str, batch_size: int, seed: int) -> Iterator[Batch]:
        if split != "train":
            raise ValueError(f"dataset streams only the 'train' split, got {split!r}")
        if batch_size > self.num_train_examples:  # drop_last would give no batch at all: an endless empty loop
            raise ValueError(f"batch size {batch_size} exceeds the {self.num_train_examples} training examples")
        return endless(data_loader(Numbered(self.train_set, f"{KEY}.train"), batch_size, self.loader_settings, seed,
                                   collate_fn=partial(collate_checked, key=f"{KEY}.train", spec=self.spec)))

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        *inputs, target = batch
        output = self.forward(model, inputs, target)
        if self.own_loss:  # the model's mean over the batch, weighted as the batch's examples
            return own_loss(output, self.labels_keyword) * target.shape[0], target.shape[0]
        return self.loss_fn(output_part(output, self.output_field), target).sum(), target.shape[0]

    def validation_tensors(self) -> tuple[torch.Tensor, ...]:
        """The whole validation set as CPU tensors (N, ...), read once through a DataLoader in order."""
        if self._validation is None:
            loader = data_loader(Numbered(self.validation_set, f"{KEY}.validation"), EVAL_CHUNK, self.loader_settings,
                                 shuffle=False, drop_last=False,
                                 collate_fn=partial(collate_checked, key=f"{KEY}.validation", spec=self.spec))
            with one_line_errors():
                chunks = [tuple(b) for b in loader]
            self._validation = tuple(torch.cat(parts) for parts in zip(*chunks))
        return self._validation

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        sums = {name: 0.0 for name in self.metric_fns}
        data = self.validation_tensors()
        n = data[0].shape[0]
        for start in range(0, n, EVAL_CHUNK):
            *inputs, target = (t[start:start + EVAL_CHUNK].to(device) for t in data)
            output = self.forward(model, inputs, target)
            predictions = None
            for name, fn in self.metric_fns.items():
                if fn is None:  # the model's own loss: its mean over the chunk
                    sums[name] += float(own_loss(output, self.labels_keyword)) * target.shape[0]
                    continue
                if predictions is None:
                    predictions = output_part(output, self.output_field, self.own_loss)
                sums[name] += float(fn(predictions, target).sum())
        return {name: total / n for name, total in sums.items()}

    def fake_batch(self, batch_size: int) -> Batch:
        """The first training example repeated: the real shapes and dtypes (and valid class indices)."""
        return tuple(f.unsqueeze(0).expand(batch_size, *f.shape).clone() for f in self.first_example)
