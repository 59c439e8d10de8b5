"""Choosing the initial configuration, as pure functions over what probe, throughput and scaling measured.

The playbook's arithmetic, per batch size B:
    training time  = time per step(B) x steps to target(B)
    resource use   = devices(B) x training time / 3600 x device cost per hour
Devices: 1 while B fits one device (probe); above that only if `select.max_devices` allows, with
ceil(B / per-device max) data-parallel devices whose throughput each keeps a scaling efficiency: the one
throughput measured for that device count (throughput.devices, reports/throughput/devices.csv) where it
exists, else the assumed `select.scaling_efficiency`; each row says which (`scaling_efficiency_source`).
A size that fits one device but lies beyond the largest size that still raised throughput is not
considered (the playbook: only consider sizes up to where throughput stops growing).
Steps between measured sizes come from the fitted curve S(B) = S_min (1 + B_crit / B) and are
marked as interpolated: such a size has no tuned learning rate, so it is shown but never chosen.
Steps and rate per studied size are those of the rate whose every seed holds the target through the
step budget (stages/select/rates.py); a size where none holds is `not held`.
Ties: each candidate's objective carries an interval (steps: steps_to_target_ci_low/high from scaling,
else the point; time per step: throughput's examples/s interval). The candidates whose interval
overlaps the fastest one's are tied (the time per step's interval widened by throughput's measured
drift: a time from another run differs at least that much), and among them select takes the one with
fewer devices, then the best estimate -- and reports the tie with every size in it, so a decision that
noise could reverse says so.
`python -m stages.select` reads the files, calls `select()` and writes what it returns (the reasoning:
stages/select/reasoning.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from stages.core.config import SelectSettings
from stages.core import advice
from stages.core.errors import StudyError
from stages.search.ranking import readable_steps, step_budget  # noqa: F401 (select's rule, shared with the scaling study)
from stages.core.types import BatchSize, Steps



class NotReasonable(StudyError):
    """The study cannot yield a 'reasonable performance' configuration: change the target or the study."""


@dataclass(frozen=True)
class Target:
    metric: str
    value: float
    direction: str          # "above" or "below"
    chance_score: float
    better_than_chance: bool  # stages.workload.better_than_chance(workload)


@dataclass(frozen=True)
class Study:
    """The scaling study's limits (from its diagnostics.json), named in messages that say what to change."""
    max_steps: Steps
    lr_min: float  # the smallest learning rate tried
    lr_max: float  # the largest
    examples_run: int | None = None  # what the whole study trained (its metrics.json; None: not recorded)
    seconds: float | None = None     # its trials' training seconds (diagnostics.json)


@dataclass(frozen=True)
class Measurements:
    probe: pd.DataFrame               # batch_size, status, reason (probe.csv)
    max_batch_size: BatchSize | None  # largest size that fits one device (probe)
    throughput: pd.DataFrame          # batch_size, time_per_step_s, regime (throughput.csv)
    largest_useful_batch_size: BatchSize | None
    steps: pd.DataFrame               # batch_size, best_learning_rate, steps_to_target (NaN: not reached)
                                      # [, status, reason, regime, steps_to_target_ci_low/high, rate_why]
    skipped: dict = field(default_factory=dict)  # batch size -> why scaling skipped it (trials.csv)
    critical_batch_size: float | None = None
    critical_batch_size_kind: str = "estimate"
    critical_batch_size_ci: tuple[float | None, float | None] = (None, None)
    s_min: float | None = None
    perfect_scaling_up_to: BatchSize | None = None  # the scaling study's verdict
    device: str = "device"
    trials: pd.DataFrame | None = None  # every trial (trials.csv): batch_size, learning_rate, outcome, steps_run
    first_step_overhead_s: float = 0.0  # a run's one-off first-step cost (throughput), added to predicted times
    # how much throughput's reference step changed between its first and last timing: a time per step from
    # another run differs at least that much, so every time-per-step interval is widened by it (ties)
    time_per_step_drift: float = 0.0
    # devices -> scaling efficiency that throughput measured (data parallel, devices > 1, only counts that ran)
    measured_efficiency: dict[int, float] = field(default_factory=dict)


