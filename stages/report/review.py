"""Turn `dvc params diff --json` / `dvc metrics diff --json` into markdown for a pull-request
comment (what .ci/pr-review posts), and tell whether two revisions' committed results are comparable:

    { dvc metrics diff BASE HEAD --all --json; dvc metrics diff BASE HEAD --all --json --targets reports/*/diagnostics.json; } \
        | python -m stages.report.review metrics
    dvc params diff BASE HEAD --json | python -m stages.report.review params
    python -m stages.report.review same-profile BASE HEAD   # exit 1, with one line saying why, if not comparable

`metrics` leads with the recommendation -- the model, batch size, learning rate, step budget, DataLoader
num_workers (where measured), B_crit with both intervals, the baseline's outcome, base vs branch -- each
marked **changed** (beyond both runs' intervals), within noise, cannot tell (saying why: one seed each,
a zero width the revision does not explain), or same (`--all` gives the unchanged values too); seeds
that agree exactly are named, a step budget more than x1.5 apart and a baseline turned to missing its
target marked. Below it, folded (`<details>`), the timings, which differ on every run (the keys each
stage's diagnostics file declares as timings in stages/core/outputs.py), marked as measured by two
different runs with the ratio of the reference timing, and every other value that differs, except
those the recommendation shows. Its stdin may hold several `--json`
bodies one after the other (the metrics diff, then the diagnostics diff). `dvc ... --md` prints every
value in full and raw floats; the tables here show one row per value that differs, in the report's
units (stages/report/format.fmt), the change with its relative size, text cut to a readable length,
and no row for a difference too small to show.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from stages.core import outputs as out
from stages.pipeline import declaration as pipeline
from stages.report.format import fmt

MAX_TEXT = 80  # characters of a text value shown in a cell


NUMBER = (int, float)


def _is_number(v: Any) -> bool:
    return isinstance(v, NUMBER) and not isinstance(v, bool)


def is_timing(path: str, key: str) -> bool:
    """Measured on the clock (or decided from it): declared per stage in stages/core/outputs.py."""
    return out.is_timing(path, key)


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
    """One table row per value that differs as shown (files in pipeline order, probe first; keys sorted)."""
    order = [o.path for s in pipeline.STAGES for o in s.outputs]
    rows = []
    for path, entries in sorted(diff.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)):
        for key, values in sorted((entries or {}).items()):  # one order, whatever order dvc printed
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

FAMILY, PROBE, THROUGHPUT, SELECT, SCALING, BASELINE = (m.path for m in (
    out.FAMILY_METRICS, out.PROBE_METRICS, out.THROUGHPUT_METRICS, out.SELECT_METRICS, out.SCALING_METRICS,
    out.BASELINE_METRICS))
SAME, NOISE, BEYOND = "same", "within noise", "**changed** (beyond both intervals)"
NO_INTERVAL = "cannot tell (no interval recorded)"
ONE_SIDE, NOT_RECORDED, MODEL_CHANGED = "cannot tell (recorded on one side only)", "not recorded", "**changed** (another model)"
CHANGED = "**changed**"
BUDGET_FACTOR = 1.5  # a step budget this many times larger or smaller is marked, whatever the intervals say


@dataclass(frozen=True)
class Interval:
    """One run's range for a value: `kind` "spread" (its seeds differ), "exact" (two or more seeds, all at
    the same value: a zero-width interval), "one" (one seed: a point, no interval), "zero" (zero width,
    and the revision does not record how many seeds)."""
    low: float
    high: float
    kind: str = "spread"

    @property
    def formed(self) -> bool:
        return self.kind in ("spread", "exact")

    def holds(self, value: Any) -> bool:
        return self.formed and _is_number(value) and self.low <= value <= self.high


def _side(diff: dict, path: str, key: str, side: str) -> Any:
    """A value of one revision, from its metrics file or (a value moved there) its diagnostics file."""
    for file in (path, path.replace("metrics.json", "diagnostics.json")):
        entry = (diff.get(file) or {}).get(key)
        if entry is not None:
            return entry.get(side)
    return None


WHY = {"exact": "seeds agree exactly", "one": "one seed", "zero": "zero width, seed count not recorded"}


def interval(low: Any, high: Any, seeds: Any = None) -> Interval | None:
    """The run's interval from its low and high ends and, where recorded, how many seeds they span; None
    if not recorded. A zero-width one is an interval when two or more seeds agree exactly, none for one seed."""
    if not (_is_number(low) and _is_number(high)):
        return None
    if not math.isclose(low, high, rel_tol=1e-12, abs_tol=0.0):
        return Interval(low, high)
    kind = "zero" if not _is_number(seeds) else "exact" if seeds >= 2 else "one"
    return Interval(low, high, kind)


def _notes(intervals, names) -> list[str]:
    """What qualifies a judgement: 'seeds agree exactly on base', 'one seed on this branch'."""
    kinds = [iv.kind for iv in intervals]
    if kinds[0] == kinds[1] != "spread":
        return [f"{WHY[kinds[0]]} on both sides"]
    return [f"{WHY[k]} on {name}" for k, name in zip(kinds, names) if k != "spread"]


def _mark(head: str, details: list[str]) -> str:
    return head + (f" ({'; '.join(details)})" if details else "")


def _no_interval(intervals, names) -> str:
    """'cannot tell (...)' with the reason neither run formed an interval."""
    kinds = [iv.kind for iv in intervals]
    if kinds == ["one", "one"]:
        return "cannot tell (one seed each: no interval)"
    if kinds == ["zero", "zero"]:
        return "cannot tell (zero-width intervals, seed counts not recorded: one seed, or seeds that agree exactly)"
    return f"cannot tell ({'; '.join(f'{name}: {WHY[k]}' for k, name in zip(kinds, names))})"


def verdict(old: Any, new: Any, old_interval: Interval | None, new_interval: Interval | None,
            names: tuple[str, str] = ("base", "this branch")) -> str:
    """**changed** where each run's value lies outside the other run's interval (beyond both), within noise
    where one lies inside; with an interval on one side only, judged against that one (and said so).
    Cannot tell only where neither run formed an interval, saying why: one seed, or a zero width the
    revision does not explain; seeds that agree exactly form a zero-width interval, named as such."""
    if old == new or _same_number(old, new):
        return SAME
    intervals = (old_interval, new_interval)
    if None in intervals:
        return NO_INTERVAL
    if not any(iv.formed for iv in intervals):
        return _no_interval(intervals, names)
    notes = _notes(intervals, names)
    if old_interval.holds(new) or new_interval.holds(old):
        return _mark(NOISE, notes)
    if all(iv.formed for iv in intervals):
        return _mark(CHANGED, ["beyond both intervals", *notes])
    formed = next(name for iv, name in zip(intervals, names) if iv.formed)
    return _mark(CHANGED, [f"beyond {formed}'s interval", *notes])


def judged(mark: str) -> bool:
    """Did `verdict` judge the difference (within noise or changed), rather than cannot tell?"""
    return mark.startswith((NOISE, CHANGED))


def tied_sizes(label: Any) -> list[int] | None:
    """The sizes in select's `tie` label ('128~256: chose 128 ...' -> [128, 256]; 'none' -> []). DVC drops
    list metrics from its diffs, so the review reads the label, not `tied_batch_sizes`."""
    if not isinstance(label, str):
        return None
    head = label.split(":", 1)[0].strip()
    return [] if head == "none" else [int(x) for x in head.split("~") if x.strip().isdigit()]


def _model(family_candidates: Any, chosen: Any, parameters: Any) -> str | None:
    """The model the later stages train: the family's choice (or workload.kwargs as given) and its size."""
    if parameters is None and chosen is None:
        return None
    which = f"candidate{chosen}" if _is_number(chosen) else "as given" if family_candidates == 0 else "?"
    return which + (f", {parameters:,} parameters" if _is_number(parameters) else "")


