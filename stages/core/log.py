"""Progress on stderr: one line per trial/size, prefixed with the stage name, flushed at once."""
from __future__ import annotations

import sys


def info(stage: str, message: str) -> None:
    print(f"[{stage}] {message}", file=sys.stderr, flush=True)


def human_bytes(n: float | None) -> str:
    if n is None or n != n:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
