"""Turn `dvc params diff --json` / `dvc metrics diff --json` into markdown for a pull-request
comment (what .ci/pr-review posts):

    dvc metrics diff BASE HEAD --all --json | python -m stages.report.review metrics
    dvc params diff BASE HEAD --json | python -m stages.report.review params

`metrics` leads with the recommendation -- batch size, learning rate, step budget, B_crit with both
intervals, the baseline's outcome, base vs branch -- each marked as a change beyond the
measurement's interval, within noise, or unchanged (`--all` gives the unchanged values too). Below
it, folded (`<details>`), the timings, which differ on every run, and every other metric that differs.
`dvc ... --md` prints every value in full and raw floats; the tables here show one row per value
that differs, in the report's units (stages/report/format.fmt), the change with its relative size,
text cut to a readable length, and no row for a difference too small to show.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from stages.core import outputs as out
from stages.pipeline import declaration as pipeline
from stages.report.format import fmt

MAX_TEXT = 80  # characters of a text value shown in a cell


NUMBER = (int, float)
# metrics that measure time or follow from it: they change from run to run on the same code
TIMING_WORDS = ("second", "time", "per_s", "flops", "utilis", "utiliz", "hours", "cost", "objective_value")


def _is_number(v: Any) -> bool:
    return isinstance(v, NUMBER) and not isinstance(v, bool)


def is_timing(key: str) -> bool:
    name = key.rsplit(".", 1)[-1].lower()
    return name.endswith("_s") or any(w in name for w in TIMING_WORDS)


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
    if key.endswith("_bytes"):  # whole bytes, as shown
        old, new = round(old), round(new)
    diff = new - old
    text = fmt(diff, key)
    text = text if text.startswith("-") else "+" + text
    return f"{text} ({100 * diff / abs(old):+.1f}%)" if old else text


def _rows(diff: dict, keep=lambda path, key: True) -> list[str]:
    """One table row per value that differs as shown (files in pipeline order, probe first)."""
    order = [o.path for s in pipeline.STAGES for o in s.outputs]
    rows = []
    for path, entries in sorted(diff.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)):
        for key, values in (entries or {}).items():
            old, new = values.get("old"), values.get("new")
            unit_key = key.rsplit(".", 1)[-1]
            if old == new or _same_number(old, new) or not keep(path, key):
                continue
            old_text, new_text = _cell(old, unit_key), _cell(new, unit_key)
            if old_text == new_text:  # differs below what the table shows: not a change to read
                continue
            rows.append(f"| {path} | {key} | {old_text} | {new_text} | {_change(old, new, unit_key)} |")
    return rows


def markdown(diff: dict, what: str, old_name: str = "base", new_name: str = "this branch",
             keep=lambda path, key: True) -> str:
    """`diff`: {file: {key: {"old": .., "new": .., ...}}} as dvc prints it with --json."""
    rows = _rows(diff, keep)
    if not rows:
        return f"No {what} differ."
    header = [f"| file | {what[:-1]} | {old_name} | {new_name} | change |", "|---|---|---:|---:|---:|"]
    return "\n".join(header + rows)


# ---------------------------------------------------------------------------- the recommendation first

SELECT_METRICS, SCALING_METRICS, BASELINE_METRICS = (o.path for o in (out.SELECT_METRICS, out.SCALING_METRICS,
                                                                        out.BASELINE_METRICS))
BEYOND, NOISE, SAME, NO_INTERVAL = "**changed** (beyond the interval)", "within noise", "same", "changed (no interval recorded)"


def _overlap(a: tuple, b: tuple) -> bool | None:
    """Whether two (low, high) intervals overlap; None if either is unknown."""
    if not all(_is_number(x) for x in (*a, *b)):
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def _side(diff: dict, path: str, key: str, side: str) -> Any:
    return ((diff.get(path) or {}).get(key) or {}).get(side)


def tied_sizes(label: Any) -> list[int] | None:
    """The sizes in select's `tie` label ('128~256: chose 128 ...' -> [128, 256]; 'none' -> []). DVC drops
    list metrics from its diffs, so the review reads the label, not `tied_batch_sizes`."""
    if not isinstance(label, str):
        return None
    head = label.split(":", 1)[0].strip()
    return [] if head == "none" else [int(x) for x in head.split("~") if x.strip().isdigit()]


def _verdict(same: bool, overlap: bool | None) -> str:
    if same:
        return SAME
    return NO_INTERVAL if overlap is None else (NOISE if overlap else BEYOND)


def recommendation(diff: dict, old_name: str = "base", new_name: str = "this branch") -> str:
    """The recommendation base vs branch, each row marked beyond the interval / within noise / same.
    Batch size: within noise if either run's select found the other's size tied with its choice
    (tied_batch_sizes). Learning rate and step budget: within noise if the chosen rates' steps to
    target over seeds (steps_to_target_min..max) overlap. B_crit: if its two intervals overlap."""
    def get(path, key, side):
        return _side(diff, path, key, side)

    def pair(path, key):
        return get(path, key, "old"), get(path, key, "new")

    rows = []
    b_old, b_new = pair(SELECT_METRICS, "batch_size")
    tied = [tied_sizes(get(SELECT_METRICS, "tie", s)) for s in ("old", "new")]
    known = any(t is not None for t in tied) and None not in (b_old, b_new)  # a run that records its ties
    tie = (b_new in (tied[0] or []) or b_old in (tied[1] or [])) if known else None
    rows.append(("batch size", _cell(b_old, "batch_size"), _cell(b_new, "batch_size"),
                 _verdict(b_old == b_new, tie) + (" (tied in select)" if tie and b_old != b_new else "")))
    steps = [(get(SELECT_METRICS, "steps_to_target_min", s), get(SELECT_METRICS, "steps_to_target_max", s))
             for s in ("old", "new")]
    steps_overlap = _overlap(*steps)
    for label, key in (("learning rate", "learning_rate"), ("step budget", "train_steps")):
        old, new = pair(SELECT_METRICS, key)
        span = "" if steps_overlap is None else " (steps to target {} vs {})".format(
            *(f"{_cell(lo, 'steps')}-{_cell(hi, 'steps')}" for lo, hi in steps))
        rows.append((label, _cell(old, key), _cell(new, key),
                     _verdict(old == new or _same_number(old, new), steps_overlap) + ("" if old == new else span)))
    b_crit = pair(SCALING_METRICS, "critical_batch_size")
    ci = [(get(SCALING_METRICS, "ci_low", s), get(SCALING_METRICS, "ci_high", s)) for s in ("old", "new")]
    shown = [f"{_cell(v, 'b_crit')} ({_cell(lo, 'b_crit')}-{_cell(hi, 'b_crit')})" if v is not None else "–"
             for v, (lo, hi) in zip(b_crit, ci)]
    rows.append(("B_crit (95% interval)", shown[0], shown[1],
                 _verdict(shown[0] == shown[1], _overlap(*ci))))
    outcome = []
    for side in ("old", "new"):
        meets = get(BASELINE_METRICS, "final_meets_target", side)
        metric = get(BASELINE_METRICS, "target_metric", side)
        value = get(BASELINE_METRICS, metric, side) if isinstance(metric, str) else None
        if meets is None:
            outcome.append("–")
        else:
            outcome.append(("meets the target" if meets else "**misses** the target")
                           + (f" ({metric} {_cell(value, metric)})" if value is not None else ""))
    flipped = outcome[0].split(" (")[0] != outcome[1].split(" (")[0]
    rows.append(("baseline at the end of its budget", outcome[0], outcome[1],
                 SAME if outcome[0] == outcome[1] else "**changed**" if flipped else "changed (one run each: no interval)"))
    lines = [f"| recommendation | {old_name} | {new_name} | change |", "|---|---:|---:|---|"]
    rows = [(a, b, c, "not recorded" if b == c == "–" else d) for a, b, c, d in rows]
    return "\n".join(lines + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows])


def metrics_review(diff: dict, old_name: str = "base", new_name: str = "this branch") -> str:
    """The recommendation, then (folded) the timings and every other metric that differs."""
    timings = markdown(diff, "metrics", old_name, new_name, keep=lambda path, key: is_timing(key))
    rest = markdown(diff, "metrics", old_name, new_name, keep=lambda path, key: not is_timing(key))
    return "\n".join([
        recommendation(diff, old_name, new_name), "",
        "<details><summary>Timings (they differ from run to run on the same code)</summary>", "", timings, "",
        "</details>", "",
        "<details><summary>Every other metric that differs</summary>", "", rest, "", "</details>"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["params", "metrics"], help="which dvc diff is on stdin")
    ap.add_argument("--old-name", default="base", help="column header of the old revision")
    ap.add_argument("--new-name", default="this branch", help="column header of the new revision")
    args = ap.parse_args(argv)
    text = sys.stdin.read().strip()
    diff = json.loads(text) if text else {}
    if args.what == "metrics":
        print(metrics_review(diff, args.old_name, args.new_name))
    else:
        print(markdown(diff, args.what, args.old_name, args.new_name))


if __name__ == "__main__":
    main()
