"""Reading the stages' output files forgivingly, and formatting their numbers as markdown, for stages/report/stage.py.

`Inputs` turns a missing, unreadable or partial file -- or one its job's manifest refuses (edited,
mixed, made for another model or with other settings than those in force) -- into a problem string
naming the file and the stage that writes it (collected in `Inputs.problems`) and returns None, so the report shows a
note instead of crashing. `fmt` formats a value by the unit its name carries (`*_bytes`, `*_s`,
`*_fraction`, ...), so the same number reads the same in every table.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import yaml

from stages.core.errors import InputError
from stages.core.log import human_bytes, sig
from stages.core.outputs import verify_path

MAX_ROWS = 60  # a table longer than this is cut, with a note pointing at the file
LONG_TEXT = 80  # characters: a longer text value is listed below its table, not in a cell


class Inputs:
    """The stages' output files under `root`; every problem is remembered once, with its file."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.problems: list[str] = []
        self._notes: dict[str, str] = {}

    def exists(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def _problem(self, rel: str, what: str, stage: str) -> None:
        message = f"`{rel}` {what} (written by stage `{stage}`: run `dvc repro {stage}`)"
        if rel not in self._notes:
            self._notes[rel] = message
            self.problems.append(message)

    def notes_for(self, rel: str) -> str:
        return f"> **Missing input:** {self._notes.get(rel, f'`{rel}` could not be read')}."

    def missing_note(self, rel: str, stage: str) -> str:
        self._problem(rel, "is missing", stage)
        return self.notes_for(rel)

    def _read(self, rel: str, stage: str, parse) -> Any:
        path = self.root / rel
        if not path.is_file():
            self._problem(rel, "is missing", stage)
            return None
        try:  # what its job wrote, as its manifest lists it: a hand edit, a file from another run, or one made
            verify_path(self.root, rel)  # with other settings is not shown
        except InputError as e:  # the file itself, or the manifest it is checked against
            self._problem(rel, e.problem if e.path == str(path) else f"cannot be checked: {e.path} {e.problem}", stage)
            return None
        try:
            return parse(path)
        except Exception as e:  # any parse error: the report names the file instead of crashing
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            self._problem(rel, f"could not be read ({type(e).__name__}: {first_line})", stage)
            return None

    def json(self, rel: str, stage: str) -> dict | None:
        data = self._read(rel, stage, lambda p: json.loads(p.read_text()))
        if data is not None and not isinstance(data, dict):
            self._problem(rel, f"holds a {type(data).__name__}, not an object of named metrics", stage)
            return None
        return data

    def yaml(self, rel: str, stage: str) -> Any:
        return self._read(rel, stage, lambda p: yaml.safe_load(p.read_text()))

    def text(self, rel: str, stage: str) -> str | None:
        return self._read(rel, stage, lambda p: p.read_text())

    def csv(self, rel: str, stage: str, allow_empty: bool = False) -> pd.DataFrame | None:
        """The CSV, or None (a problem noted) if it is missing, unreadable, or -- unless `allow_empty`, for a
        table that legitimately has no rows -- empty."""
        frame = self._read(rel, stage, pd.read_csv)
        if frame is not None and frame.empty and not allow_empty:
            self._problem(rel, "has no rows", stage)
            return None
        return frame

    def partial(self, rel: str, missing: list[str]) -> str:
        message = f"`{rel}` lacks column(s) {', '.join(missing)}"
        if message not in self.problems:
            self.problems.append(message)
        return f"> **Partial input:** {message}; the table shows what the file has."


# ---------------------------------------------------------------------------- formatting

def _number(v: float) -> str:
    """Counts exactly (batch sizes, steps, parameters: 15,001,709); measured values to 3 significant figures
    for reading (52,400 examples/s; a learning rate 0.01, not 0.010000000000000004) -- the files keep them whole."""
    if isinstance(v, int) or (float(v).is_integer() and abs(v) < 1e4):
        return f"{int(v):,}" if abs(v) >= 1e4 else str(int(v))
    return sig(v)


def fmt(value: Any, key: str | None = None) -> str:
    """A value for a person: unit from the key's name (`*_bytes`, `*_s`, `*_fraction`, ...), n/a for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()  # numpy scalars from pandas
        if isinstance(value, bool):
            return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) + "}"
    if not isinstance(value, (int, float)):
        return str(value).replace("|", "\\|").replace("\n", " ")
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    value = value + 0  # -0.0 -> 0.0: "-0 B" reads like a sign error
    name = (key or "").lower()
    if name.endswith("_bytes"):  # whole bytes: a fit's -0.3 B is 0 B, not "-0 B"
        return f"{human_bytes(round(value) + 0)}"
    if name.endswith("_fraction") or name in ("utilisation", "utilization"):
        return f"{100 * value:.1f}%"
    if name.endswith("_per_s"):  # a rate (examples/s, FLOP/s), not a duration
        return _number(value)
    if name.endswith(("_s", "_seconds")) or name in ("seconds",):
        if 0 < abs(value) < 0.1:
            return f"{1000 * value:.3g} ms"
        return f"{_number(value)} s" + (f" ({value / 60:.1f} min)" if value >= 120 else "")
    return _number(value)


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def key_value_table(rows: list[tuple[str, Any]], rel: str, inputs: Inputs) -> list[str]:
    missing = [k for k, v in rows if v is None]
    lines = [_row(["setting", "value"]), _row(["---", "---:"])]
    lines += [_row([k, fmt(v, k)]) for k, v in rows if v is not None]
    if missing:
        lines += ["", inputs.partial(rel, missing)]
    return lines


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def metrics_table(metrics: dict | None, rel: str, inputs: Inputs) -> list[str]:
    """Every value in a metrics.json, in the file's order; long texts (methods, diagnoses) below the table."""
    if metrics is None:
        return [inputs.notes_for(rel)]
    rows, notes = [], []
    for key, value in _flatten(metrics):
        text = fmt(value, key.rsplit(".", 1)[-1])
        if isinstance(value, str) and len(text) > LONG_TEXT:
            notes.append(f"- `{key}`: {text}")
        else:
            rows.append(_row([f"`{key}`", text]))
    lines = [f"All values in `{rel}`:", "", _row(["metric", "value"]), _row(["---", "---:"])] + rows
    return lines + ([""] + notes if notes else [])


def table(frame: pd.DataFrame | None, columns: list[str] | None, rel: str, inputs: Inputs) -> list[str]:
    """A CSV as a markdown table: `columns` (all if None) in that order; missing ones named in a note."""
    if frame is None:
        return [inputs.notes_for(rel)]
    wanted = list(frame.columns) if columns is None else columns
    shown = [c for c in wanted if c in frame.columns]
    numeric = {c for c in shown if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])}
    lines = [_row(shown), _row(["---:" if c in numeric else "---" for c in shown])]
    for _, record in frame.head(MAX_ROWS).iterrows():  # an empty text cell (no reason) stays empty, not "n/a"
        lines.append(_row([fmt(record[c], c) if c in numeric or not pd.isna(record[c]) else "" for c in shown]))
    if len(frame) > MAX_ROWS:
        lines += ["", f"({len(frame) - MAX_ROWS} more rows in `{rel}`.)"]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        lines += ["", inputs.partial(rel, missing)]
    return lines
