"""What every stage that trains sets up first: validated params, threads, device, workload."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from stages.config import PARAMS_FILE, Params, load_params
from stages.device import resolve_device, configure_cpu
from stages.workload import Workload


@dataclass
class Context:
    params: Params
    device: torch.device
    threads: int        # torch CPU threads actually in use (recorded with every measurement)
    workload: Workload


def setup(params_file: str = PARAMS_FILE, params: Params | None = None) -> Context:
    """Validate everything (raising ConfigError before any work), then fix threads and pick the device."""
    params = params if params is not None else load_params(params_file)
    threads = configure_cpu(params.runtime.threads)
    device = resolve_device(params.runtime.device)
    return Context(params, device, threads, params.make_workload())
