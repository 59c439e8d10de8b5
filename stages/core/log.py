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


def sig(x: float | None, digits: int = 3) -> str:
    """A number for reading, to `digits` significant figures: 18,400; 0.01 (not 0.010000000000000004);
    1.47; 3.4e-05. Files keep full precision; prose and the report show this."""
    if x is None or x != x:
        return "n/a"
    if x in (float("inf"), float("-inf")):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    from math import floor, log10

    exponent = floor(log10(abs(x)))
    if exponent < -3 or exponent >= 12:
        return f"{x:.{digits - 1}e}".replace("e-0", "e-").replace("e+0", "e+")
    rounded = round(x, digits - 1 - exponent)
    if exponent >= digits - 1:
        return f"{int(rounded):,}"
    return f"{rounded:.{max(0, digits - 1 - exponent)}f}".rstrip("0").rstrip(".") if "." in f"{rounded}" else f"{rounded}"
