"""Stage `select`: the initial configuration that reaches the target fastest (or cheapest), with its reasoning.

    python -m stages.select

Reads params (workload, optimizer, runtime.seed, select, and the scaling study's limits for its
messages) and reports/{probe,throughput,scaling}/; writes reports/select/:
    initial_config.yaml  batch size, learning rate, step budget, optimizer with fixed values, workload,
                         expected training time, objective, devices, seed -- the input of a training run
    decision.csv         per batch size: feasible?, throughput regime, steps, time, resource, chosen, why
    metrics.json         the choice in numbers
    reasoning.md         the decision in the playbook's terms
    training_time.png, resource_use.png
If the target is not clearly better than chance, or no batch size reached it, it exits with a message
saying what to change (target, scaling.max_steps, learning-rate range) and writes nothing.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import yaml
from matplotlib.ticker import FuncFormatter

from stages.core import log
from stages.core import plotting
from stages.core.config import PARAMS_FILE, load_params
from stages.core.context import build_workload
from stages.core.errors import ConfigError
from stages.core.io import read_json, write_csv, write_json, write_text
from stages.core.optim import fixed_values
from stages.select.reasoning import reasoning_markdown
from stages.select.decide import OBJECTIVE_COLUMN, Measurements, Selection, Study, Target, select
from stages.workloads.base import better_than_chance

PROBE, THROUGHPUT, SCALING, OUT = Path("reports/probe"), Path("reports/throughput"), Path("reports/scaling"), Path("reports/select")


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the stage that writes it first (dvc repro or snakemake)")
    return pd.read_csv(path)


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


def read_measurements() -> Measurements:
    probe_m, thr_m, sc_m = read_json(PROBE / "metrics.json"), read_json(THROUGHPUT / "metrics.json"), read_json(SCALING / "metrics.json")
    trials = SCALING / "trials.csv"
    max_bs = probe_m.get("max_batch_size")
    useful = thr_m.get("largest_useful_batch_size")
    return Measurements(
        probe=_read_csv(PROBE / "probe.csv"),
        max_batch_size=int(max_bs) if _num(max_bs) else None,
        throughput=_read_csv(THROUGHPUT / "throughput.csv"),
        largest_useful_batch_size=int(useful) if _num(useful) else None,
        steps=_read_csv(SCALING / "steps_to_target.csv"),
        skipped=_skipped(_read_csv(trials)) if trials.exists() else {},
        critical_batch_size=_num(sc_m.get("critical_batch_size")),
        critical_batch_size_kind=str(sc_m.get("critical_batch_size_kind") or "estimate"),
        critical_batch_size_ci=(_num(sc_m.get("ci_low")), _num(sc_m.get("ci_high"))),
        s_min=_num(sc_m.get("s_min")),
        perfect_scaling_up_to=int(sc_m["perfect_scaling_up_to"]) if _num(sc_m.get("perfect_scaling_up_to")) else None,
        device=str(probe_m.get("device") or thr_m.get("device") or "device"),
        trials=_read_csv(trials) if trials.exists() else None,  # outcomes: did every trial diverge?
    )


def initial_config(sel: Selection, params, target: Target) -> dict:
    c = sel.chosen
    return {
        "batch_size": int(c["batch_size"]),
        "learning_rate": float(c["best_learning_rate"]),
        "train_steps": sel.train_steps,
        "optimizer": fixed_values(params.optimizer),
        "workload": {"name": params.workload.name, "kwargs": dict(params.workload.kwargs)},
        "seed": params.runtime.seed,
        "devices": int(c["devices"]),
        "objective": sel.objective,
        "expected_training_time_s": float(c["time_per_step_s"] * sel.train_steps),
        "expected_time_to_target_s": float(c["training_time_s"]),
        "steps_to_target": float(c["steps_to_target"]),
        "time_per_step_s": float(c["time_per_step_s"]),
        "target": {"metric": target.metric, "value": target.value, "direction": target.direction},
    }


def plot(table: pd.DataFrame, column: str, title: str, ylabel: str, path: Path) -> None:
    fig, ax = plotting.figure(title, "batch size", ylabel, logx=True, logy=True)
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
    params = load_params(PARAMS_FILE)
    workload = build_workload(params)
    target = Target(workload.target_metric, workload.target_value, workload.target_direction,
                    workload.chance_score, better_than_chance(workload))
    study = Study(params.scaling.max_steps, params.scaling.lr_min, params.scaling.lr_max)
    try:
        measurements = read_measurements()
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    sel = select(measurements, params.select, target, study)  # raises (writing nothing) if not reasonable
    c = sel.chosen
    log.info("select", f"batch size {int(c['batch_size'])}, lr {c['best_learning_rate']:.3g}, {sel.train_steps} steps, "
                       f"{int(c['devices'])} device(s), {c['training_time_s']:.3g} s to target ({sel.objective})")
    config = initial_config(sel, params, target)
    header = ("# Initial configuration chosen by `python -m stages.select` (see reasoning.md next to it).\n"
              "# Train it with `python -m stages.baseline`.\n")
    OUT.mkdir(parents=True, exist_ok=True)
    write_csv(OUT / "decision.csv", sel.table)
    write_json(OUT / "metrics.json", {
        **{k: config[k] for k in ("batch_size", "learning_rate", "train_steps", "devices", "objective",
                                  "expected_training_time_s", "expected_time_to_target_s", "steps_to_target",
                                  "time_per_step_s")},
        "resource_cost": float(c["resource_cost"]),
        "device_hours": float(c["device_hours"]),
        "runner_up_batch_size": int(sel.runner_up["batch_size"]) if sel.runner_up else None,
        "runner_up_objective_value": float(sel.runner_up[OBJECTIVE_COLUMN[sel.objective]]) if sel.runner_up else None,
        "candidates": int(sel.table["considered"].sum()),
        "critical_batch_size": measurements.critical_batch_size,
    })
    write_text(OUT / "reasoning.md", reasoning_markdown(sel, measurements, target, params.select, study, config["optimizer"]))
    plot(sel.table, "training_time_s", "Training time to target by batch size", "training time (s)", OUT / "training_time.png")
    plot(sel.table, "resource_cost", "Resource use to target by batch size", "device-hours x cost per hour", OUT / "resource_use.png")
    write_text(OUT / "initial_config.yaml", header + yaml.safe_dump(config, sort_keys=False))  # last: baseline's input

