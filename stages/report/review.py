"""Turn `dvc params diff --json` / `dvc metrics diff --json` into a compact markdown table for a
pull-request comment (what .ci/pr-review posts):

    dvc metrics diff BASE HEAD --json | python -m stages.review metrics
    dvc params diff BASE HEAD --json | python -m stages.review params

`dvc ... --md` prints every value in full -- one long text metric (a diagnosis) stretches the table
past any screen -- and raw floats. This prints one row per value that differs, numbers in the
report's units (bytes, seconds, percent; stages.report_format.fmt), the change with its relative
size, and text cut to a readable length; or one line saying nothing differs.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from stages.pipeline import declaration as pipeline
from stages.report.format import fmt

MAX_TEXT = 80  # characters of a text value shown in a cell


def _cell(value: Any, key: str) -> str:
    if value is None:
        return "–"
    text = fmt(value, key)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _same_number(old: Any, new: Any) -> bool:
    """Equal up to float rounding (a refit that gives 0.637 both times differs in the 16th digit)."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new))
    return numbers and math.isclose(old, new, rel_tol=1e-9, abs_tol=1e-12)


def _change(old: Any, new: Any, key: str) -> str:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new))
    if not numbers:
        return ""
    diff = new - old
    text = fmt(diff, key)
    text = text if text.startswith("-") else "+" + text
    return f"{text} ({100 * diff / abs(old):+.1f}%)" if old else text


def markdown(diff: dict, what: str, old_name: str = "base", new_name: str = "this branch") -> str:
    """`diff`: {file: {key: {"old": .., "new": .., ...}}} as dvc prints it with --json."""
    order = [o.path for s in pipeline.STAGES for o in s.outputs]  # files in pipeline order, probe first
    rows = []
    for path, entries in sorted(diff.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)):
        for key, values in (entries or {}).items():
            old, new = values.get("old"), values.get("new")
            if old == new or _same_number(old, new):
                continue
            unit_key = key.rsplit(".", 1)[-1]
            rows.append(f"| {path} | {key} | {_cell(old, unit_key)} | {_cell(new, unit_key)} | "
                        f"{_change(old, new, unit_key)} |")
    if not rows:
        return f"No {what} differ."
    header = [f"| file | {what[:-1]} | {old_name} | {new_name} | change |", "|---|---|---:|---:|---:|"]
    return "\n".join(header + rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["params", "metrics"], help="which dvc diff is on stdin")
    ap.add_argument("--old-name", default="base", help="column header of the old revision")
    ap.add_argument("--new-name", default="this branch", help="column header of the new revision")
    args = ap.parse_args(argv)
    text = sys.stdin.read().strip()
    print(markdown(json.loads(text) if text else {}, args.what, args.old_name, args.new_name))


if __name__ == "__main__":
    main()