def _steps_verdict(points: tuple, steps: list, names: tuple[str, str]) -> str:
    """Two choices (learning rate, step budget) judged by the steps to target they give: each run's
    steps_to_target against the other run's range over seeds."""
    if None in steps:
        return NO_INTERVAL
    if None in points:  # a revision without steps_to_target: judged by the ranges
        if not all(iv.formed for iv in steps):
            return _no_interval(steps, names) if not any(iv.formed for iv in steps) else _mark(NOISE, _notes(steps, names))
        (a, b), (c, d) = ((iv.low, iv.high) for iv in steps)
        return _mark(CHANGED if b < c or d < a else NOISE, (["beyond both intervals"] if b < c or d < a else [])
                     + _notes(steps, names))
    mark = verdict(*points, *steps, names)
    return NOISE if mark == SAME else mark  # another rate, the same steps: within noise


def _budget_change(values: tuple) -> str:
    """'; **step budget x2.61** (more than x1.5 apart)' when the budgets differ by BUDGET_FACTOR or more."""
    old, new = values
    if not (_is_number(old) and _is_number(new)) or old <= 0 or new <= 0:
        return ""
    ratio = new / old
    if max(ratio, 1 / ratio) < BUDGET_FACTOR:
        return ""
    return f"; **step budget x{ratio:.3g}** (more than x{BUDGET_FACTOR:g} apart)"


