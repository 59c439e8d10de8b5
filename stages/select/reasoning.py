"""The reasoning behind `select`'s choice, in the playbook's terms and with every number
(reports/select/reasoning.md): reasonable performance, feasible sizes, throughput, steps to target,
training time / resource use, step budget, learning rate, and the decision table."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from stages.core import outputs
from stages.core.config import SelectSettings
from stages.core.units import Units, plural
from stages.select.decide import (OBJECTIVE_COLUMN, OBJECTIVE_WORDS, Measurements, Selection, Study, Target, is_finite,
                              fmt_objective, fmt_seconds)

def _sizes(values) -> str:
    values = [int(v) for v in values]
    return ", ".join(map(str, values)) if values else "none"


def steps_per_doubling(table: pd.DataFrame) -> dict[int, float]:
    """Each trained size -> the change of its steps per doubling towards the nearest trained neighbour (the
    larger one for the smallest size, the smaller one for the largest)."""
    meas = table[table["steps_source"] == "measured"].sort_values("batch_size")
    sizes, steps = [int(x) for x in meas["batch_size"]], [float(x) for x in meas["steps_to_target"]]
    out = {}
    for i, b in enumerate(sizes):
        j = i + 1 if i + 1 < len(sizes) else i - 1
        if 0 <= j < len(sizes) and j != i:
            lo, hi = sorted((i, j))
            out[b] = (steps[hi] / steps[lo]) ** (1 / math.log2(sizes[hi] / sizes[lo]))
    return out


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


SCHEDULE = "constant (no warmup, no decay)"  # what every trial of the study and the baseline train with


def _ratio_list(rows: pd.DataFrame) -> str:
    return ", ".join(f"{int(r.doubling_from)}->{int(r.batch_size)} x{r.doubling_ratio:.2f}" for r in rows.itertuples())


def throughput_sentence(throughput: pd.DataFrame, largest_useful: int | None, units: Units = Units()) -> str:
    """What throughput did as the batch doubled, from the same rows as throughput.csv's table: examples/s per
    size, and the doublings by their regime (decided on each ratio's interval, never on its point value) --
    rising only where every doubling clearly raised it, flat within noise where none could tell, falling
    where a doubling clearly lowered it -- and which sizes stay candidates."""
    t = throughput.sort_values("batch_size")
    if "examples_per_s" in t:
        rate = t["examples_per_s"]
    elif "time_per_step_s" in t:
        rate = t["batch_size"] / t["time_per_step_s"]
    else:
        return "throughput.csv holds no examples/s."
    known = [(int(b), float(v)) for b, v in zip(t["batch_size"], rate) if is_finite(v) and v > 0]
    if not known:
        return "No batch size was timed."
    line = f"{plural(units.example).capitalize()} per second by batch size: " + ", ".join(
        f"{b}: {units.rate(v)}" for b, v in known) + "."
    if len(known) < 2:
        return line + " One size alone was timed: nothing to compare."
    has_ratio = {"regime", "doubling_ratio", "doubling_from"} <= set(t.columns)
    d = t[t["regime"].isin(["scaling", "partial", "saturated", "inconclusive"])] if "regime" in t else t.iloc[0:0]
    if has_ratio:
        d = d[d["doubling_ratio"].map(is_finite) & d["doubling_from"].map(is_finite)]
    rising, unclear = d[d["regime"].isin(["scaling", "partial"])], d[d["regime"] == "inconclusive"]
    saturated = d[d["regime"] == "saturated"]
    falling = saturated[saturated["doubling_ratio_high"] < 1] if "doubling_ratio_high" in saturated else saturated.iloc[0:0]
    lowest, highest = min(v for _, v in known), max(v for _, v in known)
    if d.empty:
        return line + " The doublings were not classified (throughput.csv has no regime)."
    parts = []
    if len(rising) == len(d):
        parts.append(f"Every doubling clearly raised throughput{f' ({_ratio_list(rising)})' if has_ratio else ''}, "
                     f"up to the largest size timed, {known[-1][0]}.")
    elif len(unclear) == len(d):
        parts.append(f"Throughput is flat within noise: {units.rate(lowest)} to {units.rate(highest)} over "
                     f"{known[0][0]}-{known[-1][0]}, and no doubling clearly raised it or clearly did not "
                     f"(every interval straddles the threshold{f'; {_ratio_list(unclear)}' if has_ratio else ''}).")
    else:
        def which(rows: pd.DataFrame) -> str:
            return _ratio_list(rows) if has_ratio else _sizes(rows["batch_size"])

        if len(rising):
            parts.append(f"Doubling clearly raised throughput at {which(rising)}.")
        if len(unclear):
            parts.append(f"Too noisy to tell at {which(unclear)} (inconclusive).")
        if len(falling):
            parts.append(f"Throughput falls at {which(falling)}: there a larger batch trains fewer "
                         f"{plural(units.example)} per second.")
        rest = saturated[~saturated.index.isin(falling.index)]
        if len(rest):
            parts.append(f"It stops rising at {which(rest)} (clearly short of the threshold).")
    if largest_useful:
        if len(d) and len(unclear) == len(d):
            parts.append(f"Without evidence that a larger batch is slower, the playbook keeps it: sizes up to "
                         f"{largest_useful} stay candidates.")
        else:
            parts.append(f"Sizes up to {largest_useful} stay candidates (throughput: largest_useful_batch_size).")
    return line + " " + " ".join(parts)


def edge_of_study(table: pd.DataFrame,
                  steps_per_doubling: dict[int, float] | None = None) -> tuple[str, list[int], str] | None:
    """A choice at the smallest or largest size the scaling study trained, with feasible sizes beyond it
    that it did not study: ('smallest' or 'largest', the nearest such sizes to add -- at most two --, why
    they could win). None when the choice has studied sizes on both sides or nothing feasible lies beyond.
    `steps_per_doubling`: the chosen size -> the steps' change per doubling just beside it."""
    chosen = table[table["chosen"]]
    if chosen.empty:
        return None
    b = int(chosen["batch_size"].iloc[0])
    in_study = table["steps_source"].isin(["measured", "predicted", "not held", "not reached"])
    studied = sorted(int(x) for x in table[in_study]["batch_size"])
    fresh = table[table["feasible"] & (table["steps_source"] == "not studied")]
    ratio = (steps_per_doubling or {}).get(b)
    if studied and b == studied[0]:
        below = sorted((int(x) for x in fresh["batch_size"] if x < b), reverse=True)[:2]
        if below:
            why = ("a smaller batch needs more steps but each step is cheaper" if ratio is None else
                   f"steps fell only x{ratio:.2f} per doubling beside it (x0.5 is perfect scaling), so a smaller batch, "
                   f"each step cheaper, may reach the target sooner" if ratio > 0.6 else
                   f"steps nearly halve per doubling beside it (x{ratio:.2f}), so a smaller batch is unlikely to be faster")
            return "smallest", below, why
    if studied and b == studied[-1]:
        why_not = dict(zip(fresh["batch_size"].astype(int), fresh["why"].astype(str)))
        above = sorted(x for x, why in why_not.items() if x > b and not why.startswith("fits but throughput stops"))[:2]
        if above:
            return "largest", above, "they fit and throughput does not rule them out, so a larger batch may train faster"
    return None


def edge_sentence(edge: tuple[str, list[int], str] | None, b: int) -> str:
    if edge is None:
        return ""
    side, sizes, why = edge
    names = " and ".join(map(str, sizes))
    return (f"**At the edge of the study.** The choice, {b}, is the {side} batch size the scaling study trained; "
            f"{names} {'fit' if len(sizes) > 1 else 'fits'} but {'were' if len(sizes) > 1 else 'was'} not studied, and "
            f"{why}. Add {names} to scaling.batch_sizes to check.")


def reasoning_markdown(sel: Selection, m: Measurements, target: Target, settings: SelectSettings,
                       study: Study, optimizer: dict, units: Units = Units(), seeds: dict | None = None) -> str:
    """The decision explained in the playbook's terms, every claim with its number. `units`: the workload's
    (stages/core/units.py); `seeds`: the chosen rate's steps per seed and the seed the baseline retraces."""
    t, c = sel.table, sel.chosen
    b = int(c["batch_size"])
    words = OBJECTIVE_WORDS[sel.objective]
    fixed = ", ".join(f"{k} {v}" for k, v in optimizer.items() if k != "name")
    devices = int(c["devices"])
    size = f"Batch size {units.batch(b)}" if units.declared else f"Batch size {b}"
    out = [f"# Initial configuration: batch size {b}\n",
           f"**{size}, learning rate {c['best_learning_rate']:.3g} held {SCHEDULE}, {sel.train_steps} training steps, "
           f"{optimizer['name']} ({fixed}), {devices} device{'s' if devices > 1 else ''}.** Objective: {words}. "
           f"Expected training time for the step budget: {fmt_seconds(c['time_per_step_s'] * sel.train_steps)} "
           f"({fmt_seconds(c['training_time_s'])} to reach the target).\n"]
    if units.declared or units.train_examples:
        steps = float(c["steps_to_target"])
        out.append(f"To the target: {steps:.0f} steps x {b} = {units.amount(steps * b)}, at "
                   f"{units.rate(b / c['time_per_step_s'])}; the whole budget, {sel.train_steps} steps, is "
                   f"{units.amount(sel.train_steps * b)}.\n")
    edge = edge_of_study(t, steps_per_doubling(t))
    if edge:
        out.append(edge_sentence(edge, b) + "\n")

    out.append("## Reasonable performance\n")
    goal = f"{target.metric} {'>=' if target.direction == 'above' else '<='} {units.metric(target.metric, target.value)}"
    chance = units.metric(target.metric, target.chance_score)
    explained = f": {units.chance_explanation}" if units.chance_explanation else ""
    out.append(f"The target, {goal}, is clearly better than chance ({chance}{explained}), so a configuration "
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
    out.append(throughput_sentence(m.throughput, m.largest_useful_batch_size, units) + "\n")
    saturated = t[t["why"].str.startswith("fits but throughput stops rising")]
    if len(saturated):
        out.append(f"{_sizes(saturated['batch_size'])} fit{'s' if len(saturated) == 1 else ''} but throughput stops rising "
                   f"after {m.largest_useful_batch_size}, so {'it is' if len(saturated) == 1 else 'they are'} not considered: "
                   f"there a larger batch only makes each step slower.\n")
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
                     f"({outputs.SCALING_NOTES.path} gives each one's reason).\n")
    cannot = t[t["steps_source"] == "cannot win"]
    if len(cannot):
        out.append(f"{_sizes(cannot['batch_size'])} kept the coarse search's answer (scaling.adaptive): too slow to win "
                   f"by more than scaling.contender_factor, so neither refined nor rerun with seeds, and never chosen "
                   f"({outputs.SCALING_CONTENDERS.path}).\n")
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
    line = (f"Learning rate {lr:.3g} at batch size {b}, held {SCHEDULE} through the whole budget as in every trial of "
            f"the study: a schedule (warmup, decay) changes the steps to target, so retune it with one. "
            f"From the scaling search ({study.lr_min:g}..{study.lr_max:g}). "
            f"A rate counts only if every seed reaches the target and stays there through the step budget; among "
            f"those within the best one's seed spread, the smaller rate. Here: {c.get('learning_rate_why') or 'no check recorded'}. "
            f"{optimizer['name']} keeps {fixed} fixed: only the learning rate was tuned.")
    if math.isclose(lr, study.lr_min, rel_tol=1e-6) or math.isclose(lr, study.lr_max, rel_tol=1e-6):
        line += " It lies at the edge of the searched range: widen scaling.lr_min/scaling.lr_max to check for a better one."
    out.append(line + "\n")
    if seeds and seeds.get("steps"):
        per_seed = ", ".join(f"seed {k}: {v}" for k, v in seeds["steps"].items())
        how = (f"their median, {c['steps_to_target']:.0f}" if len(seeds["steps"]) > 1 else
               "that one run's: with one seed the spread over seeds is unknown")
        out.append(f"Steps to target of this rate: {per_seed}; the prediction is {how}. The baseline trains seed "
                   f"{seeds['seed']}, {'the median run' if seeds.get('median') else 'runtime.seed'}, on the same batches "
                   f"in the same order as that trial, so its steps should match it"
                   + ("; a run with another seed may land anywhere in the seeds' range.\n" if len(seeds["steps"]) > 1 else ".\n"))

    out.append("## Decision table\n")
    out.append(_markdown_table(t))
    return "\n".join(out)
