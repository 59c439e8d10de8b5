"""Stage `select`: the initial configuration that reaches the target fastest (or cheapest), with its reasoning.

    python -m stages.select

Reads params (workload, optimizer, runtime.seed, select, data) and reports/{probe,throughput,scaling}/ --
from scaling: steps_to_target.csv, metrics.json (B_crit), diagnostics.json (the study's limits, named in its
messages), trials.csv
and curves.csv (every seed's learning curve, to keep only rates that hold the target through the step
budget: stages/select/rates.py), and from throughput reports/throughput/devices.csv (the measured data-parallel
scaling efficiency per device count, used instead of the assumed select.scaling_efficiency where it exists);
writes reports/select/:
    initial_config.yaml  batch size, learning rate, step budget, optimizer with fixed values, workload,
                         expected training time, objective, devices, seed, and for a workload with a
                         DataLoader its `data` settings with the num_workers throughput recommends --
                         the input of a training run
    decision.csv         per batch size: feasible?, throughput regime, steps, time, resource, chosen, why
    metrics.json         the choice in numbers, the chosen rate's steps over seeds, and `tie` when sizes were
                         within noise: what a reviewer compares
    diagnostics.json     its expected times and resource use, the runner-up, tied_batch_sizes
    reasoning.md         the decision in the playbook's terms
    training_time.png, resource_use.png
If the target is not clearly better than chance, or no batch size reached it, it exits with a message
saying what to change (target, scaling.max_steps, learning-rate range) and writes nothing.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import yaml

from stages.core import log
from stages.core import plotting
from stages.core.context import build_workload
from stages.core.model_choice import apply_family_choice
from stages.core import outputs as out
from stages.core.errors import InputError
from stages.core.io import write_csv, write_text
from stages.core.units import Units
from stages.core.optim import fixed_values
from stages.pipeline.declaration import load_stage_params
from stages.select.reasoning import SCHEDULE, edge_of_study, reasoning_markdown, steps_per_doubling
from stages.select.decide import OBJECTIVE_COLUMN, Measurements, Selection, Study, Target, select
from stages.select.rates import choose_rates, trusted_steps
from stages.workloads.base import better_than_chance

def _skipped(trials: pd.DataFrame) -> dict[int, str]:
    """Batch sizes whose every trial was skipped by the scaling study, with the reason."""
    if trials.empty or "outcome" not in trials:
        return {}
    out = {}
    for b, rows in trials.groupby("batch_size"):
        if (rows["outcome"] == "skipped").all():
            reasons = rows["reason"].dropna().astype(str) if "reason" in rows else pd.Series(dtype=str)
            out[int(b)] = reasons.iloc[0] if len(reasons) else "skipped"
    return out


def _num(x):
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _study(sc_m: dict, sc_d: dict) -> Study:
    lr_min, lr_max = _num(sc_d.get("learning_rate_min_tried")), _num(sc_d.get("learning_rate_max_tried"))
    examples = _num(sc_m.get("examples_run"))
    return Study(int(sc_d["max_steps"]), math.nan if lr_min is None else lr_min, math.nan if lr_max is None else lr_max,
                 int(examples) if examples is not None else None, _num(sc_d.get("seconds")))


def study_cost(study: Study, config: dict) -> dict:
    """What the scaling study cost, in training runs of the chosen configuration (one run: batch size x
    step budget examples, or its expected training time): `study_training_runs` from the examples (what
    a reviewer compares), `study_time_training_runs` from the seconds (a timing); None where the study
    did not record them."""
    run_examples = config["batch_size"] * config["train_steps"]
    run_seconds = config["expected_training_time_s"]
    return {"study_training_runs": study.examples_run / run_examples if study.examples_run is not None and run_examples
            else None,
            "study_time_training_runs": study.seconds / run_seconds if study.seconds is not None and run_seconds > 0
            else None}


def read_inputs(target: Target, margin: float) -> tuple[Measurements, Study, pd.DataFrame]:
    """Every input, checked (complete, the declared columns and values, one row per studied batch size);
    per studied size the learning rate that holds the target (and the per-size rate choices, for the reasoning)."""
    probe_m, thr_m, sc_m = (out.read_json(o) for o in (out.PROBE_METRICS, out.THROUGHPUT_METRICS, out.SCALING_METRICS))
    thr_d, sc_d = out.read_json(out.THROUGHPUT_DIAGNOSTICS), out.read_json(out.SCALING_DIAGNOSTICS)
    sizes = [int(b) for b in sc_d["batch_sizes"]]
    trials = out.read_csv(out.SCALING_ALL_TRIALS, expect_batch_sizes=sizes, allow_repeats=True)
    curves = out.read_csv(out.SCALING_CURVES)
    if len(curves) and target.metric not in curves:
        raise InputError(out.SCALING_CURVES.path, f"no column for the target metric {target.metric!r}; received "
                         f"{', '.join(map(str, curves.columns))}", out.SCALING_CURVES.rerun())
    choices = choose_rates(trials, curves, target, margin)
    max_bs = probe_m.get("max_batch_size")
    useful = thr_m.get("largest_useful_batch_size")
    return Measurements(
        probe=out.read_csv(out.PROBE_CSV),
        max_batch_size=int(max_bs) if _num(max_bs) else None,
        throughput=out.read_csv(out.THROUGHPUT_CSV),
        largest_useful_batch_size=int(useful) if _num(useful) else None,
        steps=trusted_steps(out.read_csv(out.SCALING_STEPS, expect_batch_sizes=sizes), choices),
        skipped=_skipped(trials),
        critical_batch_size=_num(sc_m.get("critical_batch_size")),
        critical_batch_size_kind=str(sc_m.get("critical_batch_size_kind") or "estimate"),
        critical_batch_size_ci=(_num(sc_m.get("ci_low")), _num(sc_m.get("ci_high"))),
        s_min=_num(sc_m.get("s_min")),
        perfect_scaling_up_to=int(sc_d["perfect_scaling_up_to"]) if _num(sc_d.get("perfect_scaling_up_to")) else None,
        device=str(thr_d.get("device") or "device"),
        first_step_overhead_s=_num(thr_d.get("first_step_overhead_s")) or 0.0,
        time_per_step_drift=_num(thr_d.get("time_per_step_drift")) or 0.0,
        measured_efficiency=measured_efficiency(),
        trials=trials,  # outcomes: did every trial diverge?
    ), _study(sc_m, sc_d), choices


def measured_efficiency() -> dict[int, float]:
    """Device count -> scaling efficiency from throughput's data-parallel timing (devices.csv, checked):
    only counts above one that ran and gave a positive efficiency."""
    table = out.read_csv(out.THROUGHPUT_DEVICES)
    ok = table[(table["status"] == "ok") & (table["devices"] > 1) & (table["scaling_efficiency"] > 0)]
    return {int(d): float(e) for d, e in zip(ok["devices"], ok["scaling_efficiency"])}


def tie_label(sel: Selection) -> str:
    """A short label of the tie rule's outcome, '128~256: chose 256 (fewer devices, then the best estimate)' or
    'none'. The review of a pull request reads the sizes back from it (stages/report/review.tied_sizes):
    DVC leaves list metrics such as tied_batch_sizes out of its diffs."""
    if not sel.tied:
        return "none"
    return "~".join(map(str, sel.tied)) + f": chose {int(sel.chosen['batch_size'])} (fewer devices, then the best estimate)"


def loader_settings(params, workload, throughput_metrics: dict, throughput_diagnostics: dict | None = None) -> dict | None:
    """initial_config.yaml's `data`: params.yaml's DataLoader settings with the setting throughput recommends and
    timed every batch size with (num_workers, and persistent workers where it measured them so) -- the times
    per step select used are those of this setting; None for a workload without a DataLoader."""
    if workload.loader_settings is None:
        return None
    recommended = throughput_metrics.get("recommended_num_workers")
    if recommended is not None and (isinstance(recommended, bool) or not isinstance(recommended, int) or recommended < 0):
        raise InputError(out.THROUGHPUT_METRICS.path, f"recommended_num_workers: received {recommended!r}; allowed: "
                         f"null or a non-negative integer", out.THROUGHPUT_METRICS.producer)
    data = dataclasses.asdict(params.data)
    persistent = (throughput_diagnostics or {}).get("measured_with_persistent_workers")
    return {**data, "num_workers": data["num_workers"] if recommended is None else recommended,
            **({"persistent_workers": persistent} if isinstance(persistent, bool) and recommended else {})}


def seed_runs(choices: pd.DataFrame, m, config: dict) -> dict:
    """The chosen rate's steps to target per seed (trials.csv) and the seed the baseline trains."""
    trials = m.trials
    if trials is None or trials.empty:
        return {}
    rows = trials[(trials["batch_size"] == config["batch_size"]) & (trials["phase"] != "bounded")
                  & np.isclose(trials["learning_rate"].astype(float), config["learning_rate"], rtol=1e-12, atol=0)]
    steps = {int(s): int(v) for s, v in zip(rows["seed"], rows["steps_to_target"]) if pd.notna(s) and pd.notna(v)}
    return {"steps": dict(sorted(steps.items())), "seed": config["seed"],
            "median": median_seed(choices, int(config["batch_size"])) is not None}