def recommendation(diff: dict, old_name: str = "base", new_name: str = "this branch") -> str:
    """The recommendation base vs branch, one row each, marked by `verdict`. Its intervals: for the batch
    size, the sizes select found tied with its choice (its `tie`) given that a run has a seed spread;
    for the learning rate and the step budget, the chosen rate's steps to target over its seeds
    (steps_to_target_min..max over steps_to_target_seeds, against the other run's steps_to_target); for
    B_crit its 95% interval. A step budget BUDGET_FACTOR times larger or smaller is marked whatever the
    intervals say. The model is a choice, not a measurement: another model is a change. One baseline
    run each has no interval, but a baseline that turns from meeting its target to missing it (or back)
    is marked."""
    names = (old_name, new_name)

    def get(path, key, side):
        return _side(diff, path, key, side)

    def pair(path, key):
        return get(path, key, "old"), get(path, key, "new")

    def shown(values, key):
        return [None if v is None else _cell(v, key) for v in values]

    rows = []
    models = [_model(get(FAMILY, "candidates", s), get(FAMILY, "chosen_index", s), get(PROBE, "parameter_count", s))
              for s in ("old", "new")]
    rows.append(("model", *models, SAME if models[0] == models[1] else MODEL_CHANGED))

    lows, highs = pair(SELECT, "steps_to_target_min"), pair(SELECT, "steps_to_target_max")
    seeds = pair(SELECT, "steps_to_target_seeds")
    steps = [interval(lo, hi, n) for lo, hi, n in zip(lows, highs, seeds)]
    b_old, b_new = sizes = pair(SELECT, "batch_size")
    tied = [tied_sizes(get(SELECT, "tie", s)) for s in ("old", "new")]
    if b_old == b_new:
        size = SAME
    elif b_new in (tied[0] or []) or b_old in (tied[1] or []):
        size = NOISE + " (tied in select)"
    elif None in tied or None in steps:
        size = NO_INTERVAL
    elif not any(iv.formed for iv in steps):  # select had no seed spread to find ties with
        size = _no_interval(steps, names)
    else:  # neither found the other's size tied
        size = _mark(CHANGED, ["not tied in either run's select" if all(iv.formed for iv in steps) else
                               f"not tied in {next(n for iv, n in zip(steps, names) if iv.formed)}'s select",
                               *_notes(steps, names)])
    rows.append(("batch size", *shown(sizes, "batch_size"), size))

    points = pair(SELECT, "steps_to_target")
    spans = "" if None in steps else " (steps to target {} vs {})".format(
        *(f"{_cell(lo, 'steps')}-{_cell(hi, 'steps')}" for lo, hi in zip(lows, highs)))
    for label, key in (("learning rate", "learning_rate"), ("step budget", "train_steps")):
        values = pair(SELECT, key)
        mark = SAME if values[0] == values[1] or _same_number(*values) else _steps_verdict(points, steps, names)
        mark += spans if judged(mark) else ""
        rows.append((label, *shown(values, key), mark + (_budget_change(values) if key == "train_steps" else "")))

    workers = pair(THROUGHPUT, "recommended_num_workers")
    if workers != (None, None):  # measured on at least one side (a workload with a DataLoader)
        rows.append(("DataLoader num_workers", *shown(workers, "num_workers"),
                     SAME if workers[0] == workers[1] else NO_INTERVAL))

    b_crit = pair(SCALING, "critical_batch_size")
    ci = [(get(SCALING, "ci_low", s), get(SCALING, "ci_high", s)) for s in ("old", "new")]
    cells = [None if v is None else f"{_cell(v, 'b_crit')} ({_cell(lo, 'b_crit')}-{_cell(hi, 'b_crit')})"
             for v, (lo, hi) in zip(b_crit, ci)]
    rows.append(("B_crit (95% interval)", *cells, verdict(*b_crit, *(interval(*c) for c in ci), names)))

    outcome, meets = [], pair(BASELINE, "final_meets_target")
    for side, met in zip(("old", "new"), meets):
        metric = get(BASELINE, "target_metric", side)
        value = get(BASELINE, metric, side) if isinstance(metric, str) else None
        outcome.append(None if met is None else ("meets the target" if met else "**misses** the target")
                       + (f" ({metric} {_cell(value, metric)})" if value is not None else ""))
    if outcome[0] == outcome[1]:
        turn = SAME
    elif meets == (True, False):
        turn = f"**turned to missing its target** ({old_name} met it)"
    elif meets == (False, True):
        turn = f"**now meets its target** ({old_name} missed it)"
    else:
        turn = "cannot tell (one baseline run each: no interval)"
    rows.append(("baseline at the end of its budget", *outcome, turn))

    lines = [f"| recommendation | {old_name} | {new_name} | change |", "|---|---:|---:|---|"]
    for label, old, new, mark in rows:
        if old is None or new is None:
            mark = NOT_RECORDED if old is None and new is None else ONE_SIDE
        lines.append(f"| {label} | {_cell(old, label)} | {_cell(new, label)} | {mark} |")
    return "\n".join(lines)


