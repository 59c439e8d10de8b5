"""The trials of one search, as the search asks for them: `TrialPool.advance(lr, seed, until=...)`.

Each (learning rate, seed) is one trial -- a `LiveTrial` that the search advances rung by rung, pauses,
and may resume or hold later -- and every advance is one line of the resume journal
(stages/search/journal.py), keyed by what was asked: the trial's n-th advance, to which step, with which
give-up point and hold. A rerun asks the same questions in the same order (the search is deterministic
given the answers), so the journal answers them without training; only when the search asks beyond what
the journal holds does the trial need its live state, which comes from memory (this process trained
it) or from training again through the advances the journal replayed (the same seed trains the same
way: bit-identical on the CPU). A trial another job trained (the next wave holds a rate the coarse
search found) is `adopt`ed: rebuilt from that job's checkpoint (`save`), or trained again to where it
stopped.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from stages.core.types import Steps
from stages.search.journal import Journal, Request
from stages.search.trial import LiveTrial, TrialResult

# (learning rate, seed) -> a fresh LiveTrial of that rate and seed (the caller's workload, optimizer, size)
MakeTrial = Callable[[float, int], LiveTrial]


@dataclass
class Asked:
    """One advance as the search asked for it (what the journal keys it by)."""
    give_up_after: Steps | None
    request: Request
    contender: Callable[[Steps], bool] | None = None


@dataclass
class _Entry:
    asked: list[Asked] = field(default_factory=list)  # every advance asked of this trial, in order
    live: LiveTrial | None = None
    applied: int = 0  # how many of `asked` the live trial has been through
    last: TrialResult | None = None
    replayed: bool = True  # every answer so far came from the journal
    initial: Callable[[], LiveTrial] | None = None  # an adopted trial: where it stood before this pool's advances


class TrialPool:
    """The trials of one search (one batch size, or one family candidate), trained or replayed."""

    def __init__(self, make: MakeTrial, journal: Journal | None = None):
        self.make, self.journal = make, journal
        self.trials: dict[tuple[float, int], _Entry] = {}
        self.trained_steps = 0  # steps trained in this process (journal answers cost none)
        self.seconds = 0.0      # training seconds of every advance asked of this pool, the journal's answers included

    def advance(self, learning_rate: float, seed: int, *, until: Steps | None = None,
                give_up_after: Steps | None = None, hold: Steps | None = None,
                contender: Callable[[Steps], bool] | None = None) -> tuple[TrialResult, bool]:
        """The trial's result after training on to `until` (None: to its end) or its first stop rule,
        with `give_up_after` in force; `hold`: first hold the target through that step (a trial that
        stopped after its crossing). Returns (result, whether the journal answered)."""
        entry = self.trials.setdefault((learning_rate, seed), _Entry())
        asked = Asked(give_up_after, (len(entry.asked), until, hold), contender)
        entry.asked.append(asked)
        if self.journal is not None:
            cached = self.journal.get(learning_rate, seed, give_up_after, asked.request)
            if cached is not None:
                self._spent(entry, cached)
                entry.last = cached
                return cached, True
        trial = self._live(learning_rate, seed, entry)
        before = trial.step
        result = self._apply(trial, asked)
        self._spent(entry, result)
        entry.applied, entry.last, entry.replayed = len(entry.asked), result, False
        self.trained_steps += trial.step - before
        if self.journal is not None:
            self.journal.add(learning_rate, seed, give_up_after, result, asked.request)
        return result, False

    def _spent(self, entry: _Entry, result: TrialResult) -> None:
        self.seconds += max(0.0, result.seconds - (entry.last.seconds if entry.last is not None else 0.0))

    def adopt(self, learning_rate: float, seed: int, initial: Callable[[], LiveTrial],
              last: TrialResult | None = None) -> None:
        """A trial another job trained: `initial()` gives it as that job left it (see `save`); `last`, its
        result there (what it already cost)."""
        self.trials[(learning_rate, seed)] = _Entry(initial=initial, last=last)

    def save(self, learning_rate: float, seed: int, path: Path) -> bool:
        """Write the trial's state to `path` (atomically) for a later job to `adopt`; False if this process
        does not hold it (the journal answered every advance)."""
        entry = self.trials.get((learning_rate, seed))
        if entry is None or entry.live is None or entry.applied != len(entry.asked):
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(entry.live.state_dict(), f)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return True

    def last(self, learning_rate: float, seed: int) -> TrialResult | None:
        entry = self.trials.get((learning_rate, seed))
        return entry.last if entry else None

    def release(self, learning_rate: float, seed: int) -> None:
        """The search is done with this trial: free its model (its answers stay in the journal)."""
        entry = self.trials.get((learning_rate, seed))
        if entry is not None:
            entry.live, entry.applied = None, 0

    # ------------------------------------------------------------------------ live state

    @staticmethod
    def _apply(trial: LiveTrial, asked: Asked) -> TrialResult:
        _, until, hold = asked.request
        if hold is not None and trial.finished and trial.outcome == "reached":
            trial.hold_through(int(hold))
        return trial.advance(until, give_up_after=asked.give_up_after, contender=asked.contender)

    def _live(self, learning_rate: float, seed: int, entry: _Entry) -> LiveTrial:
        """The trial, brought to where the advances before the current one left it."""
        done = len(entry.asked) - 1
        if entry.live is None or entry.applied > done:
            entry.live = entry.initial() if entry.initial else self.make(learning_rate, seed)
            entry.applied = 0
        for asked in entry.asked[entry.applied:done]:  # advances the journal answered: trained again
            before = entry.live.step
            self._apply(entry.live, asked)
            self.trained_steps += entry.live.step - before
        entry.applied = done
        return entry.live
