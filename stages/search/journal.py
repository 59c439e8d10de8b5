"""The search's resume journal: each finished trial appended as one JSON line (flushed, fsync'd) to a
file named by a hash of everything that determines a trial. A rerun replays finished trials from it
instead of training again; the search's order and give-up points are deterministic, so an
interrupted job resumes exactly. A line cut short by a crash is skipped (that trial reruns); a whole
line holding a value of the wrong type (a hand edit) is refused, naming it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Literal

from stages.core.errors import KickoffError
from stages.search.result import TrialResult

JOURNAL_DIR = Path(".kickoff") / "journal" / "scaling"


def journal_key(identity: dict) -> str:
    """A short hash of everything that determines a trial (workload, optimizer, batch size, ...)."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _fits(value, hint) -> bool:
    """Does a JSON value have the type a TrialResult field declares (int, float, str, X | None, Literal,
    dict[str, float], list[dict])?"""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is Literal:
        return value in args
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is dict:
        return isinstance(value, dict) and all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    if origin is list:
        return isinstance(value, list) and (not args or all(_fits(v, args[0]) for v in value))
    return isinstance(value, origin or hint) if isinstance(origin or hint, type) else True


@functools.cache
def _result_fields() -> dict:
    return typing.get_type_hints(TrialResult)


def _journal_row_problem(row) -> str | None:
    """What is wrong with one journal row, as 'key: received ...; allowed: ...', or None."""
    if not isinstance(row, dict):
        return f"received {row!r}; allowed: a JSON object with learning_rate, seed, give_up_after, result"
    fields_of = _result_fields()
    expected = {"learning_rate": float, "seed": int, "give_up_after": int | None, "result": dict}
    for key, hint in expected.items():
        if key not in row or not _fits(row[key], hint):
            return f"{key}: received {row.get(key, 'nothing')!r}; allowed: {_hint_text(hint)}"
    request = row.get("request")
    if request is not None and not (isinstance(request, dict) and _fits(request.get("segment"), int)
                                    and _fits(request.get("until"), int | None)
                                    and _fits(request.get("hold"), int | None)):
        return f"request: received {request!r}; allowed: {{segment: an integer, until: an integer or null, hold: an integer or null}}"
    result = row["result"]
    required = {f.name for f in dataclass_fields(TrialResult)
                if f.default is MISSING and f.default_factory is MISSING}
    for key in sorted(required - set(result)):
        return f"result.{key}: received nothing; allowed: {_hint_text(fields_of[key])}"
    for key, value in result.items():
        if key not in fields_of:
            return f"result.{key}: received {value!r}; allowed: only the fields {', '.join(fields_of)}"
        if not _fits(value, fields_of[key]):
            return f"result.{key}: received {value!r}; allowed: {_hint_text(fields_of[key])}"
    return None


def _hint_text(hint) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


Request = tuple[int, "int | None", "int | None"]  # (segment: the trial's n-th advance, until, hold through step)
WHOLE: Request = (0, None, None)  # a trial run in one go


@dataclass
class Journal:
    """Append-only JSON lines, one per finished advance of a trial, keyed by (learning rate, seed,
    give_up_after, request): the request says which advance of the trial it was (a trial paused at the
    search's rungs advances several times: stages/search/trial.LiveTrial) -- a row without one is a
    trial run in one go."""
    path: Path
    entries: dict[tuple, dict] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> "Journal":
        """The finished advances in `path`. A line cut short by a crash is skipped (that advance reruns); a
        whole line holding a value of the wrong type (a hand edit) is a KickoffError naming it."""
        journal = cls(Path(path))
        if journal.path.exists():
            for number, line in enumerate(journal.path.read_text().splitlines(), start=1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash: that trial reruns
                problem = _journal_row_problem(row)
                if problem:
                    raise KickoffError(f"{journal.path}: line {number}: {problem}. The journal only caches finished "
                                       f"trials: delete that line (or the file) and rerun, and those trials run again")
                journal.entries[cls.key(row["learning_rate"], row["seed"], row["give_up_after"],
                                        _request(row.get("request")))] = row
        return journal

    @staticmethod
    def key(learning_rate: float, seed: int, give_up_after: int | None, request: Request = WHOLE) -> tuple:
        segment, until, hold = request
        return (repr(float(learning_rate)), int(seed), None if give_up_after is None else int(give_up_after),
                int(segment), None if until is None else int(until), None if hold is None else int(hold))

    def get(self, learning_rate: float, seed: int, give_up_after: int | None,
            request: Request = WHOLE) -> TrialResult | None:
        row = self.entries.get(self.key(learning_rate, seed, give_up_after, request))
        return None if row is None else TrialResult(**row["result"])

    def add(self, learning_rate: float, seed: int, give_up_after: int | None, result: TrialResult,
            request: Request = WHOLE) -> None:
        row = {"learning_rate": float(learning_rate), "seed": int(seed), "give_up_after": give_up_after,
               "result": asdict(result)}
        if request != WHOLE:
            row["request"] = {"segment": request[0], "until": request[1], "hold": request[2]}
        self.entries[self.key(learning_rate, seed, give_up_after, request)] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            try:
                f.seek(0, os.SEEK_END)
                if f.tell() > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":  # a line cut short by a crash: end it, so this one stays whole
                        f.write(b"\n")
                f.write((json.dumps(row) + "\n").encode())
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:  # a full disk: the one line (stages/core/cli.py) names the journal
                raise OSError(e.errno, e.strerror, str(self.path)) from e


def _request(raw) -> Request:
    if not isinstance(raw, dict):
        return WHOLE
    return (int(raw.get("segment") or 0), raw.get("until"), raw.get("hold"))