# Shown as the recommendation's own rows: not repeated in the table of every other value.
IN_RECOMMENDATION = {(SELECT, k) for k in ("batch_size", "learning_rate", "train_steps", "tie")} | {
    (SCALING, k) for k in ("critical_batch_size", "ci_low", "ci_high")} | {
    (FAMILY, "chosen_index"), (PROBE, "parameter_count"), (THROUGHPUT, "recommended_num_workers"),
    (BASELINE, "final_meets_target")}
# The reference timing: the peak matmul speed each run measured on its device, whatever the model --
# how the two runs' machines and loads compare.
REFERENCE = (out.THROUGHPUT_DIAGNOSTICS.path, "peak_flops_per_s")


def timings_note(diff: dict, old_name: str = "base", new_name: str = "this branch") -> str:
    """What the timings are: measured by two different runs, each on its machine under its load; with the
    ratio of the reference timing where both runs recorded it."""
    text = (f"Measured on the clock by two different runs ({old_name}, {new_name}), each on its own machine "
            f"and load: a timing changes with those as well as with the code.")
    entry = (diff.get(REFERENCE[0]) or {}).get(REFERENCE[1]) or {}
    old, new = entry.get("old"), entry.get("new")
    if not (_is_number(old) and _is_number(new) and old > 0 and new > 0):
        return text + (f" No reference timing on both sides (`{REFERENCE[1]}` in {REFERENCE[0]}): how the two "
                       f"machines compare is not known.")
    ratio = new / old
    speed = ("the same speed as" if math.isclose(ratio, 1, rel_tol=0.05) else f"x{ratio:.2f} the speed of")
    return text + (f" Reference: the peak matmul speed each run measured on its device (`{REFERENCE[1]}` in "
                   f"{REFERENCE[0]}), {old / 1e9:.3g} vs {new / 1e9:.3g} GFLOP/s: {new_name}'s run had {speed} "
                   f"{old_name}'s, so a time x{1 / ratio:.2f} as long is the machine and its load, not the code.")