def median_seed(choices: pd.DataFrame, batch_size: int) -> int | None:
    """The seed of the chosen rate's median run at `batch_size` (stages/select/rates.py), if known."""
    rows = choices[choices["batch_size"] == batch_size] if "median_seed" in choices else choices.iloc[0:0]
    value = rows["median_seed"].iloc[0] if len(rows) else None
    return None if value is None or pd.isna(value) else int(value)


def initial_config(sel: Selection, params, target: Target, first_step_overhead_s: float = 0.0,
                   data: dict | None = None, seed: int | None = None) -> dict:
    """initial_config.yaml: everything a training run (and the baseline stage) needs, seed included (`seed`:
    the chosen rate's median run in the study, which the baseline retraces; None: runtime.seed). The
    expected times include a run's one-off first-step cost that throughput measured."""
    c = sel.chosen
    return {
        "batch_size": int(c["batch_size"]),
        "learning_rate": float(c["best_learning_rate"]),
        "learning_rate_schedule": SCHEDULE,  # as every trial of the study and the baseline train it
        "train_steps": sel.train_steps,
        "optimizer": fixed_values(params.optimizer),
        "workload": {"name": params.workload.name, "kwargs": dict(params.workload.kwargs)},
        "model_choice": ("workload.kwargs as given (family.candidates is null)" if params.family.candidates is None
                         else f"the family stage's choice, rule {params.family.rule!r} ({out.FAMILY_MODEL.path})"),
        "seed": params.runtime.seed if seed is None else int(seed),
        "devices": int(c["devices"]),
        "objective": sel.objective,
        "expected_training_time_s": float(first_step_overhead_s + c["time_per_step_s"] * sel.train_steps),
        "expected_time_to_target_s": float(first_step_overhead_s + c["training_time_s"]),
        "first_step_overhead_s": float(first_step_overhead_s),
        "steps_to_target": float(c["steps_to_target"]),
        "time_per_step_s": float(c["time_per_step_s"]),
        "target": {"metric": target.metric, "value": target.value, "direction": target.direction},
        **({"data": data} if data is not None else {}),  # the DataLoader settings, num_workers as throughput recommends
    }


