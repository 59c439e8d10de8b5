"""Device choice, CPU threads, seeding and synchronisation -- written once, used by every stage."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from stages.core.errors import ConfigError


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(spec: str) -> torch.device:
    """'auto' -> cuda, then mps, then cpu. An explicit device that is absent is an error, not a fallback."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"runtime.device: received {spec!r}, but this machine has no CUDA device "
                              f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None}); "
                              f"allowed here: 'auto' or 'cpu'")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"runtime.device: received {spec!r}; allowed: cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        return torch.device(spec)
    if spec == "mps":
        if not _mps_available():
            raise ConfigError("runtime.device: received 'mps', but MPS is not available on this machine; allowed here: 'auto' or 'cpu'")
        return torch.device("mps")
    raise ConfigError(f"runtime.device: received {spec!r}; allowed: auto, cpu, cuda, cuda:N, mps")


def configure_cpu(threads: int) -> int:
    """Fix torch's CPU thread count (intra-op) and flush denormal floats to zero; returns the thread
    count torch reports, for the record.

    Denormals (tiny values such as decaying momentum buffers) make CPU float math many times slower:
    a few of them slowed digits_mlp's steps by 5-7% and made the throughput stage under-report
    (bench/bench_throughput.py). Every stage runs with the same setting, so the steps scaling and
    baseline train are the steps throughput timed."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    return torch.get_num_threads()


def usable_cpus() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def seed_everything(seed: int) -> None:
    """Same seed, same initial weights and data order (bit-identical losses on CPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a host clock measures it. No-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def describe(device: torch.device) -> str:
    """A human-readable device name for reports ('cuda:0 (NVIDIA H100 80GB HBM3)', 'cpu (2 threads)')."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)