def metrics_review(diff: dict, old_name: str = "base", new_name: str = "this branch") -> str:
    """The recommendation, then (folded) the timings, marked as measured on different runs, and every other
    value that differs (not those the recommendation shows)."""
    metric = {_side(diff, BASELINE, "target_metric", side) for side in ("old", "new")}
    shown = IN_RECOMMENDATION | {(BASELINE, m) for m in metric if isinstance(m, str)}
    timings = markdown(diff, "metrics", old_name, new_name, keep=is_timing)
    rest = markdown(diff, "metrics", old_name, new_name,
                    keep=lambda path, key: not is_timing(path, key) and (path, key) not in shown)
    return "\n".join([
        recommendation(diff, old_name, new_name), "",
        "<details><summary>Timings (measured on the clock by different runs: they differ with the machine and "
        "its load as well as with the code)</summary>",
        "", timings_note(diff, old_name, new_name), "", timings, "", "</details>", "",
        "<details><summary>Every other metric and diagnostic that differs</summary>", "", rest, "", "</details>"])


# ---------------------------------------------------------------------------- comparable revisions

def committed_profile(rev: str) -> tuple[bool, str | None]:
    """(whether `rev` has a dvc.yaml, the profile its committed results were run with: None for the
    branch's own params.yaml, the full run) -- read from the dvc.yaml committed on `rev`."""
    shown = subprocess.run(["git", "show", f"{rev}:{pipeline.DVC_FILE}"], capture_output=True, text=True)
    if shown.returncode:
        return False, None
    return True, pipeline.active_profile(shown.stdout)


def profile_note(old_rev: str, new_rev: str, old_name: str = "base", new_name: str = "this branch") -> str | None:
    """None when both revisions' committed results come from the same profile (comparable); otherwise the
    one line that says why they are not compared."""
    (old_has, old), (new_has, new) = committed_profile(old_rev), committed_profile(new_rev)
    if old_has and new_has and old == new:
        return None
    name = lambda has, p: "no dvc.yaml" if not has else "the full run" if p is None else f"the `{p}` profile"  # noqa: E731
    return (f"Committed results not compared: {old_name} (`{old_rev}`) holds {name(old_has, old)}, {new_name} "
            f"(`{new_rev}`) {name(new_has, new)}; only runs of one profile compare (docs/team.md).")


def read_diffs(text: str) -> dict:
    """One or more `dvc ... diff --json` bodies one after the other, merged (their files differ)."""
    decoder, merged, text, at = json.JSONDecoder(), {}, text.strip(), 0
    while at < len(text):
        body, at = decoder.raw_decode(text, at)
        merged.update(body or {})
        at += len(text[at:]) - len(text[at:].lstrip())  # the whitespace between two bodies
    return merged


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["params", "metrics", "same-profile"],
                    help="which dvc diff is on stdin; same-profile: are REVS' committed results comparable")
    ap.add_argument("revs", nargs="*", metavar="REV", help="same-profile: the two revisions")
    ap.add_argument("--old-name", default="base", help="column header of the old revision")
    ap.add_argument("--new-name", default="this branch", help="column header of the new revision")
    args = ap.parse_args(argv)
    if args.what == "same-profile":
        if len(args.revs) != 2:
            ap.error("same-profile takes two revisions, e.g. `same-profile main HEAD`")
        note = profile_note(*args.revs, args.old_name, args.new_name)
        if note:
            print(note)
        return 1 if note else 0
    diff = read_diffs(sys.stdin.read())
    if args.what == "metrics":
        print(metrics_review(diff, args.old_name, args.new_name))
    else:
        print(markdown(diff, args.what, args.old_name, args.new_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
