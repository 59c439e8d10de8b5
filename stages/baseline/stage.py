"""Stage `baseline`: train the selected initial configuration once -- the team's pinned baseline.

    python -m stages.baseline

Reads reports/select/initial_config.yaml (batch size, learning rate, step budget, optimizer with its
fixed values, workload, seed, and the DataLoader settings `data` where the workload has a DataLoader) and params (runtime.device, runtime.threads; baseline); trains for the
whole step budget from the selected seed (no stop at the target, so the learning curve is complete) and writes
reports/baseline/:
    metrics.json  the receipts `dvc metrics diff` compares across team branches: the target metric and
                  value, the final value under its own name (e.g. `accuracy`), reached_target,
                  final_meets_target, steps_to_target, outcome
    diagnostics.json  the other final metrics, train_seconds (training steps only) and eval_seconds
                  (evaluations, timed apart), train_steps, batch_size, learning_rate, and select's
                  predictions checked: predicted_ and measured steps_to_target, time_per_step_s and
                  time_to_target_s, each with its measured/predicted `_ratio`, and first_step_seconds
                  (the first step, one-off start-up included)
    curve.csv     step, train_loss, the workload's metrics at each evaluation, train_seconds (training clock so far)
    curve.png     the learning curve with the target
"""
from __future__ import annotations

import sys

import pandas as pd

from stages.core import log, provenance
from stages.core.cli import ArgumentParser
from stages.core import timer
from stages.core import plotting
from stages.core.config import Params, validate
from stages.core import outputs as out
from stages.core.errors import ConfigError, InputError
from stages.core.device import describe, resolve_device, configure_cpu
from stages.core.io import write_csv
from stages.core.progress import Progress
from stages.search.trial import TrialResult, eval_schedule, train_to_target
from stages.pipeline.declaration import load_stage_params
from stages.workloads.base import Workload, make_workload, target_reached

PREDICTED = ("steps_to_target", "time_per_step_s", "expected_time_to_target_s")  # select's predictions, checked here


def read_initial_config(source: out.Output = out.SELECT_CONFIG, edited_ok: bool = False) -> tuple[dict, Params, Workload]:
    """The selected configuration, its optimizer/workload validated like params.yaml sections, and the
    workload. The file must be what select wrote (its manifest) unless `edited_ok`; then config carries
    "config_edited": whether it differs."""
    try:
        config = out.read_yaml(source)  # a missing file or key, or a hand-edited one: InputError naming select
        edited = False
    except InputError as e:
        if "cut, edited by hand" not in str(e):
            raise
        if not edited_ok:
            raise InputError(source.path, str(e).removeprefix(f"{source.path}: ").split("; rerun")[0] +
                             "; to train it as edited anyway: python -m stages.baseline --train-edited-config",
                             source.producer) from None
        with provenance.unverified():
            config = out.read_yaml(source)
        edited = True
    config = {**config, "config_edited": edited} if edited_ok else config
    path = source.path
    for key in ("batch_size", "train_steps"):
        if not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] < 1:
            raise InputError(path, f"{key}: received {config[key]!r}; allowed: a positive integer", source.producer)
    if not isinstance(config["seed"], int) or isinstance(config["seed"], bool) or config["seed"] < 0:
        raise InputError(path, f"seed: received {config['seed']!r}; allowed: a non-negative integer", source.producer)
    for key in ("learning_rate", *PREDICTED):
        if key in config and (isinstance(config[key], bool) or not isinstance(config[key], (int, float))
                              or not config[key] > 0):
            raise InputError(path, f"{key}: received {config[key]!r}; allowed: a positive number", source.producer)
    try:
        sections = validate({"optimizer": config["optimizer"], "workload": config["workload"],
                             **({"data": config["data"]} if "data" in config else {})}, str(path))
        workload = make_workload(sections.workload.name, sections.workload.kwargs)
        if "data" in config:  # the DataLoader settings select chose (num_workers as throughput recommends)
            workload = workload.with_loader_settings(sections.data)
    except ConfigError as e:
        raise InputError(path, str(e).removeprefix(f"{path}: "), source.producer) from None
    n = workload.num_train_examples
    if n is not None and config["batch_size"] > n:  # no batch could be drawn (a hand edit: select never chooses it)
        raise InputError(path, f"batch_size: received {config['batch_size']}; allowed: at most the workload's {n} "
                               f"training examples", source.producer)
    return config, sections, workload