@dataclass
class Selection:
    table: pd.DataFrame               # the decision table (decision.csv)
    chosen: dict                      # the chosen row
    runner_up: dict | None
    train_steps: Steps                # the step budget
    objective: str
    tied: list[BatchSize] = field(default_factory=list)  # sizes whose objective interval overlaps the fastest's (chosen included); [] if none


def is_finite(x) -> bool:
    return x is not None and isinstance(x, (int, float, np.integer, np.floating)) and math.isfinite(float(x))


def check_reasonable(target: Target) -> None:
    """The playbook's floor: the target must be clearly better than chance, else there is nothing to select."""
    if not target.better_than_chance:
        better = "above" if target.direction == "above" else "below"
        raise NotReasonable(
            f"workload target: received {target.metric} {target.value:g} (reached {target.direction} it), "
            f"but chance level is {target.chance_score:g}; allowed: a target clearly {better} {target.chance_score:g}. "
            f"A target no better than guessing is not 'reasonable performance': change the target in "
            f"workload.kwargs. select wrote no configuration.")


def fitted_steps(batch_size: float, s_min: float, critical_batch_size: float) -> float:
    """S(B) = S_min (1 + B_crit / B): perfect scaling far below B_crit, S_min far above."""
    return s_min * (1.0 + critical_batch_size / batch_size)


def loglog_interpolate(x: float, xs: list[float], ys: list[float]) -> float:
    """Straight line in log-log between the measured neighbours of x (xs increasing, x inside their range)."""
    return float(np.exp(np.interp(np.log(x), np.log(xs), np.log(ys))))


def devices_needed(batch_size: BatchSize, per_device_max: BatchSize | None, max_devices: int) -> int | None:
    """1 if B fits one device; else the data-parallel count ceil(B / per-device max), if allowed; else None."""
    if per_device_max is None:
        return None
    if batch_size <= per_device_max:
        return 1
    k = math.ceil(batch_size / per_device_max)
    return k if k <= max_devices else None


def scaling_efficiency(devices: int, measured: dict[int, float], assumed: float) -> tuple[float, str]:
    """(efficiency, "measured" or "assumed") for `devices` data-parallel devices: throughput's measurement of
    that device count where it exists; the assumed select.scaling_efficiency for counts it did not measure."""
    if devices in measured and is_finite(measured[devices]) and measured[devices] > 0:
        return float(measured[devices]), "measured"
    return assumed, "assumed"


def _time_per_step(throughput: pd.DataFrame) -> dict[int, float]:
    t = throughput
    if "time_per_step_s" in t:
        tps = t["time_per_step_s"]
    else:  # time per step = batch size / throughput
        tps = t["batch_size"] / t["examples_per_s"]
    return {int(b): float(v) for b, v in zip(t["batch_size"], tps) if is_finite(v) and v > 0}


def _time_per_step_interval(throughput: pd.DataFrame, drift: float = 0.0) -> dict[int, tuple[float, float]]:
    """Relative interval of time per step, (low/point, high/point), from the examples/s interval, widened
    both ways by `drift` (throughput's reference step, timed before and after: the run-to-run variation a
    single run's windows do not show)."""
    t = throughput
    if not {"examples_per_s", "examples_per_s_ci_low", "examples_per_s_ci_high"} <= set(t.columns):
        return {}
    return {int(b): (v / hi / (1 + drift), v / lo * (1 + drift))
            for b, v, lo, hi in zip(t["batch_size"], t["examples_per_s"], t["examples_per_s_ci_low"],
                                    t["examples_per_s_ci_high"])
            if all(is_finite(x) and x > 0 for x in (v, lo, hi))}


