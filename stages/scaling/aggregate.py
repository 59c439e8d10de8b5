"""`python -m stages.scaling summarize`: the scaling study's aggregate stage.

Reads reports/scaling/trials/bs_{B}.csv for every B in scaling.batch_sizes and writes
reports/scaling/trials.csv (every trial, skipped sizes included), steps_to_target.csv (per size: best
learning rate, steps to target over seeds with their spread, examples, regime, learning-rate
heuristics), curves.csv (the learning curves of every seed of each rate that reached the target;
curves.png draws the best rate's at the search seed), noise_scale.csv (the gradient-noise-scale
run), metrics.json (B_crit with its kind and interval, S_min, the search cost: search_cost_ratio and
trials), diagnostics.json (E_min, noise scale, compute saved, trials by phase, seconds, and the study's
limits -- batch sizes, max_steps, learning-rate range tried -- that select names), notes.md
(how sure B_crit is and what would tighten it, the fit's and the noise-scale run's conclusions,
in words) and four PNGs. Every per-size file is
checked before any work: a missing, cut-off or inconsistent one stops with the job that rewrites it.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from stages.core import advice, io
from stages.core import outputs as out
from stages.core import log
from stages.core.context import Context, setup
from stages.core.types import NOT_TRAINED
from stages.pipeline.declaration import load_stage_params
from stages.scaling.noise_scale import choose_sizes, describe, measure_noise_scale
from stages.core.optim import fixed_values
from stages.scaling.fit import FitError, ScalingFit, fit_critical_batch_size
from stages.scaling.plots import curves_figure, examples_figure, fmt, learning_rate_figure, steps_figure
from stages.scaling.confidence import confidence_text
from stages.scaling.tables import (PHASES, TRIAL_COLUMNS, add_fit_columns, compute_saved, fit_rows,
                                    learning_rate_exponent, per_size_table, search_cost_ratio)

STAGE = "scaling"  # the log label


def noise_scale(ctx: Context, table: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """One short run at the big size (its best rate, else the nearest studied size's) to the target."""
    sizes, why = choose_sizes(ctx.params.scaling.noise_scale_batch_sizes,  # only sizes the study ran (probe-feasible)
                              [int(b) for b in table[table["status"].isin(["reached", "not_reached", "boundary"])]["batch_size"]],
                              [int(b) for b in table[table["status"] == "reached"]["batch_size"]],
                              ctx.workload.num_train_examples)
    if sizes is None:
        log.info(STAGE, f"gradient noise scale not measured: {why}")
        return {"gradient_noise_scale": None, "gradient_noise_scale_reason": f"Not measured: {why}."}, pd.DataFrame()
    small, big = sizes
    log.info(STAGE, f"gradient noise scale: training at batch size {big} with chunks of {small} ({why})")
    reached = table[table["status"] == "reached"]
    if reached.empty:  # (configured sizes) the run needs a learning rate that reached the target
        return {"gradient_noise_scale": None, "gradient_noise_scale_reason": "Not measured: no batch size reached the "
                "target, so no learning rate to train with."}, pd.DataFrame()
    nearest = reached.iloc[(reached["batch_size"].map(lambda b: abs(math.log(b / big)))).argsort().iloc[0]]
    lr = float(nearest["best_learning_rate"])
    result = measure_noise_scale(ctx.workload, ctx.params.optimizer, lr, small, big, ctx.params.runtime.seed,
                                 ctx.device, ctx.params.scaling.max_steps)
    log.info(STAGE, f"gradient noise scale {fmt(result.gradient_noise_scale)} from batch sizes {small} and {big} "
                    f"(lr {lr:.4g}, {result.steps_run} steps: {result.reason})")
    return ({"gradient_noise_scale": result.gradient_noise_scale, "gradient_noise_scale_batch_sizes": [small, big],
             "gradient_noise_scale_learning_rate": lr, "gradient_noise_scale_steps": result.steps_run,
             "gradient_noise_scale_reason": describe(result, why)}, pd.DataFrame(result.rows))


def _fit(rows: pd.DataFrame, bootstrap: int, seed: int, resolution: float) -> tuple[ScalingFit | None, dict]:
    """The fit, its interval covering the seed spread and each size's remaining uncertainty about the
    optimum's steps: the rate's bracket ratio times one evaluation interval."""
    try:
        fit = fit_critical_batch_size(rows["batch_size"], rows["steps_to_target"], rows["seed"],
                                      lr_resolution=rows["lr_resolution_ratio"].astype(float) * (1 + resolution),
                                      bootstrap=bootstrap, rng_seed=seed)
    except FitError as e:
        return None, {"critical_batch_size": None, "critical_batch_size_kind": "undetermined",
                      "critical_batch_size_message": str(e), "ci_low": None, "ci_high": None,
                      "s_min": None, "e_min": None}
    return fit, {"critical_batch_size": fit.critical_batch_size, "critical_batch_size_kind": fit.kind,
                 "critical_batch_size_message": fit.message, "ci_low": fit.ci_low, "ci_high": fit.ci_high,
                 "confidence": fit.confidence, "s_min": fit.s_min, "e_min": fit.e_min}


def learning_rate_range(trials: pd.DataFrame) -> dict:
    """The smallest and largest learning rates the study tried (None if every size was skipped)."""
    rates = trials.loc[~trials["outcome"].isin(NOT_TRAINED), "learning_rate"].dropna()
    return {"learning_rate_min_tried": float(rates.min()) if len(rates) else None,
            "learning_rate_max_tried": float(rates.max()) if len(rates) else None}


def _curves_of(curve_frames: list[pd.DataFrame], rates: set[tuple[int, float]]) -> pd.DataFrame:
    """The learning-curve rows whose (batch size, learning rate) is one of `rates`."""
    frames = [f for f in curve_frames if not f.empty]
    if not frames or not rates:
        return pd.DataFrame(columns=list(out.SCALING_TRIAL_CURVES.columns))
    curves = pd.concat(frames, ignore_index=True)
    mask = [(int(b), float(lr)) in rates for b, lr in zip(curves["batch_size"], curves["learning_rate"])]
    return curves[mask].reset_index(drop=True)


def best_curves(curve_frames: list[pd.DataFrame], table: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The learning curve of each size's best learning rate at the search seed."""
    best = table[table["status"] == "reached"]
    curves = _curves_of(curve_frames, set(zip(best["batch_size"].astype(int), best["best_learning_rate"].astype(float))))
    return curves[curves["seed"] == seed].reset_index(drop=True)


def reached_curves(curve_frames: list[pd.DataFrame], trials: pd.DataFrame) -> pd.DataFrame:
    """The learning curves of every trial (all seeds) of each rate that reached the target at least
    once: select checks from them that a rate's every seed stays at the target through the budget."""
    reached = trials[trials["outcome"] == "reached"]
    return _curves_of(curve_frames, set(zip(reached["batch_size"].astype(int), reached["learning_rate"].astype(float))))


def scaling_limits(p, trials: pd.DataFrame) -> advice.Limits:
    """The settings the scaling study's advice names (stages/core/advice.py), the rates as tried."""
    tried = learning_rate_range(trials)
    return advice.Limits("scaling.max_steps", p.scaling.max_steps, tried["learning_rate_min_tried"],
                         tried["learning_rate_max_tried"],
                         batch_size_key="scaling.batch_sizes",
                         model_key="workload.kwargs" if p.family.candidates is None else "family.candidates")


def prediction_savings(trials: pd.DataFrame, table: pd.DataFrame) -> dict:
    """What wave 2's predicted sizes saved: each would have cost about the examples the
    smallest measured size's search spent (in perfect scaling examples to target do not change with
    the batch size) and at least its seconds (a smaller batch needs no less time per example)."""
    predicted = [int(b) for b in table.loc[table["status"] == "predicted", "batch_size"]]
    measured = table[table["status"] == "reached"]
    if not predicted or measured.empty:
        return {"predicted_batch_sizes": predicted, "predicted_examples_saved": None, "predicted_seconds_saved": None}
    smallest = int(measured["batch_size"].min())
    spent = trials[(trials["batch_size"] == smallest) & ~trials["outcome"].isin(NOT_TRAINED)]
    return {"predicted_batch_sizes": predicted, "predicted_from_batch_size": smallest,
            "predicted_examples_saved": int(spent["examples_run"].sum()) * len(predicted),
            "predicted_seconds_saved": float(spent["seconds"].sum()) * len(predicted)}


def predicted_text(savings: dict, spent: int, table: pd.DataFrame | None = None) -> str | None:
    """The report's words on the predicted sizes (None: nothing was predicted): each with its reason
    (wave2.json: perfect scaling confirmed around it, or it cannot win), and what not training them saved."""
    sizes = savings["predicted_batch_sizes"]
    if not sizes:
        return None
    which = f"Batch size {sizes[0]} was" if len(sizes) == 1 else f"Batch sizes {', '.join(map(str, sizes))} were"
    text = (f"{which} predicted, not trained (scaling.adaptive): their steps to target are drawn hollow in the "
            f"figures; B_crit's fit and interval use the measured sizes only, and select never chooses them.")
    if table is not None:
        reasons = table[table["status"] == "predicted"]
        text += "".join(f"\n\n- bs {int(r.batch_size)}: {r.reason}" for r in reasons.itertuples())
    if savings["predicted_examples_saved"] is not None:
        examples, secs = savings["predicted_examples_saved"], savings["predicted_seconds_saved"]
        text += (f"\n\nNot training them saved about {examples:,} examples ({examples / max(spent + examples, 1):.0%} "
                 f"of what the study would have spent) and at least {secs:.0f} s of training "
                 f"(each as much as bs {savings['predicted_from_batch_size']}'s search cost). Set scaling.adaptive: "
                 f"false to train every size.")
    return text


def refinement_gain(trials: pd.DataFrame, table: pd.DataFrame) -> float | None:
    """How much refinement lowered a size's steps: over the refined sizes, the largest ratio of the coarse
    search's best steps to the refined best rate's at the search seed (>= 1; None where none was refined)."""
    gains = []
    for r in table[table["refined"].eq(True) & (table["status"] == "reached")].itertuples():
        ran = trials[(trials["batch_size"] == r.batch_size) & ~trials["outcome"].isin(NOT_TRAINED)]
        coarse = ran[ran["phase"].isin(["coarse", "widen"])]["steps_to_target"].dropna()
        refined = ran[(ran["learning_rate"] == r.best_learning_rate) & (ran["phase"] != "seed")]["steps_to_target"].dropna()
        if len(coarse) and len(refined):
            gains.append(max(1.0, float(coarse.min()) / float(refined.min())))
    return max(gains) if gains else None


def with_refinement(table: pd.DataFrame, trials: pd.DataFrame, contenders: dict) -> pd.DataFrame:
    """The per-size table with what wave 3 did at each size (`refined`, `refine_why`: contenders.json),
    and a coarse answer's interval as wide as its search left it: below, by the most any refined size's
    steps fell when refined (a refined rate may need that much fewer steps); its seed spread is the one
    the refined sizes measured (pooled, per_size_table)."""
    table = table.copy()
    table["refined"] = table["batch_size"].map(lambda b: contenders.get(str(int(b)), {}).get("refine"))
    table["candidate"] = table["batch_size"].map(lambda b: contenders.get(str(int(b)), {}).get("candidate"))
    table["refine_why"] = table["batch_size"].map(lambda b: contenders.get(str(int(b)), {}).get("why", ""))
    gain = refinement_gain(trials, table)
    coarse = ~table["refined"].eq(True) & (table["status"] == "reached")
    if gain is not None and coarse.any():
        table.loc[coarse, "steps_to_target_ci_low"] = table.loc[coarse, "steps_to_target_ci_low"] / gain
    table["refinement_gain"] = gain
    return table


def refined_text(table: pd.DataFrame) -> str | None:
    """The report's words on which sizes were refined and why (None: every size was, or none studied)."""
    rows = table[table["refine_why"].astype(str).str.len() > 0]
    if rows.empty or rows["refined"].eq(True).all():
        return None
    refined = [int(b) for b in rows.loc[rows["refined"].eq(True), "batch_size"]]
    lines = [f"Refinement and extra seeds went only where they can change the decision (scaling.adaptive): "
             f"{', '.join(map(str, refined)) or 'no size'}. Each size's reason:", ""]
    lines += [f"- bs {int(r.batch_size)}: {r.refine_why}" for r in rows.itertuples()]
    gain = rows["refinement_gain"].dropna()
    if len(gain):
        lines += ["", f"A coarse answer's interval reaches down by {float(gain.iloc[0]):.2f}x, the most a refined "
                      f"size's steps fell when refined; its seed spread is the one the refined sizes measured."]
    return "\n".join(lines)


def priors_text(trials: pd.DataFrame) -> str | None:
    """Where each size's coarse search started from (the `prior` of its rows): what the study reused from
    the previous study or from its neighbours -- only to order and size the search, never as a result."""
    if "prior" not in trials:
        return None
    started = {}
    for r in trials.itertuples():
        if isinstance(r.prior, str) and r.prior and int(r.batch_size) not in started:
            started[int(r.batch_size)] = r.prior
    if not started:
        return None
    reused = [b for b, text in started.items() if "previous study" in text]
    head = (f"Reused from the previous study (its best rate and steps at {', '.join(map(str, sorted(reused)))}): "
            f"where the search started and how long its first rung was, nothing more -- every number here was "
            f"measured anew." if reused else "Nothing was reused from a previous study.")
    return head + "\n\n" + "\n".join(f"- bs {b}: {text}" for b, text in sorted(started.items()))


def budget_text(trials: pd.DataFrame, table: pd.DataFrame, contenders: dict, budget: float | None,
                seeds: int) -> str | None:
    """What scaling.budget_seconds allowed and what it left unresolved (None: no budget)."""
    if budget is None:
        return None
    spent = float(trials["seconds"].fillna(0).sum())
    lines = [f"scaling.budget_seconds {budget:g} s; the study spent {spent:.3g} s of training "
             f"({contenders.get('coarse_seconds', 0.0):.3g} s in the coarse waves)."]
    cut = sorted({int(b) for b, r in zip(trials["batch_size"], trials["reason"])
                  if isinstance(r, str) and "scaling.budget_seconds" in r})
    if cut:
        lines.append(f"Coarse searches cut short by it: {', '.join(map(str, cut))} (their answers, where any, are the "
                     f"best rate found when it ran out).")
    skipped = [int(r.batch_size) for r in table.itertuples() if "budget_seconds was spent" in str(r.refine_why)]
    if skipped:
        lines.append(f"Not refined because it was spent: {', '.join(map(str, skipped))} (their intervals are the coarse "
                     f"search's, wider).")
    thin = [int(r.batch_size) for r in table.itertuples()
            if r.refined is True and r.candidate is True and pd.notna(r.seeds_run) and r.seeds_run < 1 + seeds]
    if thin:
        lines.append(f"Fewer seeds than scaling.seeds asks for: {', '.join(map(str, thin))} (the budget ran out; select "
                     f"checks the hold on the seeds that ran).")
    if not (cut or skipped or thin):
        lines.append("Nothing was left unresolved.")
    return " ".join(lines)


def main_summarize() -> None:
    ctx = setup(params=load_stage_params("scaling"))
    p, w = ctx.params, ctx.workload
    # Every per-size file is checked (complete rows, known outcomes, only its own batch size) before any work.
    frames = [out.read_csv(out.SCALING_TRIALS, batch_size=b, expect_batch_sizes=[b], allow_repeats=True)
              for b in p.scaling.batch_sizes]
    curve_frames = [out.read_csv(out.SCALING_TRIAL_CURVES, batch_size=b) for b in p.scaling.batch_sizes]
    trials = pd.concat(frames, ignore_index=True)[TRIAL_COLUMNS]
    contenders_file = out.read_json(out.SCALING_CONTENDERS)
    contenders = contenders_file["sizes"]
    table = with_refinement(per_size_table(trials, p.scaling.batch_sizes, p.scaling.eval_resolution), trials, contenders)
    fit, fit_metrics = _fit(fit_rows(trials, table), p.scaling.bootstrap, p.runtime.seed, p.scaling.eval_resolution)
    if not (table["status"] == "reached").any() and (~trials["outcome"].isin(NOT_TRAINED)).any():
        why = advice.why_not_reached(advice.runs_of(trials.to_dict("records")),  # the one change that fits
                                     advice.Target(w.target_metric, w.target_value, w.target_direction), scaling_limits(p, trials))
        fit_metrics["critical_batch_size_message"] = f"no batch size reached the target, so B_crit is undetermined: {why.message}"
    log.info(STAGE, f"critical batch size: {fit_metrics['critical_batch_size_kind']} -- {fit_metrics['critical_batch_size_message']}")
    table = add_fit_columns(table, fit)
    gns, gns_rows = noise_scale(ctx, table)
    spent, full, saved = compute_saved(trials)
    savings = prediction_savings(trials, table)

    curves = best_curves(curve_frames, table, p.runtime.seed)

    reached = table[table["status"] == "reached"]
    perfect = reached[reached["regime"] == "perfect_scaling"]["batch_size"]
    metrics = {
        **fit_metrics, **gns,
        "search_cost_ratio": search_cost_ratio(trials, table),
        "trials_by_phase": {ph: int(((trials["phase"] == ph) & ~trials["outcome"].isin(NOT_TRAINED)).sum()) for ph in PHASES},
        "boundary_batch_sizes": [int(b) for b in table[table["status"] == "boundary"]["batch_size"]],
        "compute_saved_fraction": saved, "examples_run": spent, "examples_if_every_trial_ran_to_max_steps": full,
        "trials": int((~trials["outcome"].isin(NOT_TRAINED)).sum()), "seconds": float(trials["seconds"].sum()),
        # the study's limits, so select can say what to change without reading scaling's params
        "batch_sizes": list(p.scaling.batch_sizes), "max_steps": p.scaling.max_steps, **learning_rate_range(trials),
        "studied_batch_sizes": [int(b) for b in table[table["status"].isin(["reached", "not_reached"])]["batch_size"]],
        "reached_batch_sizes": [int(b) for b in reached["batch_size"]],
        "skipped_batch_sizes": [int(b) for b in table[table["status"] == "skipped"]["batch_size"]],
        "refined_batch_sizes": [int(b) for b in table[table["refined"].eq(True)]["batch_size"]],
        "coarse_only_batch_sizes": [int(b) for b in table[table["refined"].eq(False) & (table["status"] == "reached")]["batch_size"]],
        "reused_previous_study_batch_sizes": sorted({int(r.batch_size) for r in trials.itertuples()
                                                     if isinstance(r.prior, str) and "previous study" in r.prior}),
        **savings,
        "perfect_scaling_up_to": int(perfect.max()) if len(perfect) else None,
        "learning_rate_scaling_exponent": learning_rate_exponent(table),
        "target_metric": w.target_metric, "target_value": w.target_value, "target_direction": w.target_direction,
        "optimizer": fixed_values(p.optimizer), "workload": w.name,
    }
    io.write_csv(out.SCALING_ALL_TRIALS.path, trials)
    io.write_csv(out.SCALING_STEPS.path, table)
    io.write_csv(out.SCALING_CURVES.path, reached_curves(curve_frames, trials))
    io.write_csv(out.SCALING_NOISE.path, gns_rows)
    notes = {"How sure": confidence_text(fit_metrics, table, p.scaling.eval_resolution),  # prose: kept out of metrics.json
             "Critical batch size": metrics.pop("critical_batch_size_message"),
             "Predicted, not trained": predicted_text(savings, spent, table),
             "Refined where it matters": refined_text(table),
             "Where each search started": priors_text(trials),
             "Budget": budget_text(trials, table, contenders_file, p.scaling.budget_seconds, p.scaling.seeds),
             "Gradient noise scale": metrics.pop("gradient_noise_scale_reason", None)}
    out.write_results(out.SCALING_METRICS, out.SCALING_DIAGNOSTICS, metrics)
    io.write_text(out.SCALING_NOTES.path, out.notes_markdown(notes))
    gns_value = gns.get("gradient_noise_scale")
    steps_png, examples_png, lr_png, curves_png = (o.path for o in out.SCALING_PLOTS)
    steps_figure(table, fit, gns_value, steps_png)
    examples_figure(table, fit, gns_value, examples_png)
    note = f"lr / (1 - {p.optimizer.momentum:g})" if p.optimizer.name == "sgd" else "lr"
    learning_rate_figure(table, note, lr_png)
    curves_figure(curves, w.target_metric, w.target_value, curves_png)
    log.info(STAGE, f"wrote {Path(out.SCALING_METRICS.path).parent}: B_crit {fmt(fit_metrics['critical_batch_size'])} ({fit_metrics['critical_batch_size_kind']}), "
                    f"noise scale {fmt(gns_value)}, compute saved {fmt(saved)}")
