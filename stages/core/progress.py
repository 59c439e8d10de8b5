"""Progress of a stage's long work on stderr, with an ETA: `[stage] what 3/10 (30%), 12 s so far, about 28 s left`.

One line per update, at most one every `every_s` seconds (the last one always), so a long loop
never stays silent and a short one does not flood the log. The ETA is the time so far per unit done
times the units left, unless the caller knows better (a time cap: pass `eta_s`).
"""
from __future__ import annotations

import time
from typing import Callable

from stages.core.log import info

EVERY_S = 5.0  # seconds between two progress lines of one loop


def duration(seconds: float) -> str:
    """'45 s', '3 min 20 s', '1 h 05 min': a duration for reading."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class Progress:
    """`update(done)` after each unit of `total`; prints when `every_s` passed since the last line, or at the end."""

    def __init__(self, stage: str, what: str, total: int, every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic, say: Callable[[str, str], None] = info):
        self.stage, self.what, self.total, self.every_s = stage, what, max(1, total), every_s
        self.clock, self.say = clock, say
        self.started = self.last = clock()

    def update(self, done: int, detail: str | Callable[[], str] = "", eta_s: float | None = None) -> None:
        """`detail` may be a function, called only when a line is printed: a caller inside a timed loop
        (the baseline's training steps) then pays one clock reading per update, no formatting."""
        now = self.clock()
        if done < self.total and now - self.last < self.every_s:
            return
        detail = detail() if callable(detail) else detail
        self.last = now
        elapsed = now - self.started
        if eta_s is None:
            eta_s = elapsed / done * (self.total - done) if done else None
        left = "done" if done >= self.total else ("time left unknown" if eta_s is None else f"about {duration(eta_s)} left")
        self.say(self.stage, f"{self.what} {done}/{self.total} ({100 * done / self.total:.0f}%), "
                             f"{duration(elapsed)} so far, {left}" + (f" -- {detail}" if detail else ""))

    def finish(self, done: int, detail: str = "") -> None:
        """The last line, whatever the time since the previous one: `done` units (the work may end early)."""
        elapsed = self.clock() - self.started
        self.say(self.stage, f"{self.what} {done}/{self.total}, finished in {duration(elapsed)}"
                             + (f" -- {detail}" if detail else ""))