def _steps_interval(steps: pd.DataFrame) -> dict[int, tuple[float, float]]:
    """(low, high) steps to target per size from scaling's interval columns, where present and finite."""
    if not {"steps_to_target_ci_low", "steps_to_target_ci_high"} <= set(steps.columns):
        return {}
    return {int(b): (float(lo), float(hi)) for b, lo, hi in zip(steps["batch_size"], steps["steps_to_target_ci_low"],
                                                                steps["steps_to_target_ci_high"])
            if is_finite(lo) and is_finite(hi)}


def _lookup_time(batch_size: int, measured: dict[int, float]) -> tuple[float, str]:
    if batch_size in measured:
        return measured[batch_size], "measured"
    xs = sorted(measured)
    if xs and xs[0] < batch_size < xs[-1]:
        return loglog_interpolate(batch_size, xs, [measured[x] for x in xs]), "interpolated"
    return math.nan, "missing"


def decision_table(m: Measurements, settings: SelectSettings, study: Study) -> pd.DataFrame:
    """One row per batch size anyone measured: feasible?, regime, steps, time, resource, considered?, why."""
    probe = {int(b): (str(s), "" if pd.isna(r) else str(r))
             for b, s, r in zip(m.probe["batch_size"], m.probe["status"],
                                m.probe["reason"] if "reason" in m.probe else [""] * len(m.probe))}
    tps = _time_per_step(m.throughput)
    tps_rel = _time_per_step_interval(m.throughput, m.time_per_step_drift)
    steps_ci = _steps_interval(m.steps)
    regime = {int(b): str(r) for b, r in zip(m.throughput["batch_size"], m.throughput.get("regime", pd.Series(dtype=str)))
              if not pd.isna(r)} if "regime" in m.throughput else {}
    studied = {int(b): (float(s) if is_finite(s) else math.nan, float(lr) if is_finite(lr) else math.nan)
               for b, s, lr in zip(m.steps["batch_size"], m.steps["steps_to_target"], m.steps["best_learning_rate"])}
    n = len(m.steps)
    scaling_status = dict(zip(m.steps["batch_size"].astype(int), m.steps["status"] if "status" in m.steps else [""] * n))
    scaling_reason = {int(b): str(r) for b, r in zip(m.steps["batch_size"], m.steps["reason"] if "reason" in m.steps else [""] * n)
                      if isinstance(r, str) and r}
    rate_why = {int(b): str(r) for b, r in zip(m.steps["batch_size"], m.steps["rate_why"] if "rate_why" in m.steps else [""] * n)
                if isinstance(r, str) and r}
    scaling_regime = {int(b): str(r) for b, r in zip(m.steps["batch_size"], m.steps["regime"] if "regime" in m.steps else [""] * n)
                      if isinstance(r, str) and r}
    skipped = {**m.skipped, **{b: scaling_reason.get(b, "skipped") for b, st in scaling_status.items() if st in ("skipped", "missing")}}
    predicted = {int(b): float(s) for b, s, st in zip(m.steps["batch_size"], m.steps.get("predicted_steps_to_target", [math.nan] * n),
                                                      m.steps["status"] if "status" in m.steps else [""] * n)
                 if st == "predicted" and is_finite(s)}
    # sizes wave 3 did not refine and seed because they cannot win (scaling.adaptive): shown, never chosen
    coarse_only = {int(b): str(w) for b, c, w in zip(m.steps["batch_size"], m.steps["candidate"], m.steps["refine_why"])
                   if c is False or (isinstance(c, (bool, np.bool_)) and not c)} if {"candidate", "refine_why"} <= set(m.steps) else {}
    reached = sorted(b for b, (s, _) in studied.items() if math.isfinite(s))
    fit = is_finite(m.s_min) and is_finite(m.critical_batch_size) and m.critical_batch_size_kind == "estimate"
    sizes = sorted(set(probe) | set(tps) | set(studied))
    rows = []
    for b in sizes:
        status, probe_reason = probe.get(b, ("fits" if m.max_batch_size and b <= m.max_batch_size else "not probed", ""))
        fits_one = status == "fits"
        if fits_one:
            devices = 1
        elif status == "capped" or m.max_batch_size is None or b <= m.max_batch_size:
            devices = None  # unusable at any device count, or failed on one device below the per-device max
        else:
            devices = devices_needed(b, m.max_batch_size, settings.max_devices)
        shard = b if devices in (None, 1) else math.ceil(b / devices)
        time_s, time_source = _lookup_time(shard, tps)
        efficiency, efficiency_source = math.nan, ""
        if devices and devices > 1:
            efficiency, efficiency_source = scaling_efficiency(devices, m.measured_efficiency, settings.scaling_efficiency)
            time_s /= efficiency  # each device keeps only this fraction of its throughput
        steps, lr = studied.get(b, (math.nan, math.nan))
        steps_source = "measured" if math.isfinite(steps) else ("not reached" if b in studied and b not in skipped else "not studied")
        if steps_source == "not reached" and scaling_status.get(b) == "not_held":
            steps_source = "not held"
        if b in predicted:  # wave 2's predicted steps (scaling.adaptive): shown, never a candidate
            steps, steps_source = predicted[b], "predicted"
        if steps_source == "measured" and b in coarse_only:  # wave 3 found it cannot win
            steps_source = "cannot win"
        if not math.isfinite(steps) and reached and reached[0] < b < reached[-1] and steps_source == "not studied":
            if fit:
                steps, steps_source = fitted_steps(b, m.s_min, m.critical_batch_size), "fitted curve"
            else:
                steps, steps_source = loglog_interpolate(b, reached, [studied[r][0] for r in reached]), "interpolated"
        training_time = time_s * steps if devices else math.nan
        # the objective's interval, relative to its value: steps interval x time-per-step interval
        steps_lo, steps_hi = steps_ci.get(b, (steps, steps)) if steps_source == "measured" else (steps, steps)
        steps_lo, steps_hi = min(steps_lo, steps), max(steps_hi, steps)
        t_lo, t_hi = tps_rel.get(shard, (1.0, 1.0)) if time_source == "measured" else (1.0, 1.0)
        rel_lo = t_lo * steps_lo / steps if steps and math.isfinite(steps) else math.nan
        rel_hi = t_hi * steps_hi / steps if steps and math.isfinite(steps) else math.nan
        device_hours = (devices or math.nan) * training_time / 3600.0
        why = ""
        if devices is None:
            if status == "capped":
                why = f"not usable: {probe_reason or 'capped by the probe'}"
            elif m.max_batch_size is None:
                why = "no batch size fits one device (probe)"
            elif b <= m.max_batch_size:
                why = f"does not fit one device ({status}{': ' + probe_reason if probe_reason else ''})"
            elif settings.max_devices == 1:
                why = (f"does not fit one device ({status}{': ' + probe_reason if probe_reason else ''}; per-device max "
                       f"{m.max_batch_size}) and select.max_devices is 1")
            else:
                why = (f"needs {math.ceil(b / m.max_batch_size)} devices of at most {m.max_batch_size} each, "
                       f"more than select.max_devices ({settings.max_devices})")
        elif devices == 1 and m.largest_useful_batch_size and b > m.largest_useful_batch_size:
            why = f"fits but throughput stops rising after {m.largest_useful_batch_size}, so it is not considered"
        elif time_source == "missing":
            why = f"no throughput measurement at {shard}"
        elif steps_source == "predicted":
            why = f"not trained, so not a candidate: {scaling_reason.get(b, 'predicted by perfect scaling')}"
        elif steps_source == "cannot win":
            why = f"not a candidate (scaling.adaptive): {coarse_only[b]}"
        elif steps_source == "not held":
            why = f"no learning rate holds the target through its step budget ({scaling_reason.get(b, '')})"
        elif steps_source == "not reached":
            why = (f"never reached the target within scaling.max_steps ({study.max_steps}) at any learning rate tried"
                   + (f" ({scaling_reason[b]})" if b in scaling_reason else ""))
        elif steps_source in ("fitted curve", "interpolated"):
            why = f"steps {'from the fitted curve' if steps_source == 'fitted curve' else 'interpolated'} (not studied), so no tuned learning rate: not a candidate"
        elif steps_source == "not studied":
            why = (f"skipped by the scaling study: {skipped[b]}" if b in skipped else "not in the scaling study")
        elif not math.isfinite(lr):
            why = "no tuned learning rate recorded"
        rows.append({
            "batch_size": b, "probe_status": status, "fits_one_device": fits_one,
            "feasible": devices is not None, "devices": devices if devices else math.nan,
            "throughput_regime": regime.get(shard, ""), "time_per_step_s": time_s,
            "time_per_step_source": time_source, "scaling_efficiency": efficiency,
            "scaling_efficiency_source": efficiency_source, "steps_to_target": steps, "steps_source": steps_source,
            "scaling_regime": scaling_regime.get(b, ""),
            "interpolated": steps_source in ("fitted curve", "interpolated") or time_source == "interpolated",
            "best_learning_rate": lr, "training_time_s": training_time, "device_hours": device_hours,
            "resource_cost": device_hours * settings.device_cost_per_hour,
            "objective_low_ratio": rel_lo, "objective_high_ratio": rel_hi,
            "learning_rate_why": rate_why.get(b, ""),
            "considered": why == "", "chosen": False, "why": why,
        })
    return pd.DataFrame(rows)


