"""Turn `dvc params diff --json` / `dvc metrics diff --json` into markdown for a pull-request
comment (what .ci/pr-review posts), and tell whether two revisions' committed results are comparable:

    { dvc metrics diff BASE HEAD --all --json; dvc metrics diff BASE HEAD --json --targets reports/*/diagnostics.json; } \
        | python -m stages.report.review metrics
    dvc params diff BASE HEAD --json | python -m stages.report.review params
    python -m stages.report.review same-profile BASE HEAD   # exit 1, with one line saying why, if not comparable

`metrics` leads with the recommendation -- the model, batch size, learning rate, step budget, DataLoader
num_workers (where measured), B_crit with both intervals, the baseline's outcome, base vs branch -- each
marked **changed** (beyond both runs' intervals), within noise, cannot tell (one run each: no interval),
or same (`--all` gives the unchanged values too). Below it, folded (`<details>`), the timings, which
differ on every run (the keys each stage's diagnostics file declares as timings in
stages/core/outputs.py), and every other value that differs. Its stdin may hold several `--json`
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

FAMILY, PROBE, THROUGHPUT, SELECT, SCALING, BASELINE = (m.path for m in (
    out.FAMILY_METRICS, out.PROBE_METRICS, out.THROUGHPUT_METRICS, out.SELECT_METRICS, out.SCALING_METRICS,
    out.BASELINE_METRICS))
SAME, NOISE, BEYOND = "same", "within noise", "**changed** (beyond both intervals)"
ONE_RUN, NO_INTERVAL = "cannot tell (one run each)", "cannot tell (no interval recorded)"
ONE_SIDE, NOT_RECORDED, MODEL_CHANGED = "cannot tell (recorded on one side only)", "not recorded", "**changed** (another model)"


def _side(diff: dict, path: str, key: str, side: str) -> Any:
    """A value of one revision, from its metrics file or (a value moved there) its diagnostics file."""
    for file in (path, path.replace("metrics.json", "diagnostics.json")):
        entry = (diff.get(file) or {}).get(key)
        if entry is not None:
            return entry.get(side)
    return None


def interval(low: Any, high: Any) -> tuple[float, float] | str | None:
    """(low, high); ONE_RUN for a zero-width one (a single seed, one measurement); None if not recorded."""
    if not (_is_number(low) and _is_number(high)):
        return None
    return ONE_RUN if math.isclose(low, high, rel_tol=1e-12, abs_tol=0.0) else (low, high)


def verdict(old: Any, new: Any, old_interval, new_interval) -> str:
    """**changed** only where each run's value lies outside the other run's interval, within noise where one
    lies inside, cannot tell where a run has no interval (or only a zero-width one: one run each)."""
    if old == new or _same_number(old, new):
        return SAME
    if None in (old_interval, new_interval):
        return NO_INTERVAL
    if ONE_RUN in (old_interval, new_interval):
        return ONE_RUN
    inside = lambda v, iv: _is_number(v) and iv[0] <= v <= iv[1]  # noqa: E731
    return NOISE if inside(new, old_interval) or inside(old, new_interval) else BEYOND


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


def _steps_verdict(points: tuple, steps: list) -> str:
    """Two choices (learning rate, step budget) judged by the steps to target they give: each run's
    steps_to_target against the other run's range over seeds."""
    if None in steps:
        return NO_INTERVAL
    if ONE_RUN in steps:
        return ONE_RUN
    if None in points:  # a revision without steps_to_target: disjoint ranges put each run outside the other's
        (a, b), (c, d) = steps
        return BEYOND if b < c or d < a else NOISE
    mark = verdict(*points, *steps)
    return NOISE if mark == SAME else mark  # another rate, the same steps: within noise


