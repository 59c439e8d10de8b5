"""Device choice, CPU threads, seeding, synchronisation and the one out-of-memory predicate -- written
once, used by every stage."""
from __future__ import annotations

import os
import random
import re

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


def usable_devices(device: torch.device) -> tuple[int, str]:
    """How many processes data parallelism may run on this machine for `device`, and what bounds it: one
    per CPU core this process may use (each process needs a core of its own), one per visible CUDA device
    (CUDA_VISIBLE_DEVICES counts), one on mps (torch.distributed has no backend there)."""
    if device.type == "cuda":
        return torch.cuda.device_count(), "runtime.device cuda: the CUDA devices visible to this process"
    if device.type == "mps":
        return 1, "runtime.device mps: torch.distributed has no backend there"
    return usable_cpus(), "runtime.device cpu: the CPU cores this process may use, one per data-parallel process"


def check_device_counts(counts: list[int], device: torch.device, key: str = "throughput.devices") -> None:
    """ConfigError naming `key`, the counts received and the limit when a count exceeds usable_devices."""
    limit, why = usable_devices(device)
    if counts and max(counts) > limit:
        fitting = [c for c in counts if c <= limit]
        raise ConfigError(f"{key}: received {counts}; allowed: device counts up to {limit} ({why})"
                          + (f", e.g. {fitting}" if fitting else ""))


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


# ---------------------------------------------------------------------------- out of memory

# (rule, regular expression searched case-insensitively in the error text, where it comes from).
# Messages come from the allocators of torch 2.x and the vendor runtimes; tests feed each one.
OOM_MESSAGES: tuple[tuple[str, str, str], ...] = (
    ("message:cuda", r"CUDA out of memory", "CUDA caching allocator (a RuntimeError before torch 2.5)"),
    ("message:cuda_runtime", r"CUDA error: out of memory", "CUDA runtime, e.g. a kernel launch or context creation"),
    ("message:cublas", r"CUBLAS_STATUS_ALLOC_FAILED", "cuBLAS could not allocate its workspace"),
    ("message:cudnn", r"CUDNN_STATUS_ALLOC_FAILED", "cuDNN could not allocate its workspace"),
    ("message:hip", r"HIP out of memory", "ROCm caching allocator"),
    ("message:hip_runtime", r"HIP error: out of memory", "ROCm runtime"),
    ("message:xpu", r"XPU out of memory", "Intel GPU allocator"),
    ("message:mps", r"MPS backend out of memory", "Apple MPS allocator"),
    ("message:cpu", r"DefaultCPUAllocator: can't allocate memory", "torch's CPU allocator (malloc failed)"),
)
_OOM_PATTERNS = tuple((rule, re.compile(pattern, re.IGNORECASE)) for rule, pattern, _ in OOM_MESSAGES)


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and its causes/contexts, each once (a wrapper may hide the OOM in its cause)."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def classify_message(text: str) -> str | None:
    """The rule of the first device OOM message found in `text`, or None."""
    for rule, pattern in _OOM_PATTERNS:
        if pattern.search(text):
            return rule
    return None


def classify_exception(exc: BaseException) -> str | None:
    """The rule that makes `exc` an out-of-memory error, or None if it is any other error."""
    chain = _exception_chain(exc)
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    for e in chain:
        if oom_type is not None and isinstance(e, oom_type):
            return "exception:torch.OutOfMemoryError"
        if isinstance(e, MemoryError):
            return "exception:MemoryError"
    return classify_message("\n".join(str(e) for e in chain))