def fmt_seconds(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


def fmt_objective(value: float, objective: str) -> str:
    return fmt_seconds(value) if objective == "time" else f"{value:.3g}"


OBJECTIVE_COLUMN = {"time": "training_time_s", "resource": "resource_cost"}
OBJECTIVE_WORDS = {"time": "training time", "resource": "resource use"}


def tied_with_fastest(table: pd.DataFrame, objective: str) -> list[int]:
    """Indexes of the considered rows whose objective interval overlaps the fastest row's (itself
    included), fewest devices, then the best value, first; one index if nothing overlaps it."""
    col = OBJECTIVE_COLUMN[objective]
    cand = table[table["considered"]].sort_values([col, "devices", "batch_size"])
    if cand.empty:
        return []
    value = cand[col]
    low = value * cand["objective_low_ratio"].fillna(1.0) if "objective_low_ratio" in cand else value
    high = value * cand["objective_high_ratio"].fillna(1.0) if "objective_high_ratio" in cand else value
    first = cand.index[0]
    tied = cand[(low <= high[first]) & (high >= low[first])]
    return list(tied.sort_values(["devices", col, "batch_size"]).index)


def choose(table: pd.DataFrame, objective: str) -> pd.DataFrame:
    """Mark the considered size minimising the objective; among sizes tied with it (overlapping
    intervals) the one with fewer devices, then the best value -- the tie is reported with every size in it."""
    col = OBJECTIVE_COLUMN[objective]
    table = table.copy()
    tied = tied_with_fastest(table, objective)
    if not tied:
        return table
    best = tied[0]
    cand = table[table["considered"]].sort_values([col, "devices", "batch_size"])
    best_value = table.at[best, col]
    table.loc[best, "chosen"] = True
    others = [i for i in cand.index if i != best]
    runner = others[0] if others else None
    words = OBJECTIVE_WORDS[objective]
    if len(tied) > 1:
        names = ", ".join(str(b) for b in sorted(int(table.at[i, "batch_size"]) for i in tied))
        why = (f"tied on {words} with {', '.join(str(b) for b in sorted(int(table.at[i, 'batch_size']) for i in tied if i != best))} "
               f"(intervals overlap: {names}); chosen by the rule fewer devices, then the best estimate: "
               f"{fmt_objective(best_value, objective)}")
    else:
        why = f"minimises {words}: {fmt_objective(best_value, objective)}"
        if runner is not None:
            why += f" vs {fmt_objective(table.at[runner, col], objective)} for {int(table.at[runner, 'batch_size'])}"
    table.loc[best, "why"] = why
    for i in others:
        ratio = table.at[i, col] / best_value if best_value > 0 else math.inf
        table.loc[i, "why"] = (f"{words} {fmt_objective(table.at[i, col], objective)}, {ratio:.2f}x the chosen"
                               + (" (tied: intervals overlap)" if i in tied else ""))
    return table


def _no_candidate_message(table: pd.DataFrame, target: Target, study: Study,
                          trials: pd.DataFrame | None = None) -> str:
    goal = f"{target.metric} {'>=' if target.direction == 'above' else '<='} {target.value:g}"
    measured = table[table["steps_source"] == "measured"]
    not_held = table[table["steps_source"] == "not held"]
    if measured.empty and len(not_held):
        whys = "; ".join(f"{int(r.batch_size)}: {r.why}" for r in not_held.itertuples())
        return (f"batch sizes reached the target ({goal}) but at none did every seed of a learning rate stay at it "
                f"through its step budget -- {whys}. Change one of: more seeds or a finer learning-rate search "
                f"(scaling.seeds, scaling.lr_points), a longer hold (scaling.hold_factor), a smaller "
                f"select.step_budget_margin, or an easier target. select wrote no configuration.")
    if measured.empty and not (table["steps_source"] == "not reached").any():
        whys = "; ".join(f"{int(r.batch_size)}: {r.why}" for r in table.itertuples() if r.why)
        return (f"the scaling study trained no batch size, so nothing reached the target ({goal}) -- {whys}. "
                f"Change the probe/throughput limits or scaling.batch_sizes. select wrote no configuration.")
    if measured.empty:  # why nothing reached it, and the one change that fits (stages/core/advice.py)
        sizes = table[table["steps_source"].isin(["measured", "not reached"])]["batch_size"].tolist()
        limits = advice.Limits("scaling.max_steps", study.max_steps, study.lr_min, study.lr_max,
                               batch_size_key="scaling.batch_sizes", model_key="workload.kwargs or family.candidates")
        if trials is None or trials.empty:  # no trial to tell why: every change that could help
            return (f"no batch size reached the target ({goal}) in the scaling study (sizes {sizes}, up to "
                    f"scaling.max_steps={study.max_steps} steps, learning rates {study.lr_min:g}..{study.lr_max:g}). "
                    f"Change one of: an easier target in workload.kwargs; a larger scaling.max_steps; a wider "
                    f"learning-rate range (scaling.lr_min, scaling.lr_max). select wrote no configuration.")
        why = advice.why_not_reached(advice.runs_of(trials.to_dict("records")),
                                     advice.Target(target.metric, target.value, target.direction), limits, "scaling trials")
        return (f"no batch size reached the target ({goal}) in the scaling study (sizes {sizes}): {why.message}. "
                f"select wrote no configuration.")
    whys = "; ".join(f"{int(r.batch_size)}: {r.why}" for r in measured.itertuples())
    return (f"batch sizes reached the target ({goal}) but none is usable -- {whys}. Change: select.max_devices, "
            f"the throughput/probe limits, or the scaling study's batch sizes. select wrote no configuration.")


def select(m: Measurements, settings: SelectSettings, target: Target, study: Study) -> Selection:
    """Check 'reasonable performance', build the decision table, choose, and set the step budget."""
    check_reasonable(target)
    table = choose(decision_table(m, settings, study), settings.objective)
    if not table["chosen"].any():
        raise NotReasonable(_no_candidate_message(table, target, study, m.trials))
    chosen = table[table["chosen"]].iloc[0].to_dict()
    col = OBJECTIVE_COLUMN[settings.objective]
    others = table[table["considered"] & ~table["chosen"]].sort_values([col, "devices", "batch_size"])
    runner_up = others.iloc[0].to_dict() if len(others) else None
    tied = tied_with_fastest(table, settings.objective)
    return Selection(table, chosen, runner_up, step_budget(chosen["steps_to_target"], settings.step_budget_margin),
                     settings.objective, sorted(int(table.at[i, "batch_size"]) for i in tied) if len(tied) > 1 else [])