def recommendation(diff: dict, old_name: str = "base", new_name: str = "this branch") -> str:
    """The recommendation base vs branch, one row each, marked by `verdict`. Its intervals: for the batch
    size, the sizes select found tied with its choice (its `tie`) given that both runs have a seed spread;
    for the learning rate and the step budget, the chosen rate's steps to target over seeds
    (steps_to_target_min..max, against the other run's steps_to_target); for B_crit its 95% interval.
    The model is a choice, not a measurement: another model is a change. One baseline run each has no
    interval."""
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
    steps = [interval(lo, hi) for lo, hi in zip(lows, highs)]
    b_old, b_new = sizes = pair(SELECT, "batch_size")
    tied = [tied_sizes(get(SELECT, "tie", s)) for s in ("old", "new")]
    if b_old == b_new:
        size = SAME
    elif b_new in (tied[0] or []) or b_old in (tied[1] or []):
        size = NOISE + " (tied in select)"
    elif None in tied or None in steps:
        size = NO_INTERVAL
    else:  # neither found the other's size tied: beyond both, if select had a seed spread to find ties with
        size = ONE_RUN if ONE_RUN in steps else BEYOND
    rows.append(("batch size", *shown(sizes, "batch_size"), size))

    points = pair(SELECT, "steps_to_target")
    spans = "" if not all(isinstance(iv, tuple) for iv in steps) else " (steps to target {} vs {})".format(
        *(f"{_cell(lo, 'steps')}-{_cell(hi, 'steps')}" for lo, hi in zip(lows, highs)))
    for label, key in (("learning rate", "learning_rate"), ("step budget", "train_steps")):
        values = pair(SELECT, key)
        mark = SAME if values[0] == values[1] or _same_number(*values) else _steps_verdict(points, steps)
        rows.append((label, *shown(values, key), mark + (spans if mark in (NOISE, BEYOND) else "")))

    workers = pair(THROUGHPUT, "recommended_num_workers")
    if workers != (None, None):  # measured on at least one side (a workload with a DataLoader)
        rows.append(("DataLoader num_workers", *shown(workers, "num_workers"),
                     SAME if workers[0] == workers[1] else NO_INTERVAL))

    b_crit = pair(SCALING, "critical_batch_size")
    ci = [(get(SCALING, "ci_low", s), get(SCALING, "ci_high", s)) for s in ("old", "new")]
    cells = [None if v is None else f"{_cell(v, 'b_crit')} ({_cell(lo, 'b_crit')}-{_cell(hi, 'b_crit')})"
             for v, (lo, hi) in zip(b_crit, ci)]
    rows.append(("B_crit (95% interval)", *cells, verdict(*b_crit, *(interval(*c) for c in ci))))

    outcome = []
    for side in ("old", "new"):
        meets = get(BASELINE, "final_meets_target", side)
        metric = get(BASELINE, "target_metric", side)
        value = get(BASELINE, metric, side) if isinstance(metric, str) else None
        outcome.append(None if meets is None else ("meets the target" if meets else "**misses** the target")
                       + (f" ({metric} {_cell(value, metric)})" if value is not None else ""))
    rows.append(("baseline at the end of its budget", *outcome, SAME if outcome[0] == outcome[1] else ONE_RUN))

    lines = [f"| recommendation | {old_name} | {new_name} | change |", "|---|---:|---:|---|"]
    for label, old, new, mark in rows:
        if old is None or new is None:
            mark = NOT_RECORDED if old is None and new is None else ONE_SIDE
        lines.append(f"| {label} | {_cell(old, label)} | {_cell(new, label)} | {mark} |")
    return "\n".join(lines)


def metrics_review(diff: dict, old_name: str = "base", new_name: str = "this branch") -> str:
    """The recommendation, then (folded) the timings and every other value that differs."""
    timings = markdown(diff, "metrics", old_name, new_name, keep=is_timing)
    rest = markdown(diff, "metrics", old_name, new_name, keep=lambda path, key: not is_timing(path, key))
    return "\n".join([
        recommendation(diff, old_name, new_name), "",
        "<details><summary>Timings (measured on the clock: they differ from run to run on the same code)</summary>",
        "", timings, "", "</details>", "",
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
