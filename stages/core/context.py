"""What every stage that trains sets up first: validated params, threads, device, workload.

`setup()` is the one place the environment is checked (the workload's source files exist and
dvc.yaml tracks them, the workload builds, the device exists) -- and the workload is built here,
once per process, and handed to the stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from stages.core.config import PARAMS_FILE, Params, load_params
from stages.core.declared import declares
from stages.core.device import check_device_counts, configure_cpu, resolve_device
from stages.core.errors import ConfigError
from stages.core.model_choice import apply_family_choice
from stages.core.profile import load_yaml
from stages.workloads.base import Workload, make_workload


@dataclass
class Context:
    params: Params
    device: torch.device
    threads: int        # torch CPU threads actually in use (recorded with every measurement)
    workload: Workload


def check_sources(p: Params, root: Path | None = None) -> None:
    """Every `workload.sources` entry exists and dvc.yaml tracks it."""
    root = Path.cwd() if root is None else root
    for i, src in enumerate(p.workload.sources):
        if not (root / src).exists():
            raise ConfigError(f"workload.sources[{i}]: received {src!r}, which does not exist; allowed: paths (files or folders) relative to {root}")
    _check_dvc_yaml_tracks(p.workload.sources, root / "dvc.yaml")


def _check_dvc_yaml_tracks(sources: list[str], dvc_yaml: Path) -> None:
    """dvc.yaml lists workload.sources literally (DVC cannot interpolate a list of deps), so after
    editing them the declaration must be re-rendered -- otherwise DVC would silently not track them."""
    if not sources or not dvc_yaml.exists():
        return
    declared = load_yaml(dvc_yaml.read_text()) or {}
    deps = set()
    for body in (declared.get("stages") or {}).values():
        body = body.get("do", body)
        deps.update(d for d in body.get("deps") or [] if isinstance(d, str))
    missing = [s for s in sources if s not in deps]
    if missing:
        raise ConfigError(f"workload.sources: {missing} are not tracked by {dvc_yaml.name}; "
                          f"run `python -m stages.pipeline` to re-render it from params.yaml")


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
