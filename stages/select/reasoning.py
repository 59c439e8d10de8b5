"""The reasoning behind `select`'s choice, in the playbook's terms and with every number
(reports/select/reasoning.md): reasonable performance, feasible sizes, throughput, steps to target,
training time / resource use, step budget, learning rate, and the decision table."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from stages.core import outputs as out
from stages.core.config import SelectSettings
from stages.select.decide import (OBJECTIVE_COLUMN, OBJECTIVE_WORDS, Measurements, Selection, Study, Target, is_finite,
                              fmt_objective, fmt_seconds)

def _sizes(values) -> str:
    values = [int(v) for v in values]
    return ", ".join(map(str, values)) if values else "none"


def _markdown_table(table: pd.DataFrame) -> str:
    cols = ["batch_size", "feasible", "devices", "throughput_regime", "time_per_step_s", "steps_to_target",
            "steps_source", "training_time_s", "resource_cost", "chosen", "why"]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"

    def cell(v) -> str:
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if isinstance(v, (float, np.floating)):
            return "" if not math.isfinite(v) else (f"{int(v)}" if float(v).is_integer() else f"{v:.3g}")
        return str(v).replace("|", "/")

    return head + "".join("| " + " | ".join(cell(r[c]) for c in cols) + " |\n" for _, r in table.iterrows())


def reasoning_markdown(sel: Selection, m: Measurements, target: Target, settings: SelectSettings,
                       study: Study, optimizer: dict) -> str:
    """The decision explained in the playbook's terms, every claim with its number."""
    t, c = sel.table, sel.chosen
    b = int(c["batch_size"])
    words = OBJECTIVE_WORDS[sel.objective]
    fixed = ", ".join(f"{k} {v}" for k, v in optimizer.items() if k != "name")
    devices = int(c["devices"])
    out = [f"# Initial configuration: batch size {b}\n",
           f"**Batch size {b}, learning rate {c['best_learning_rate']:.3g}, {sel.train_steps} training steps, "
           f"{optimizer['name']} ({fixed}), {devices} device{'s' if devices > 1 else ''}.** Objective: {words}. "
           f"Expected training time for the step budget: {fmt_seconds(c['time_per_step_s'] * sel.train_steps)} "
           f"({fmt_seconds(c['training_time_s'])} to reach the target).\n"]

    out.append("## Reasonable performance\n")
    goal = f"{target.metric} {'>=' if target.direction == 'above' else '<='} {target.value:g}"
    out.append(f"The target, {goal}, is clearly better than chance ({target.chance_score:g}), so a configuration "
               f"that reaches it performs reasonably.\n")

    out.append("## Feasible batch sizes (probe)\n")
    fits = t[t["fits_one_device"]]["batch_size"]
    no_fit = t[~t["fits_one_device"] & (t["probe_status"] != "not probed")]
    line = f"Per-device maximum: {m.max_batch_size} on {m.device}; sizes that fit one device: {_sizes(fits)}."
    if len(no_fit):
        line += " Do not fit: " + ", ".join(f"{int(r.batch_size)} ({r.probe_status})" for r in no_fit.itertuples()) + "."
    multi = t[t["feasible"] & ~t["fits_one_device"]]
    if len(multi):
        used = ", ".join(f"{int(r.batch_size)} on {int(r.devices)} devices at {r.scaling_efficiency:.0%} ({r.scaling_efficiency_source})"
                         for r in multi.itertuples())
        line += (f" With up to {settings.max_devices} devices (select.max_devices), data parallelism makes "
                 f"{_sizes(multi['batch_size'])} feasible: {used} scaling efficiency -- measured by throughput "
                 f"(throughput.devices) where it timed that device count, else the assumed select.scaling_efficiency "
                 f"({settings.scaling_efficiency:.0%}).")
    out.append(line + "\n")

    out.append("## Throughput\n")
    saturated = t[t["why"].str.startswith("fits but throughput stops rising")]
    if len(saturated):
        out.append(f"{_sizes(saturated['batch_size'])} fit{'s' if len(saturated) == 1 else ''} but throughput stops rising "
                   f"after {m.largest_useful_batch_size}, so {'it is' if len(saturated) == 1 else 'they are'} not considered: "
                   f"there a larger batch only makes each step slower.\n")
    else:
        out.append(f"Throughput keeps rising up to the largest feasible size"
                   f"{f' ({m.largest_useful_batch_size})' if m.largest_useful_batch_size else ''}.\n")
    measured_t = t[t["time_per_step_source"] == "measured"]
    if len(measured_t):
        lo, hi = measured_t.loc[measured_t["time_per_step_s"].idxmin()], measured_t.loc[measured_t["time_per_step_s"].idxmax()]
        out.append(f"Time per step ranges from {lo['time_per_step_s']:.3g} s (batch {int(lo['batch_size'])}) to "
                   f"{hi['time_per_step_s']:.3g} s (batch {int(hi['batch_size'])}).\n")

    out.append("## Steps to target (scaling study, learning rate retuned per size)\n")
    meas = t[t["steps_source"] == "measured"].sort_values("batch_size")
    # the change per doubling, so studied sizes further apart than 2x compare with perfect scaling's x0.5
    pairs = [(int(a.batch_size), int(n.batch_size),
              (n.steps_to_target / a.steps_to_target) ** (1 / math.log2(n.batch_size / a.batch_size)))
             for a, n in zip(meas.itertuples(), meas.iloc[1:].itertuples())]
    line = "Steps to target: " + ", ".join(f"{int(r.batch_size)}: {r.steps_to_target:.0f}" for r in meas.itertuples()) + "."
    if pairs:
        line += (" Per doubling of the batch the steps change by " + ", ".join(f"x{r:.2f} ({a}->{n})" for a, n, r in pairs)
                 + "; x0.5 is perfect scaling, x1 no gain.")
    out.append(line + "\n")
    if m.perfect_scaling_up_to:
        out.append(f"The scaling study places sizes up to {m.perfect_scaling_up_to} in the perfect-scaling regime "
                   f"(doubling the batch nearly halves the steps).\n")
    if is_finite(m.critical_batch_size):
        lo, hi = m.critical_batch_size_ci
        ci = f" (95% CI {lo:.3g}-{hi:.3g})" if is_finite(lo) and is_finite(hi) else ""
        kind = {"lower_bound": "at least", "upper_bound": "at most"}.get(m.critical_batch_size_kind, "about")
        s_min = f", S_min about {m.s_min:.3g} steps" if is_finite(m.s_min) else ""
        out.append(f"B_crit is {kind} {m.critical_batch_size:.3g}{ci}{s_min}: below B_crit doubling the batch nearly "
                   f"halves the steps (perfect scaling); above it returns diminish.\n")
    interp = t[t["steps_source"].isin(["fitted curve", "interpolated"])]
    if len(interp):
        how = "the fitted curve S(B) = S_min (1 + B_crit / B)" if (interp["steps_source"] == "fitted curve").any() \
            else "log-log interpolation between measured neighbours"
        out.append(f"{_sizes(interp['batch_size'])} were not studied: their steps come from {how} (marked interpolated); "
                   f"without a tuned learning rate they are shown but not chosen.\n")
        col = OBJECTIVE_COLUMN[sel.objective]
        better = interp[interp["feasible"] & (interp[col] < c[col])]
        if len(better):
            out.append(f"By that estimate {_sizes(better['batch_size'])} could beat the choice; add "
                       f"{'it' if len(better) == 1 else 'them'} to scaling.batch_sizes to measure.\n")
    predicted = t[t["steps_source"] == "predicted"]
    if len(predicted):
        out.append(f"{_sizes(predicted['batch_size'])} were predicted, not trained (scaling.adaptive): their steps ("
                   + ", ".join(f"{int(r.batch_size)}: {r.steps_to_target:.0f}" for r in predicted.itertuples())
                   + ") are shown but never chosen -- the sizes around them confirm perfect scaling, where a smaller "
                     "batch trains no faster and no cheaper, or are too slow for any size between them to win "
                     f"({out.SCALING_NOTES.path} gives each one's reason).\n")
    cannot = t[t["steps_source"] == "cannot win"]
    if len(cannot):
        out.append(f"{_sizes(cannot['batch_size'])} kept the coarse search's answer (scaling.adaptive): too slow to win "
                   f"by more than scaling.contender_factor, so neither refined nor rerun with seeds, and never chosen "
                   f"({out.SCALING_CONTENDERS.path}).\n")
    not_held = t[t["steps_source"] == "not held"]
    for r in not_held.itertuples():
        out.append(f"{int(r.batch_size)} reached the target, but no learning rate held it through its step budget: "
                   f"{r.learning_rate_why}.\n")
    not_reached = t[t["steps_source"] == "not reached"]
    if len(not_reached):
        out.append(f"{_sizes(not_reached['batch_size'])} never reached the target within {study.max_steps} steps.\n")

    out.append(f"## {words.capitalize()}\n")
    col = OBJECTIVE_COLUMN[sel.objective]
    if sel.tied:
        rows = t.set_index("batch_size")

        def span(size: int) -> str:
            r = rows.loc[size]
            return (f"{size}: {fmt_objective(r[col], sel.objective)} ({fmt_objective(r[col] * r['objective_low_ratio'], sel.objective)}"
                    f"-{fmt_objective(r[col] * r['objective_high_ratio'], sel.objective)})")

        line = (f"**Tie.** The {words} intervals of batch sizes {_sizes(sel.tied)} overlap the fastest one's "
                f"({'; '.join(span(size) for size in sel.tied)}; steps interval x time-per-step interval): they "
                f"are equal within measurement noise (time per step counted with the drift throughput measured "
                f"between its first and last timing, as a rerun's would differ). Rule for ties: fewer devices, then "
                f"the best estimate, so {b}; any of the tied sizes is as good a choice within what was measured")
    else:
        line = f"{b} minimises {words}: {fmt_objective(c[col], sel.objective)}"
        if sel.runner_up:
            r = sel.runner_up
            line += f" vs {fmt_objective(r[col], sel.objective)} for {int(r['batch_size'])}"
    line += (f". Training time = time per step x steps to target = {c['time_per_step_s']:.3g} s x "
             f"{c['steps_to_target']:.0f} = {fmt_seconds(c['training_time_s'])}; resource use = devices x training time "
             f"x {settings.device_cost_per_hour:g} per device-hour = {c['resource_cost']:.3g}.")
    out.append(line + "\n")

    out.append("## Step budget\n")
    out.append(f"{c['steps_to_target']:.0f} steps to target x margin {settings.step_budget_margin:g} "
               f"(select.step_budget_margin) = {c['steps_to_target'] * settings.step_budget_margin:.4g}, rounded up to "
               f"{sel.train_steps} steps. A budget fixed this early is hard to change later (a schedule gets tuned to it), "
               f"so it stays close to what the target needs.\n")

    out.append("## Learning rate and optimizer\n")
    lr = c["best_learning_rate"]
    line = (f"Learning rate {lr:.3g} at batch size {b}, from the scaling search ({study.lr_min:g}..{study.lr_max:g}). "
            f"A rate counts only if every seed reaches the target and stays there through the step budget; among "
            f"those within the best one's seed spread, the smaller rate. Here: {c.get('learning_rate_why') or 'no check recorded'}. "
            f"{optimizer['name']} keeps {fixed} fixed: only the learning rate was tuned.")
    if math.isclose(lr, study.lr_min, rel_tol=1e-6) or math.isclose(lr, study.lr_max, rel_tol=1e-6):
        line += " It lies at the edge of the searched range: widen scaling.lr_min/scaling.lr_max to check for a better one."
    out.append(line + "\n")

    out.append("## Decision table\n")
    out.append(_markdown_table(t))
    return "\n".join(out)