def eval_steps(train_steps: int, eval_every: int | None) -> list[int]:
    """Every `eval_every` steps, or (default) the geometric schedule that resolves steps to target within 5%."""
    if eval_every is None:
        return eval_schedule(train_steps)
    return sorted(set(range(eval_every, train_steps + 1, eval_every)) | {train_steps})


def run_baseline(workload: Workload, config: dict, sections: Params, seed: int, device, eval_every: int | None,
                 progress: Progress | None = None) -> TrialResult:
    """The training run of the recommended configuration; `progress` gets a line with an ETA every few seconds."""
    metric = workload.target_metric

    def on_step(step: int, metrics: dict) -> None:
        # inside the timed training loop: the line is formatted only when one is printed
        progress.update(step, lambda: f"{metric} {metrics[metric]:.4g} at the last evaluation" if metric in metrics else "")

    return train_to_target(workload, sections.optimizer, float(config["learning_rate"]), int(config["batch_size"]),
                           seed, device, int(config["train_steps"]),
                           eval_steps=eval_steps(int(config["train_steps"]), eval_every), stop_at_target=False,
                           on_step=on_step if progress is not None else None)


def _ratio(measured: float | None, predicted: float | None) -> float | None:
    return measured / predicted if measured is not None and predicted else None


def predictions_checked(result: TrialResult, config: dict) -> dict:
    """select's predictions (initial_config.yaml) next to what this run measured, with measured/predicted.
    Times are the training clock alone, like throughput's time per step that select multiplied.
    The first step carries one-off costs (allocations, lazy initialisation): it is reported apart
    (`first_step_seconds`), the time per step is the steady rate after it, and the time to target is
    the whole clock, start-up included -- as is its prediction, which adds the first-step overhead
    throughput measured (`first_step_overhead_s` in initial_config.yaml)."""
    time_to_target = None
    if result.steps_to_target is not None:
        row = next(r for r in result.curve if r["step"] == result.steps_to_target)
        # the training clock at the first evaluation that met the target (its evaluation excluded)
        time_to_target = row["train_seconds"]
    first = next((r["train_seconds"] for r in result.curve if r["step"] == 1), None)
    time_per_step, low, high = steady_time_per_step(result, int(config["batch_size"]))
    predicted = {"steps_to_target": config.get("steps_to_target"), "time_per_step_s": config.get("time_per_step_s"),
                 "time_to_target_s": config.get("expected_time_to_target_s")}
    measured = {"steps_to_target": result.steps_to_target, "time_per_step_s": time_per_step,
                "time_to_target_s": time_to_target}
    out = {}
    for key in ("steps_to_target", "time_per_step_s", "time_to_target_s"):
        name = key.removesuffix("_s")
        out[f"predicted_{key}"] = predicted[key]
        out[f"measured_{key}"] = measured[key]
        out[f"{name}_ratio"] = _ratio(measured[key], predicted[key])
    out["measured_time_per_step_s_ci_low"], out["measured_time_per_step_s_ci_high"] = low, high
    out["first_step_seconds"] = first
    return out


def steady_time_per_step(result: TrialResult, batch_size: int) -> tuple[float | None, float | None, float | None]:
    """(seconds per step, interval low, high) of this run, by the one timer's rule (stages/core/timer.py) applied
    to the training clock read at each evaluation: warm-up steps left out, stretches between evaluations
    merged into windows of at least the timer's window length, batch size / the median examples/s -- so it
    compares with the time per step throughput measured and select multiplied. A run too short for one window
    falls back to its steady rate after the first step (interval None)."""
    marks = [(r["step"], r["train_seconds"]) for r in result.curve] + [(result.steps_run, result.seconds)]
    rate = timer.rate_of_windows(timer.windows_from_clock(marks), batch_size)
    if rate is not None:
        median, low, high = rate
        finite = low == low and high == high  # NaN: too few windows for an interval
        return batch_size / median, (batch_size / high if finite else None), (batch_size / low if finite else None)
    first = next((r["train_seconds"] for r in result.curve if r["step"] == 1), None)
    if first is not None and result.steps_run > 1:
        return (result.seconds - first) / (result.steps_run - 1), None, None
    return (result.seconds / result.steps_run if result.steps_run else None), None, None


