"""Why nothing reached the target, and the one change that fits -- one classifier for the family
stage, `scaling summarize` and select, so the three never give different advice for the same failure.

    why_not_reached(runs, target, limits) -> Advice(kind, message)

`runs` are the training runs of a study that reached nothing (a family candidate's trials, every
scaling trial, or one row per family candidate); `limits` names the settings each stage would change.
The classes, in the order they are checked (the first that holds wins):

    crashed              every run raised, the same error: fix it -- no setting helps
    out_of_memory        every run ran out of memory: lower the batch size
    target_out_of_range  the target lies outside what the metric can take (accuracy 90): fix the target
    diverged             every run's loss went non-finite: lower the learning-rate range
    range_too_narrow     the run that came closest sits at the edge of the rates tried, on the side
                         where a rate beyond could help (the largest, none diverging; the smallest,
                         levelled off): widen the range on that side
    too_few_steps        the closest run was still going when the step cap stopped it: raise the cap
    plateaued            the closest run levelled off short of the target: an easier target or a
                         larger model

Pure: no I/O, no torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from stages.core.types import NOT_TRAINED

# What a metric can take at all; a target outside is unreachable whatever the model or the settings.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "accuracy": (0.0, 1.0),      # a fraction, not a percentage
    "loss": (0.0, math.inf),     # the built-in losses (cross-entropy, mse, the NQM's quadratic) are >= 0
}

SUMMARIES = {  # a candidate's failure in a few words, for the family's summary
    "crashed": "crashed", "out_of_memory": "ran out of memory", "target_out_of_range": "cannot meet the target",
    "diverged": "diverged at every learning rate", "range_too_narrow_above": "came closest at the largest rate tried",
    "range_too_narrow_below": "levelled off at the smallest rate tried", "too_few_steps": "was stopped by the step cap",
    "plateaued": "levelled off short of the target", "mixed": "did not reach it",
}
LABELS = {  # the words that open a family candidate's reason (read back by `kind_of`)
    "crashed": "crashed", "out_of_memory": "out of memory", "target_out_of_range": "target out of range",
    "diverged": "every trial diverged", "range_too_narrow_above": "learning-rate range too narrow above",
    "range_too_narrow_below": "learning-rate range too narrow below", "too_few_steps": "too few steps",
    "plateaued": "plateaued", "mixed": "not reached",
}
KINDS = tuple(LABELS)


@dataclass(frozen=True)
class Run:
    """What the classifier needs from one training run (a trial, or a family candidate's best trial)."""
    outcome: str                    # reached, not_reached, diverged, plateaued, stopped_early, failed, out_of_memory
    learning_rate: float = math.nan
    steps_run: float = math.nan
    max_steps: float = math.nan
    final_metric: float = math.nan  # the target metric at its end
    reason: str = ""                # the error, for a run that raised


@dataclass(frozen=True)
class Target:
    metric: str
    value: float
    direction: str                  # "above" or "below"

    def __str__(self) -> str:
        return f"{self.metric} {'>=' if self.direction == 'above' else '<='} {self.value:g}"


@dataclass(frozen=True)
class Limits:
    """The settings a stage names in its advice, with their values in the study that was run."""
    max_steps_key: str                        # "family.max_steps" or "scaling.max_steps"
    max_steps: int | None
    lr_min: float | None                      # the smallest / largest rate the study was allowed to try
    lr_max: float | None
    batch_size_key: str = "family.batch_size"
    model_key: str = "family.candidates"      # where a larger model comes from


@dataclass(frozen=True)
class Advice:
    kind: str
    evidence: str                   # what happened, with the numbers
    action: str                     # the one change that fits, naming the setting

    @property
    def message(self) -> str:
        return f"{self.evidence}; {self.action}"

    @property
    def label(self) -> str:
        return LABELS[self.kind]


def action_for(kind: str, limits: Limits, target_bounds: tuple[float, float] | None = None) -> str:
    """The one change that fits a class of failure, naming the setting (and its value in the study, where known)."""
    def now(*values: float | int | None) -> str:
        return "" if any(v is None for v in values) else f"now {'..'.join(_g(v) for v in values)}"

    def said(text: str, value: str) -> str:
        return f"{text} ({value})" if value else text

    return {
        "crashed": "fix it in the model, data or loss (workload.kwargs) -- no step or learning-rate setting can help",
        "out_of_memory": f"lower {limits.batch_size_key}",
        "target_out_of_range": (f"set workload.kwargs.target within [{target_bounds[0]:g}, {target_bounds[1]:g}]"
                                if target_bounds else "set workload.kwargs.target within the metric's range"),
        "diverged": ("lower the learning-rate range (scaling.lr_min, scaling.lr_max"
                     + (f"; {now(limits.lr_min, limits.lr_max)})" if now(limits.lr_min, limits.lr_max) else ")")),
        "range_too_narrow_above": said("raise scaling.lr_max", now(limits.lr_max)) + ": a larger rate may get there",
        "range_too_narrow_below": said("lower scaling.lr_min", now(limits.lr_min)) + ": a smaller rate settles lower",
        "too_few_steps": said(f"raise {limits.max_steps_key}", now(limits.max_steps)),
        "plateaued": f"a larger model ({limits.model_key}) or an easier target (workload.kwargs.target)",
        "mixed": said(f"raise {limits.max_steps_key}", now(limits.max_steps)),
    }[kind]


def runs_of(rows: Iterable[dict]) -> list[Run]:
    """Runs from the rows of a trials table (reports/scaling/trials.csv's columns; missing ones unknown)."""
    def number(row: dict, key: str) -> float:
        try:
            value = float(row.get(key))
        except (TypeError, ValueError):
            return math.nan
        return value

    return [Run(str(r.get("outcome", "")), number(r, "learning_rate"), number(r, "steps_run"), number(r, "max_steps"),
                number(r, "final_metric"), "" if r.get("reason") is None else str(r.get("reason"))) for r in rows]


def metric_range(metric: str) -> tuple[float, float] | None:
    return METRIC_RANGES.get(metric)


def target_out_of_range(target: Target) -> str | None:
    """Why `target` cannot be reached whatever the model (None if it can, or the metric's range is unknown)."""
    bounds = metric_range(target.metric)
    if bounds is None:
        return None
    low, high = bounds
    if target.direction == "above" and target.value > high:
        return f"{target} can never be met: {target.metric} is at most {high:g}"
    if target.direction == "below" and target.value < low:
        return f"{target} can never be met: {target.metric} is at least {low:g}"
    return None


def kind_of(reason: str) -> str:
    """The class a family candidate's reason opens with (its label), else 'mixed'."""
    for kind, label in LABELS.items():
        if str(reason).startswith(label + ":"):
            return kind
    return "mixed"


def _closeness(target: Target):
    def key(r: Run) -> float:  # lower is closer; non-finite last
        v = r.final_metric
        if r.outcome == "diverged" or not isinstance(v, (int, float)) or not math.isfinite(v):
            return math.inf
        return -v if target.direction == "above" else v
    return key


def _g(x: float | None) -> str:
    return "unset" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:g}"


