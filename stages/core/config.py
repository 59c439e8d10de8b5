"""params.yaml: the one user-facing configuration, validated as a whole before any work.

Every section is a frozen dataclass below; its defaults (with their meaning and unit) live here
and nowhere else. `load_params()` reads params.yaml, rejects unknown sections/keys, wrong types
and out-of-range values with one message naming the key, the value received and what is allowed,
Checks that need the machine (source files, the workload, the device) run in
`stages.core.context.setup`, which builds the workload once.

The file is read by kickoff's one YAML reader (stages/core/yamlfile.py: YAML 1.2, as DVC reads it;
a key given twice refused), for DVC and Snakemake alike: `1e-3` is a number, `yes` a word.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from stages.core.errors import ConfigError, yaml_error
from stages.core.profile import load_yaml

PARAMS_FILE = "params.yaml"


def setting(default: Any, help: str, *, min: float | None = None, max: float | None = None,
            min_exclusive: bool = False, max_exclusive: bool = False,
            check: Callable[[Any], str | None] | None = None, finite: bool = True,
            deprecated: str | None = None) -> Any:
    """A dataclass field carrying its meaning (`help`) and its allowed range. Numbers must be finite
    (YAML's .nan/.inf would pass every range check and fail later) unless `finite=False`. A
    `deprecated` setting (why) is still accepted, with one line saying so, and left out of the
    generated params.yaml and settings reference."""
    meta = {"help": help, "min": min, "max": max, "min_exclusive": min_exclusive,
            "max_exclusive": max_exclusive, "check": check, "finite": finite, "deprecated": deprecated}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def allowed_range(meta: dict) -> str | None:
    """'[0.0, 1.0)' for a setting's min/max metadata (the notation of the error messages), None if unbounded."""
    lo, hi = meta.get("min"), meta.get("max")
    if lo is None and hi is None:
        return None
    left = "(" if meta.get("min_exclusive") else "["
    right = ")" if meta.get("max_exclusive") else "]"
    return f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"


# ---------------------------------------------------------------------------- value checkers

_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """'6GiB' -> 6442450944. Raises ValueError on anything else."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]+)\s*", str(text))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(text)
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def _check_budget(value: str) -> str | None:
    """'auto' or a positive size such as '6GiB', '512MiB', '2GB'"""
    if value == "auto":
        return None
    try:
        if parse_size(value) <= 0:
            return "a positive size"
    except ValueError:
        return "'auto' or a size such as '6GiB', '512MiB', '2GB'"
    return None


def _check_plan_for(value: dict | list | None) -> str | None:
    """null, a target {memory: SIZE, name: optional label} or a non-empty list of them"""
    if value is None:
        return None
    allowed = "null, a target such as {memory: 80GiB} (optional name: a label) or a non-empty list of them"
    items = value if isinstance(value, list) else [value]
    if not items:
        return allowed
    labels = []
    for i, target in enumerate(items):
        at = f"target {i + 1}" if isinstance(value, list) else "the target"
        if not isinstance(target, dict):
            return f"{allowed} ({at} is {target!r}, not a mapping)"
        unknown = [k for k in target if k not in ("memory", "name")]
        if unknown:
            return f"{allowed} ({at} has unknown key(s) {', '.join(map(str, unknown))}; allowed keys: memory, name)"
        if "memory" not in target:
            return f"{allowed} ({at} lacks 'memory')"
        try:
            if parse_size(target["memory"]) <= 0:
                raise ValueError
        except ValueError:
            return f"{allowed} ({at}: memory {target['memory']!r} is not a positive size such as '80GiB', '24GB')"
        name = target.get("name", target["memory"])
        if not isinstance(name, str) or not name.strip():
            return f"{allowed} ({at}: name {name!r} is not a non-empty string)"
        labels.append(name)
    if len(set(labels)) != len(labels):
        return f"{allowed} (two targets share the label {next(l for l in labels if labels.count(l) > 1)!r}; give each a distinct name)"
    return None


def _check_device(value: str) -> str | None:
    """auto, cpu, cuda, cuda:N or mps"""
    if re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", value):
        return None
    return "one of auto, cpu, cuda, cuda:N, mps"


def _check_pow2(value: int) -> str | None:
    """a power of two"""
    return None if value & (value - 1) == 0 else "a power of two (1, 2, 4, ...); list other sizes in probe.batch_sizes"


def _check_distinct_sizes(value: list | None) -> str | None:
    """null or a non-empty list of distinct positive integers"""
    if value is None:
        return None
    if not value or any(b < 1 for b in value) or len(set(value)) != len(value):
        return "a non-empty list of distinct positive integers"
    return None


def _check_sorted_unique(value: list) -> str | None:
    """a non-empty, increasing list of distinct positive integers"""
    if not value or any(b < 1 for b in value) or sorted(set(value)) != list(value):
        return "a non-empty, increasing list of distinct positive integers"
    return None


def _check_device_counts(value: list) -> str | None:
    """an increasing list of distinct positive integers that starts with 1"""
    if _check_sorted_unique(value) or value[0] != 1:
        return "an increasing list of distinct positive integers that starts with 1 (one device: the reference of the scaling efficiency)"
    return None


def _check_noise_pair(value: list | None) -> str | None:
    """null or [small, big] with 0 < small < big and big a multiple of small"""
    if value is None:
        return None
    if len(value) != 2 or not 0 < value[0] < value[1] or value[1] % value[0]:
        return "null or [small, big] with 0 < small < big and big a multiple of small"
    return None


def _check_candidates(value: list | None) -> str | None:
    """null, or a non-empty list of distinct mappings of workload keyword arguments"""
    if value is None:
        return None
    if not value:
        return "null (skip the family stage) or a non-empty list of mappings, e.g. [{hidden: [16]}, {hidden: [64]}]"
    for i, c in enumerate(value):
        if not c or not all(isinstance(k, str) for k in c):
            return f"a non-empty mapping of workload keyword arguments at every position; position {i} holds {c!r}"
    if len({repr(sorted(c.items())) for c in value}) != len(value):
        return "distinct candidates (two positions hold the same overrides)"
    return None


# ---------------------------------------------------------------------------- sections

@dataclass(frozen=True)
class WorkloadSettings:
    """Which model and data: a built-in workload or your own (docs/own-model.md)."""

    name: str = setting("digits_mlp", "built-in workload name, or 'package.module:factory' for your own")
    kwargs: dict = setting({}, "keyword arguments passed to the workload factory (model hyperparameters, target, ...)")
    sources: list[str] = setting([], "your workload's source files/folders, so DVC and Snakemake rerun when they change; after editing the list, run `python -m stages.pipeline`")


@dataclass(frozen=True)
class FamilySettings:
    """The model configuration to start from: the smallest (or fastest) candidate that reaches the target (docs/family.md)."""

    candidates: list[dict] | None = setting(None, "model configurations to compare, each a mapping of workload.kwargs overrides (e.g. [{hidden: [16]}, {hidden: [64, 64]}]); one job each; null = skip the stage and use workload.kwargs as given", check=_check_candidates)
    rule: Literal["smallest", "fastest"] = setting("smallest", "'smallest' = fewest parameters among the candidates that reach the target (the playbook's 'start simple'); 'fastest' = least time to the target")
    batch_size: int | None = setting(None, "the one batch size every candidate is compared at; null = 64, or the largest power of two at most a quarter of the training set if that is smaller; a candidate that runs out of memory at it is recorded and never chosen", min=1)
    max_steps: int = setting(1000, "a candidate's trial stops here if the target is not reached (censored; the candidate is then not chosen)", min=1)


@dataclass(frozen=True)
class OptimizerSettings:
    """One optimizer; only the learning rate is tuned (by scaling), the values here stay fixed."""

    name: Literal["sgd", "adam", "adamw"] = setting("sgd", "the optimizer; the values below stay fixed, only the learning rate is tuned")
    momentum: float = setting(0.9, "SGD momentum (fixed)", min=0.0, max=1.0, max_exclusive=True)
    nesterov: bool = setting(False, "SGD Nesterov momentum (fixed)")
    beta1: float = setting(0.9, "Adam/AdamW beta1 (fixed)", min=0.0, max=1.0, max_exclusive=True)
    beta2: float = setting(0.999, "Adam/AdamW beta2 (fixed)", min=0.0, max=1.0, max_exclusive=True)
    eps: float = setting(1.0e-8, "Adam/AdamW epsilon (fixed)", min=0.0, min_exclusive=True)
    weight_decay: float = setting(0.0, "weight decay (fixed); AdamW decouples it", min=0.0)


# The learning-rate range the search uses where scaling.lr_min / lr_max are null: the rates each optimizer
# usually trains well at (SGD's counted before momentum's 1 / (1 - momentum) amplification).
LR_RANGES: dict[str, tuple[float, float]] = {"sgd": (1.0e-2, 2.0), "adam": (1.0e-4, 3.0e-2), "adamw": (1.0e-4, 3.0e-2)}

# The settings each optimizer reads; it ignores the others. The pipeline tracks only these per stage
# (stages/pipeline/declaration.py), so an Adam value does not mark an SGD study stale.
OPTIMIZER_KEYS: dict[str, tuple[str, ...]] = {
    "sgd": ("name", "momentum", "nesterov", "weight_decay"),
    "adam": ("name", "beta1", "beta2", "eps", "weight_decay"),
    "adamw": ("name", "beta1", "beta2", "eps", "weight_decay"),
}


@dataclass(frozen=True)
class RuntimeSettings:
    """Where every stage runs and how: device, seed, CPU threads."""

    device: str = setting("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps", check=_check_device)
    seed: int = setting(0, "seed for model init and data order; same seed, same loss sequence on CPU", min=0)
    threads: int = setting(1, "CPU threads torch may use (recorded with every measurement); raise it for models large enough to split across cores", min=1)


@dataclass(frozen=True)
class ProbeSettings:
    """Which batch sizes fit in memory (docs/probe.md)."""

    min_batch_size: int = setting(1, "smallest power-of-two candidate", min=1, check=_check_pow2)
    max_batch_size: int = setting(4096, "largest power-of-two candidate (sizes above the training-set size are capped, never run)", min=1, check=_check_pow2)
    batch_sizes: list[int] | None = setting(None, "explicit candidate list instead of powers of two (optional; tried in increasing order)", check=_check_distinct_sizes)
    steps: int = setting(3, "full training steps per trial (forward, backward, optimizer step), then one evaluation forward", min=1)
    memory_budget: str = setting("auto", "'auto' (device capacity; CPU: physical RAM or the cgroup limit) or a size such as '6GiB'", check=_check_budget)
    safety_margin: float = setting(0.1, "fraction of the budget kept free: a size fits if its peak is at most budget x (1 - margin)", min=0.0, max=1.0, max_exclusive=True)
    bisect: bool = setting(False, "bisect between the last fitting and the first failing size (down to a gap of 1)")
    plan_for: dict | list[dict] | None = setting(None, "memory plan for devices you do not have: a target such as {memory: 80GiB, name: A100} or a list of them; peak memory per batch size is estimated under fake tensors and the largest size predicted to fit each target (with safety_margin) is reported; null = no plan, no extra time", check=_check_plan_for)
    trial_timeout_s: int = setting(600, "a trial still running after this many seconds is stopped and recorded as killed (swapping, a hung model)", min=1)


@dataclass(frozen=True)
class ThroughputSettings:
    """Examples per second at every feasible batch size (docs/throughput.md)."""

    max_batch_size: int | None = setting(None, "only measure feasible sizes up to this (optional)", min=1)
    warmup_steps: int = setting(5, "uncounted steps per size before timing (allocator growth, autotuning, caches)", min=0)
    window_seconds: float = setting(0.05, "target length of one timed window, seconds; steps per window are calibrated to it", min=0.0, min_exclusive=True)
    min_window_steps: int = setting(1, "fewest training steps in one timed window", min=1)
    min_windows: int = setting(6, "timed windows before the stop rule applies (6 is the fewest that give a 95% interval)", min=2)
    confidence: float = setting(0.95, "confidence level of every interval (examples/s, doubling ratio, input-bound test)", min=0.5, max=1.0, max_exclusive=True)
    relative_precision: float = setting(0.02, "stop when the interval half-width / median of examples/s is below this", min=0.0, min_exclusive=True)
    max_seconds_per_size: float = setting(1.0, "time cap on the timed windows of one size (per mode: real pipeline, on-device batch), seconds", min=0.0, min_exclusive=True)
    split_steps: int = setting(30, "extra steps timed phase by phase (data wait, copy, compute) for the time split", min=1)
    doubling_threshold: float = setting(1.1, "a doubling is 'useful' if throughput clearly grows by more than this factor (interval's lower end)", min=1.0)
    scaling_ratio: float = setting(1.8, "a doubling 'scales' if the lower end of its throughput-ratio interval reaches this (2 = perfect)", min=1.0, max=2.0)
    input_bound_ratio: float = setting(1.25, "input-bound if on-device examples/s clearly exceed the real pipeline's by this factor", min=1.0)
    peak_seconds: float = setting(0.5, "time spent measuring the device's peak matmul FLOP/s", min=0.0, min_exclusive=True)
    max_workers: int | None = setting(None, "DataLoader workers measured at the largest useful batch size: 0, 1, 2, 4, ... up to this (null = the CPU cores this process may use; 0 = do not measure); workloads without a DataLoader skip it", min=0)
    devices: list[int] = setting([1], "device counts to time data-parallel training on (DistributedDataParallel at the largest useful per-device batch; gloo on CPU, nccl on CUDA; one process per device, each with runtime.threads threads); [1] = one device only, no data-parallel timing", check=_check_device_counts)
    device_timeout_s: float = setting(300.0, "a device count's processes still running after this many seconds are stopped and recorded as timeout; also the limit on process-group set-up and on each collective", min=0.0, min_exclusive=True)


@dataclass(frozen=True)
class ScalingSettings:
    """Steps to the target per batch size, the learning rate retuned at each (docs/scaling.md)."""

    batch_sizes: list[int] = setting([4, 8, 16, 32, 64, 128, 256, 512, 1024], "batch sizes the study fans out over (one job each); sizes ruled out by probe/throughput or above the training-set size are recorded as skipped", check=_check_sorted_unique)
    lr_min: float | None = setting(None, "smallest learning rate searched; null = the optimizer's usual range (SGD 1e-2, Adam/AdamW 1e-4: LR_RANGES here); the report says which", min=0.0, min_exclusive=True)
    lr_max: float | None = setting(None, "largest learning rate searched; null = the optimizer's usual range (SGD 2.0, Adam/AdamW 3e-2)", min=0.0, min_exclusive=True)
    lr_points: int = setting(6, "coarse-grid learning rates per batch size (all are tried; early stopping makes most cheap); the refinement then resolves the best", min=1)
    lr_unimodal: bool = setting(True, "no longer read", deprecated="the coarse search always races every grid rate and prunes the ones clearly behind (scaling.prune_margin)")
    lr_refine_ratio: float = setting(1.3, "refine until both tried neighbours of the best rate lie within this factor of it (or steps no longer tell them apart); also the narrowest bracket a rerun starts from around the previous study's rate", min=1.0, min_exclusive=True)
    lr_refine_trials: int = setting(4, "most refinement trials per batch size (bisection in log space around the best rate; 0 = coarse grid only)", min=0)
    fit_refine_trials: int = setting(2, "most refinement trials at a size wave 3 refines only for B_crit's fit (it cannot win, so it gets no extra seeds): its rate stays as coarse as this leaves it, and the fit's interval carries that resolution; raise it for a tighter B_crit", min=0)
    lr_widen_factor: float = setting(4.0, "a best rate at the edge of [lr_min, lr_max] widens the range that way, at most to [lr_min / this, lr_max x this]; beyond it the size is marked boundary", min=1.0)
    plateau_tolerance: float = setting(0.01, "stop a search trial whose best metric gained less than this fraction of its distance to the target over each of two doublings of steps in a row (from step 64): a noise floor; seed reruns never stop this way; 0 = never", min=0.0, max=1.0)
    lr_grid: Literal["log", "sobol"] = setting("log", "log-spaced grid or scrambled Sobol points in log space")
    lr_start: Literal["centre", "neighbour"] = setting("neighbour", "first rate a size's coarse search centres on: 'neighbour' = the rate its searched neighbours point to (wave 2 of the scaling study, from wave 1: interpolated in log-log between the two around it), with a first rung sized to their steps; 'centre' = the whole grid, the pilot at the first rung. Only where the search starts; the best rate and steps do not depend on it, as long as steps to target have one minimum in the rate")
    max_steps: int = setting(1000, "a trial stops here if the target is not reached (censored)", min=1)
    eval_resolution: float = setting(0.05, "relative resolution of steps to target (geometric evaluation schedule)", min=0.0, max=1.0, min_exclusive=True)
    early_stopping: bool = setting(True, "stop a trial once it cannot beat the best steps to target at its batch size (same best result, less compute)")
    give_up_margin: float = setting(2.0, "no longer read", min=1.0, deprecated="the first trials are no longer bounded from the neighbouring sizes' steps; the coarse search's rungs (scaling.pilot_steps, scaling.prune_margin) stop the trials that fall behind")
    pilot_steps: int | None = setting(None, "the coarse search's first rung (the pilot): every candidate rate trains this many steps before any is compared, each later rung twice as long; null = the expected steps / 4 where a prior gives them (the neighbouring sizes, the previous study), else max_steps / 64 (at least 8)", min=1)
    prune_margin: float = setting(0.5, "a trial is pruned at a rung when its distance to the target is more than (1 + this) x the leader's at the same step (the seed noise an early learning curve carries), and within a rung, at every lockstep, with this margin doubled; pruned trials are resumed, not restarted, if every trial ahead fails; larger = prune later", min=0.0)
    contender_factor: float = setting(1.5, "with scaling.adaptive, a size is refined and rerun with seeds only if its coarse time or examples to target is within this factor of the best size's (it can still win), or B_crit's fit needs it; the others keep their coarse answer, with the wider interval that leaves", min=1.0)
    budget_seconds: float | None = setting(None, "the most training the study may spend, in seconds of one device: the coarse waves share up to 60% of it (each size by its estimated cost; `python -m stages.scaling plan` says before the study whether it fits, and a budget below the pilot's first rung at every size is refused), wave 3 gets what is left; what it leaves unresolved -- a coarse search cut short, refinement or seeds skipped -- is reported, never dropped; null = no limit", min=0.0, min_exclusive=True)
    adaptive: bool = setting(True, "spend the study's trials where they can change the decision: wave 2 predicts the sizes whose measured neighbours confirm perfect scaling around them (never trained nor chosen: a smaller batch there trains no faster and no cheaper), and wave 3 refines and reruns with seeds only the sizes that can still win (scaling.contender_factor) or that B_crit's fit needs; false = every size in the first wave, every size refined. Either way the waves' jobs are independent: a cluster runs each wave at once")
    adaptive_ratio: float = setting(1.8, "a halving of the batch size is confirmed in perfect scaling when the smaller size's steps to target (median over seeds) are at least this x the larger size's (2 = exactly perfect; over a gap of k halvings, this to the power k)", min=1.0, max=2.0)
    seeds: int = setting(2, "extra seeds the winning learning rate is rerun with (spread of steps to target; the pick is by the median)", min=0)
    hold_factor: float = setting(1.25, "a trial that reached the target at step s trains on to s x this before its rate ranks (a crossing that falls back does not count: a rate at the edge of stability crosses early and falls back); the rates select may choose are then held through their step budget (steps to target x select.step_budget_margin, over seeds), so select can check that every seed stays at the target", min=1.0)
    rerun_top: int = setting(2, "rates in contention per size that get the first extra seed; successive halving keeps at most half (those whose steps overlap the leader's) for each further seed", min=1)
    bootstrap: int = setting(200, "bootstrap resamples for the B_crit confidence interval", min=10)
    noise_scale_batch_sizes: list[int] | None = setting(None, "[small, big] batch sizes for the gradient noise scale (big a multiple of small); null = smallest studied size and 16x it", check=_check_noise_pair)


@dataclass(frozen=True)
class SelectSettings:
    """The initial configuration: batch size, learning rate, step budget (docs/select.md)."""

    objective: Literal["time", "resource"] = setting("time", "minimise training time or resource use (device-hours x cost)")
    max_devices: int = setting(1, "devices data parallelism may use for batches above the per-device maximum", min=1)
    scaling_efficiency: float = setting(0.9, "fraction of per-device throughput kept on each device when data-parallel", min=0.0, max=1.0, min_exclusive=True)
    device_cost_per_hour: float = setting(1.0, "cost of one device for one hour (any currency)", min=0.0)
    step_budget_margin: float = setting(1.2, "step budget = steps to target x this, rounded up to two significant digits", min=1.0)


@dataclass(frozen=True)
class BaselineSettings:
    """One training run of the selected configuration (docs/baseline.md)."""

    eval_every: int | None = setting(None, "evaluate every N steps (default: the scaling study's geometric schedule, scaling.eval_resolution, so steps to target are counted at the steps the study counted them)", min=1)


@dataclass(frozen=True)
class DataSettings:
    """The torch DataLoader of a workload that has one (the `dataset` workload, docs/dataset.md); others ignore it."""

    num_workers: int = setting(0, "worker processes loading batches (0 = in the training process); throughput measures which count is fast enough and select writes it into initial_config.yaml", min=0)
    pin_memory: bool = setting(False, "page-locked batches, for faster asynchronous copies to a CUDA device (no effect without CUDA)")
    persistent_workers: bool = setting(False, "keep the workers alive from one epoch to the next (only with num_workers > 0)")
    prefetch_factor: int | None = setting(None, "batches each worker loads ahead (only with num_workers > 0); null = torch's default, 2", min=1)


@dataclass(frozen=True)
class Params:
    workload: WorkloadSettings
    family: FamilySettings
    optimizer: OptimizerSettings
    runtime: RuntimeSettings
    probe: ProbeSettings
    throughput: ThroughputSettings
    scaling: ScalingSettings
    select: SelectSettings
    baseline: BaselineSettings
    data: DataSettings

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = typing.get_type_hints(Params)  # section name -> its dataclass


# ---------------------------------------------------------------------------- validation

_warned: set[str] = set()


def _deprecation_notes(raw: dict) -> None:
    """One line on stderr per deprecated key the params set (once per process)."""
    import sys

    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            why, key = f.metadata.get("deprecated"), f"{section}.{f.name}"
            if why and isinstance(raw.get(section), dict) and f.name in raw[section] and key not in _warned:
                _warned.add(key)
                print(f"[params] {key} is deprecated and no longer read ({why}); remove it from params.yaml",
                      file=sys.stderr)

def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


_NUMBER_LIKE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n"}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string", dict: "a mapping"}.get(tp, str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against annotation `tp`; return it (ints widened to float where a float is expected)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return _coerce(key, value, arm)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}: received {_describe(value)}; allowed: {_type_name(tp)}"
                          + _number_hint(value, typing.get_args(tp)))
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{key}: received {_describe(value)}; allowed: {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: received {_describe(value)}; allowed: {_type_name(tp)}")
        (item,) = typing.get_args(tp)
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: received {_describe(value)}; allowed: null")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if isinstance(value, dict):
            return value
    raise ConfigError(f"{key}: received {_describe(value)}; allowed: {_type_name(tp)}{_number_hint(value, (tp,))}")


def _number_hint(value: Any, types_allowed: tuple) -> str:
    """Why a value written as text is not the number or boolean allowed."""
    if isinstance(value, str) and any(t in (int, float) for t in types_allowed) and _NUMBER_LIKE.fullmatch(value.strip()):
        return " -- quoted, so it is text; write it without quotes"
    if isinstance(value, str) and bool in types_allowed and value.lower() in _YAML11_BOOLS:
        return (f" -- YAML 1.2, which kickoff and DVC read, takes {value!r} for a word (YAML 1.1 took it for a "
                f"boolean); write true or false")
    return ""


def _check_range(key: str, value: Any, meta: dict) -> None:
    if value is None:
        return
    lo, hi = meta.get("min"), meta.get("max")
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if meta.get("finite", True) and not math.isfinite(v):
            raise ConfigError(f"{key}: received {value!r}; allowed: a finite number ({meta['help']})")
        bad_lo = lo is not None and (v <= lo if meta.get("min_exclusive") else v < lo)
        bad_hi = hi is not None and (v >= hi if meta.get("max_exclusive") else v > hi)
        if bad_lo or bad_hi:
            raise ConfigError(f"{key}: received {value!r}; allowed: a value in {allowed_range(meta)} ({meta['help']})")
    check = meta.get("check")
    if check is not None:
        allowed = check(value)
        if allowed:
            raise ConfigError(f"{key}: received {value!r}; allowed: {allowed}")


def _build_section(name: str, cls: type, raw: Any):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: received {_describe(raw)}; allowed: a mapping with keys {', '.join(f.name for f in dataclasses.fields(cls))}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{name}.{key}: unknown key; allowed keys in '{name}': {', '.join(fields)}")
    values = {}
    for key, f in fields.items():
        if key not in raw:
            continue
        full = f"{name}.{key}"
        value = _coerce(full, raw[key], hints[key])
        _check_range(full, value, f.metadata)
        values[key] = value
    return cls(**values)


def validate(raw: Any, source: str = PARAMS_FILE) -> Params:
    """Turn the parsed YAML into Params, or raise ConfigError prefixed with `source`."""
    try:
        if not isinstance(raw, dict):
            raise ConfigError(f"top level: received {_describe(raw)}; allowed: a mapping of sections {', '.join(SECTIONS)}")
        for name in raw:
            if name not in SECTIONS:
                raise ConfigError(f"{name}: unknown section; allowed sections: {', '.join(SECTIONS)}")
        params = Params(**{name: _build_section(name, cls, raw.get(name)) for name, cls in SECTIONS.items()})
        _check_cross_field(params)
        _deprecation_notes(raw)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return params


def _check_cross_field(p: Params) -> None:
    if p.probe.min_batch_size > p.probe.max_batch_size:
        raise ConfigError(f"probe.min_batch_size: received {p.probe.min_batch_size}; allowed: at most probe.max_batch_size ({p.probe.max_batch_size})")
    if p.optimizer.nesterov and p.optimizer.momentum == 0:
        raise ConfigError("optimizer.nesterov: received true with optimizer.momentum 0; allowed: nesterov true only with momentum > 0")
    usual = LR_RANGES.get(p.optimizer.name, LR_RANGES["sgd"])
    low = p.scaling.lr_min if p.scaling.lr_min is not None else usual[0]
    high = p.scaling.lr_max if p.scaling.lr_max is not None else usual[1]
    if low >= high:
        which = ("scaling.lr_max" if p.scaling.lr_max is not None
                 else f"scaling.lr_max, null: the usual top for {p.optimizer.name}")
        if p.scaling.lr_min is None:
            raise ConfigError(f"scaling.lr_max: received {p.scaling.lr_max}; allowed: more than scaling.lr_min "
                              f"(null: the usual bottom for {p.optimizer.name}, {low:g})")
        raise ConfigError(f"scaling.lr_min: received {p.scaling.lr_min}; allowed: less than {which} ({high:g})")


def read_file(path: str | Path = PARAMS_FILE) -> Any:
    """params.yaml alone, read by kickoff's one YAML reader; ConfigError for a missing, unreadable or
    non-YAML file, or a key given twice."""
    path = Path(path)
    if not path.is_file():
        what = "a directory" if path.is_dir() else "file not found"
        raise ConfigError(f"{path}: {what}; run from the project root (where params.yaml is) or pass its path")
    try:
        return load_yaml(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(yaml_error(path, e)) from None  # the file, line and column (stages/core/errors.py)
    except ConfigError as e:  # a key given twice
        raise ConfigError(f"{path}: {e}") from None


def read_raw(path: str | Path = PARAMS_FILE) -> dict:
    """params.yaml parsed, merged with the profiles dvc.yaml beside it records as active
    (stages/core/profile.py); ConfigError for a missing, unreadable or non-YAML file."""
    from stages.core.profile import apply_profiles, profiles_in

    path = Path(path)
    raw = read_file(path)
    profiles = profiles_in(path.parent)
    return apply_profiles(raw, profiles, path.parent) if profiles and isinstance(raw, dict) else raw


def params_source(path: str | Path = PARAMS_FILE) -> str:
    """How errors name the settings: 'params.yaml', or 'params.yaml + profiles/small/params.yaml'."""
    from stages.core.profile import profiles_in

    return " + ".join([str(path), *profiles_in(Path(path).parent)])


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """params.yaml with the active profiles applied, validated as a whole."""
    return validate(read_raw(path), params_source(path))


def default_value(key: str) -> Any:
    """The schema's default of 'section.key' ({} below workload.kwargs and other mappings)."""
    section, _, name = key.partition(".")
    name = name.split(".", 1)[0]
    fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
    f = fields[name]
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return value if "." not in key.partition(".")[2] else None