def baseline_metrics(result: TrialResult, workload: Workload, config: dict, seed: int, device: str) -> dict:
    checked = predictions_checked(result, config)
    metric, final = workload.target_metric, result.final_metrics.get(workload.target_metric)
    values = [r[metric] for r in result.curve]
    best = (max if workload.target_direction == "above" else min)(values) if values else None
    return {
        **result.final_metrics,  # the target metric under its own name, e.g. accuracy
        f"best_{metric}": best,
        "final_train_loss": result.curve[-1]["train_loss"] if result.curve else None,
        "target_metric": metric,
        "target_value": workload.target_value,
        "reached_target": result.steps_to_target is not None,   # at some evaluation during the run
        "final_meets_target": target_reached(final, workload.target_value, workload.target_direction),
        "steps_to_target": result.steps_to_target,
        "train_seconds": result.seconds,      # the training steps alone
        "eval_seconds": result.eval_seconds,  # the evaluations, timed apart
        "train_steps": result.steps_run,
        "outcome": result.outcome,
        "batch_size": int(config["batch_size"]),
        "learning_rate": float(config["learning_rate"]),
        "seed": seed,
        "device": device,
        **checked,
    }


def plot_curve(curve: pd.DataFrame, workload: Workload, path: str) -> None:
    fig, ax = plotting.figure("Baseline learning curve", "step", "training loss", logx=False)
    ax.plot(curve["step"], curve["train_loss"], color="tab:blue", marker=".", label="training loss")
    ax.set_yscale("log")
    ax2 = ax.twinx()
    metric = workload.target_metric
    ax2.plot(curve["step"], curve[metric], color="tab:green", marker=".", label=f"validation {metric}")
    ax2.axhline(workload.target_value, color="tab:red", linestyle="--", label=f"target {workload.target_value:g}")
    ax2.set_ylabel(metric)
    ax2.grid(False)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right")
    plotting.save(fig, path)


def parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m stages.baseline", description=__doc__.splitlines()[0])
    ap.add_argument("--train-edited-config", action="store_true",
                    help=f"train {out.SELECT_CONFIG.path} as it is even where it differs from what select wrote "
                         f"(the metrics then record config_edited: true)")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    params = load_stage_params("baseline")
    config, sections, workload = read_initial_config(edited_ok=args.train_edited_config)
    configure_cpu(params.runtime.threads)
    device = resolve_device(params.runtime.device)
    seed = int(config["seed"])  # the seed select chose with, so the baseline retraces the study's run
    log.info("baseline", f"training batch size {config['batch_size']}, lr {config['learning_rate']:.3g}, "
                         f"{config['train_steps']} steps, seed {seed} on {describe(device)}")
    result = run_baseline(workload, config, sections, seed, device, params.baseline.eval_every,
                          Progress("baseline", "training step", int(config["train_steps"])))
    metrics = baseline_metrics(result, workload, config, seed, describe(device))
    log.info("baseline", f"{result.outcome}: {workload.target_metric} {result.final_metrics.get(workload.target_metric, float('nan')):.4g} "
                         f"after {result.steps_run} steps ({result.seconds:.3g} s training, {result.eval_seconds:.3g} s "
                         f"evaluating); steps to target {result.steps_to_target} (predicted {config.get('steps_to_target')})")
    curve = pd.DataFrame(result.curve)
    write_csv(out.BASELINE_CURVE.path, curve)
    plot_curve(curve, workload, out.BASELINE_PLOT.path)
    if config.get("config_edited"):
        log.info("baseline", f"trained {out.SELECT_CONFIG.path} as edited by hand, not as select wrote it")
        metrics["config_edited"] = True
    out.write_results(out.BASELINE_METRICS, out.BASELINE_DIAGNOSTICS, metrics,
                      also=(workload.target_metric, *(("config_edited",) if config.get("config_edited") else ())))