def why_not_reached(runs: Iterable[Run], target: Target, limits: Limits, what: str = "trials") -> Advice:
    """The class of failure of `runs` (none of which reached the target) and the one change that fits.
    `what` names the runs in the plural ("trials", "candidates")."""
    one = what[:-1] if what.endswith("s") else what
    runs = [r for r in runs if r.outcome not in (*NOT_TRAINED, "stopped_early")]
    n = len(runs)

    def advice(kind: str, evidence: str) -> Advice:
        return Advice(kind, evidence, action_for(kind, limits, metric_range(target.metric)))

    impossible = target_out_of_range(target)
    if impossible:  # checked first: with an impossible target the rest is noise
        return advice("target_out_of_range", impossible)
    if n == 0:
        return advice("mixed", f"no {one} ran")
    crashed = [r for r in runs if r.outcome == "failed"]
    if len(crashed) == n:
        errors = sorted({r.reason for r in crashed})
        return advice("crashed", f"all {n} {what} crashed with the same error ({errors[0]})" if len(errors) == 1
                      else f"all {n} {what} crashed ({'; '.join(errors)})")
    if all(r.outcome == "out_of_memory" for r in runs):
        return advice("out_of_memory", f"all {n} {what} ran out of memory")
    trained = [r for r in runs if r.outcome not in ("failed", "out_of_memory")]
    rates = sorted({r.learning_rate for r in trained if math.isfinite(r.learning_rate)})
    if trained and all(r.outcome == "diverged" for r in trained):
        steps = max((r.steps_run for r in trained if math.isfinite(r.steps_run)), default=math.nan)
        within = f" within {int(steps)} steps" if math.isfinite(steps) else ""
        first_steps = math.isfinite(steps) and steps <= 2
        return advice("diverged", (
            f"every one of the {len(trained)} {what} diverged (non-finite loss){within}, even at the smallest "
            f"learning rate {_g(rates[0] if rates else None)}, so an easier target or more steps cannot help"
            + (". Check the loss and the model first (a NaN from the first step: inputs, labels, initialisation, "
               "a log or division by zero)" if first_steps else "")))
    closest = min(trained, key=_closeness(target))
    lr = closest.learning_rate
    got = (f" (closest: {target.metric} {closest.final_metric:.4g} at learning rate {lr:.3g})"
           if math.isfinite(closest.final_metric) and math.isfinite(lr) else "")
    missed = f"no {one} reached {target}{got}"
    # At the largest rate tried with no rate diverging, the range never met its upper limit: widen it
    # before spending more steps (with a rate that diverged above it, the steps are what is short).
    if (len(rates) > 1 and math.isfinite(lr) and lr == rates[-1] and closest.outcome in ("not_reached", "plateaued")
            and not any(r.outcome == "diverged" for r in trained)):
        return advice("range_too_narrow_above", f"{missed}, and the closest ran at the largest learning rate tried, "
                                                f"none of them diverging")
    if len(rates) > 1 and math.isfinite(lr) and lr == rates[0] and closest.outcome == "plateaued":
        return advice("range_too_narrow_below", f"{missed}, and the closest levelled off at the smallest learning "
                                                f"rate tried")
    censored = (closest.outcome == "not_reached" and math.isfinite(closest.steps_run)
                and math.isfinite(closest.max_steps) and closest.steps_run >= closest.max_steps)
    if censored:
        return advice("too_few_steps", f"{missed}; the closest was still training when the step cap stopped it "
                                       f"at {int(closest.steps_run)} steps")
    if closest.outcome == "plateaued":
        return advice("plateaued", f"{missed}; the closest levelled off short of it: the model cannot get there")
    return advice("mixed", missed)
