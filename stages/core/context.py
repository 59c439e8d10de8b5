"""What every stage that trains sets up first: validated params, threads, device, workload.

`setup()` is the one place the environment is checked (the workload's source files exist, dvc.yaml
tracks them and they cover the project modules the settings name: stages/core/sources.py; the
workload builds, the device exists) -- and the workload is built here,
once per process, and handed to the stage.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from stages.core.config import PARAMS_FILE, Params, load_params
from stages.core.declared import declares
from stages.core.device import check_device_counts, configure_cpu, resolve_device
from stages.core.errors import ConfigError
from stages.core.model_choice import apply_family_choice
from stages.core.sources import check_sources  # noqa: F401  (its home is stages/core/sources.py; the Snakefile imports it here)
from stages.workloads.base import Workload, make_workload


@dataclass
class Context:
    params: Params
    device: torch.device
    threads: int        # torch CPU threads actually in use (recorded with every measurement)
    workload: Workload


def build_workload(p: Params) -> Workload:
    """The workload, drawing its batches with the `data:` settings where the stage declares them (the
    stages that read batches do; the probe's fake batches need no DataLoader)."""
    workload = make_workload(p.workload.name, p.workload.kwargs)
    return workload.with_loader_settings(p.data) if declares(p, "data") else workload


def check_target(workload: Workload, kwargs: dict) -> None:
    """ConfigError for a target no study can mean: beyond the metric's range (never met, whatever the model) or no
    better than chance (met by a model that guesses) -- refused here, before any trial, not by select after the
    whole study. `kwargs`: workload.kwargs, to name the key."""
    from stages.core.advice import metric_range
    from stages.workloads.base import better_than_chance

    metric, value, direction = workload.target_metric, workload.target_value, workload.target_direction
    key = "workload.kwargs.target" if "target" in kwargs else "the workload's target (workload.kwargs)"
    bounds = metric_range(metric) if metric == "accuracy" else None  # a fraction by definition; a loss of your own may be < 0
    if bounds and not bounds[0] <= value <= bounds[1]:
        raise ConfigError(f"{key}: received {value:g} for {metric}, which is never {'above' if value > bounds[1] else 'below'} "
                          f"{bounds[1] if value > bounds[1] else bounds[0]:g}; allowed: a value in [{bounds[0]:g}, {bounds[1]:g}]"
                          f"{' (a fraction, not a percentage)' if metric == 'accuracy' else ''}")
    if not better_than_chance(workload):
        better = "above" if direction == "above" else "below"
        raise ConfigError(f"{key}: received {metric} {value:g} (reached {better} it), but chance level is "
                          f"{workload.chance_score:g}, so a model that guesses meets it and the study would measure "
                          f"nothing; allowed: a target clearly {better} {workload.chance_score:g}")


def check_environment(params: Params, source: str = PARAMS_FILE) -> tuple[Workload, torch.device]:
    """The checks that need this machine, raising ConfigError: sources, the workload (built), the device,
    and -- where the params hold the throughput section -- its data-parallel device counts."""
    try:
        check_sources(params)
        workload, device = build_workload(params), resolve_device(params.runtime.device)
        check_target(workload, params.workload.kwargs)
        if declares(params, "throughput"):
            check_device_counts(params.throughput.devices, device)
        return workload, device
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def setup(params_file: str = PARAMS_FILE, params: Params | None = None, *, family_choice: bool = True) -> Context:
    """Validate everything (raising ConfigError before any work), then fix threads and pick the device.
    With `family_choice`, the workload is the model configuration the family stage chose
    (reports/family/model.yaml, checked against params) whenever family.candidates is set."""
    params = params if params is not None else load_params(params_file)
    if family_choice:
        params = apply_family_choice(params)
    workload, device = check_environment(params, params_file)
    threads = configure_cpu(params.runtime.threads)
    return Context(params, device, threads, workload)