def plot(table: pd.DataFrame, column: str, title: str, ylabel: str, path: str) -> None:
    fig, ax = plotting.figure(title, "batch size", ylabel, logx=True, logy=True)
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 256, not 2^8
    data = table[table[column].notna() & (table[column] > 0)].copy()
    data["kind"] = ["chosen" if ch else "considered" if co else "interpolated" if ip else "not considered"
                    for ch, co, ip in zip(data["chosen"], data["considered"], data["interpolated"])]
    ax.plot(data["batch_size"], data[column], color="0.7", zorder=1)
    palette = {"chosen": "tab:red", "considered": "tab:blue", "interpolated": "tab:orange", "not considered": "0.5"}
    markers = {"chosen": "*", "considered": "o", "interpolated": "D", "not considered": "x"}
    for kind, rows in data.groupby("kind"):
        ax.scatter(rows["batch_size"], rows[column], label=kind, color=palette[kind], marker=markers[kind],
                   s=140 if kind == "chosen" else 40, zorder=2)
    if len(data):
        ax.legend()
    plotting.save(fig, path)


def main() -> None:
    params = apply_family_choice(load_stage_params("select"))  # the model the family stage chose
    workload = build_workload(params)
    target = Target(workload.target_metric, workload.target_value, workload.target_direction,
                    workload.chance_score, better_than_chance(workload))
    measurements, study, choices = read_inputs(target, params.select.step_budget_margin)
    sel = select(measurements, params.select, target, study)  # raises (writing nothing) if not reasonable
    c = sel.chosen
    log.info("select", f"batch size {int(c['batch_size'])}, lr {c['best_learning_rate']:.3g}, {sel.train_steps} steps, "
                       f"{int(c['devices'])} device(s), {c['training_time_s']:.3g} s to target ({sel.objective})")
    config = initial_config(sel, params, target, measurements.first_step_overhead_s,
                            loader_settings(params, workload, out.read_json(out.THROUGHPUT_METRICS),
                                            out.read_json(out.THROUGHPUT_DIAGNOSTICS)),
                            median_seed(choices, int(c["batch_size"])))
    cost = study_cost(study, config)
    if cost["study_training_runs"] is not None:
        log.info("select", f"the scaling study cost {cost['study_training_runs']:.3g} training runs of this configuration "
                           f"in examples ({study.examples_run} / ({config['batch_size']} x {config['train_steps']} steps))"
                           + (f", {cost['study_time_training_runs']:.3g} in training time"
                              if cost["study_time_training_runs"] is not None else ""))
    units = Units.of(workload)
    edge = edge_of_study(sel.table, steps_per_doubling(sel.table))
    header = ("# Initial configuration chosen by `python -m stages.select` (see reasoning.md next to it).\n"
              "# Train it with `python -m stages.baseline`.\n")
    write_csv(out.SELECT_DECISION.path, sel.table)
    out.write_results(out.SELECT_METRICS, out.SELECT_DIAGNOSTICS, {
        **{k: config[k] for k in ("batch_size", "learning_rate", "train_steps", "devices", "objective",
                                  "expected_training_time_s", "expected_time_to_target_s", "steps_to_target",
                                  "time_per_step_s")},
        "resource_cost": float(c["resource_cost"]),
        "device_hours": float(c["device_hours"]),
        "runner_up_batch_size": int(sel.runner_up["batch_size"]) if sel.runner_up else None,
        "runner_up_objective_value": float(sel.runner_up[OBJECTIVE_COLUMN[sel.objective]]) if sel.runner_up else None,
        "candidates": int(sel.table["considered"].sum()),
        "critical_batch_size": measurements.critical_batch_size,
        # the chosen rate's steps over its seeds: the interval a reviewer compares a change with
        **{k: float(choices.set_index("batch_size").at[int(c["batch_size"]), k])
           for k in ("steps_to_target_min", "steps_to_target_max")},
        # how many seeds that interval spans: a zero-width one is one seed (no interval) or seeds that agree
        "steps_to_target_seeds": int(choices.set_index("batch_size").at[int(c["batch_size"]), "seeds"]),
        # the data-parallel efficiency the choice used, and whether throughput measured it or it is assumed
        "scaling_efficiency": float(c["scaling_efficiency"]) if int(c["devices"]) > 1 else None,
        "scaling_efficiency_source": str(c["scaling_efficiency_source"]) if int(c["devices"]) > 1 else "one device",
        "tied_batch_sizes": sel.tied,
        "tie": tie_label(sel),
        **cost,
        # a choice at the smallest or largest size studied, with feasible unstudied sizes beyond it to add
        "edge_of_study": edge[0] if edge else None,
        "sizes_to_add": edge[1] if edge else [],
        "units": units.record(),  # what one example is, tokens per example, metric units: the report's words
    })
    write_text(out.SELECT_REASONING.path, reasoning_markdown(sel, measurements, target, params.select, study, config["optimizer"],
                                                             units, seed_runs(choices, measurements, config)))
    plot(sel.table, "training_time_s", "Training time to target by batch size", "training time (s)", out.SELECT_PLOTS[0].path)
    plot(sel.table, "resource_cost", "Resource use to target by batch size", "device-hours x cost per hour", out.SELECT_PLOTS[1].path)
    write_text(out.SELECT_CONFIG.path, header + yaml.safe_dump(config, sort_keys=False))  # last: baseline's input

