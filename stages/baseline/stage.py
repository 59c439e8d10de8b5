"""Stage `baseline`: train the selected initial configuration once -- the team's pinned baseline.

    python -m stages.baseline

Reads reports/select/initial_config.yaml (batch size, learning rate, step budget, optimizer with its
fixed values, workload, seed, and the DataLoader settings `data` where the workload has a DataLoader) and params (runtime.device, runtime.threads; baseline); trains for the
whole step budget from the selected seed (no stop at the target, so the learning curve is complete) and writes
reports/baseline/:
    metrics.json  the receipts `dvc metrics diff` compares across team branches: the target metric and
                  value, the final value under its own name (e.g. `accuracy`), reached_target (at some
                  evaluation), final_meets_target, steps_to_target (counted as the scaling study counts it: the
                  first step from which the target holds through the end of the budget; a crossing that falls
                  back does not count -- first_reached_step in diagnostics.json is the first crossing), outcome
    diagnostics.json  the other final metrics, train_seconds (training steps only) and eval_seconds
                  (evaluations, timed apart), train_steps, batch_size, learning_rate, and select's
                  predictions checked: predicted_ and measured steps_to_target, time_per_step_s and
                  time_to_target_s, each with its measured/predicted `_ratio`, and first_step_seconds
                  (the first step, one-off start-up included)
    curve.csv     step, train_loss, the workload's metrics at each evaluation, train_seconds (training clock so far)
    curve.png     the learning curve with the target
"""
from __future__ import annotations

import dataclasses
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
from stages.core.units import Units
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


def eval_steps(train_steps: int, eval_every: int | None, resolution: float = 0.05) -> list[int]:
    """Every `eval_every` steps, or (default) the scaling study's geometric schedule (`resolution`: its
    scaling.eval_resolution), whose steps are the study's trials' own: the same steps to target for the same run."""
    if eval_every is None:
        return eval_schedule(train_steps, resolution)
    return sorted(set(range(eval_every, train_steps + 1, eval_every)) | {train_steps})


def run_baseline(workload: Workload, config: dict, sections: Params, seed: int, device, eval_every: int | None,
                 progress: Progress | None = None, resolution: float = 0.05) -> TrialResult:
    """The training run of the recommended configuration; `progress` gets a line with an ETA every few seconds."""
    metric = workload.target_metric

    def on_step(step: int, metrics: dict) -> None:
        # inside the timed training loop: the line is formatted only when one is printed
        progress.update(step, lambda: f"{metric} {metrics[metric]:.4g} at the last evaluation" if metric in metrics else "")

    result = train_to_target(workload, sections.optimizer, float(config["learning_rate"]), int(config["batch_size"]),
                             seed, device, int(config["train_steps"]),
                             eval_steps=eval_steps(int(config["train_steps"]), eval_every, resolution), stop_at_target=False,
                             on_step=on_step if progress is not None else None)
    return held_result(result, workload)


def held_result(result: TrialResult, workload: Workload) -> TrialResult:
    """The run with the study's steps to target (`held_crossing`): a crossing that fell back before the end
    of the budget does not count, as no crossing that fell back within its hold counted in the study."""
    metric = workload.target_metric
    held, first = held_crossing(result.curve, metric, workload.target_value, workload.target_direction)
    if held == result.steps_to_target:
        return result
    misses = [r for r in result.curve if first is not None and r["step"] > first
              and not target_reached(r[metric], workload.target_value, workload.target_direction)]
    fell_back_at = misses[-1]["step"] if misses else None
    if held is None:
        outcome = "not_reached" if result.outcome == "reached" else result.outcome
        reason = (f"{metric} reached the target at step {first} but fell back (last at step {fell_back_at}, to "
                  f"{misses[-1][metric]:.4g}) and does not meet it at the end of the budget" if misses else result.reason)
        return dataclasses.replace(result, steps_to_target=None, outcome=outcome, reason=reason, fell_back_at=fell_back_at)
    reason = (f"{metric} first met the target at step {first}, fell back (last at step {fell_back_at}), and holds it "
              f"from step {held} through the end of the budget")
    return dataclasses.replace(result, steps_to_target=held, reason=reason, fell_back_at=fell_back_at)


def _ratio(measured: float | None, predicted: float | None) -> float | None:
    return measured / predicted if measured is not None and predicted else None


def held_crossing(curve: list[dict], metric: str, target: float, direction: str) -> tuple[int | None, int | None]:
    """(steps to target, first crossing): the first evaluated step from which the metric meets the target at
    every later evaluation through the end of the run -- the scaling study's steps to target, where a crossing
    that falls back does not count and select trusts only a rate whose every seed holds the target through
    the step budget -- and the first evaluation that met it at all (None, None: never met; None for the
    first: the last evaluation misses it)."""
    met = [target_reached(r[metric], target, direction) for r in curve]
    first = next((r["step"] for r, m in zip(curve, met) if m), None)
    held = None
    for r, m in zip(reversed(curve), reversed(met)):
        if not m:
            break
        held = r["step"]
    return held, first


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
        # the training clock at the evaluation from which the target holds (its evaluation excluded)
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
    _, first = held_crossing(result.curve, metric, workload.target_value, workload.target_direction)
    best = (max if workload.target_direction == "above" else min)(values) if values else None
    units = Units.of(workload)
    batch = int(config["batch_size"])
    return {
        **result.final_metrics,  # the target metric under its own name, e.g. accuracy
        f"best_{metric}": best,
        "final_train_loss": result.curve[-1]["train_loss"] if result.curve else None,
        "target_metric": metric,
        "target_value": workload.target_value,
        "reached_target": first is not None,   # at some evaluation during the run
        "final_meets_target": target_reached(final, workload.target_value, workload.target_direction),
        "steps_to_target": result.steps_to_target,  # from where it holds through the end (held_crossing)
        "first_reached_step": first,                # the first evaluation that met it (a later one may fall back)
        "train_seconds": result.seconds,      # the training steps alone, the whole budget
        "eval_seconds": result.eval_seconds,  # the evaluations, timed apart
        "evaluations": len(result.curve),
        "examples_to_target": None if result.steps_to_target is None else result.steps_to_target * batch,
        "tokens_to_target": None if result.steps_to_target is None or units.tokens_per_example is None
        else result.steps_to_target * batch * units.tokens_per_example,
        "epochs_to_target": None if result.steps_to_target is None else units.epochs(result.steps_to_target * batch),
        "examples_trained": result.steps_run * batch,
        "units": units.record(),  # what one example is, tokens per example, metric units: the report's words
        "train_steps": result.steps_run,
        "outcome": result.outcome,
        "batch_size": int(config["batch_size"]),
        "learning_rate": float(config["learning_rate"]),
        "seed": seed,
        "device": device,
        **checked,
    }


def curve_figure(curve: pd.DataFrame, workload: Workload):
    """The learning curve with the target, every y axis on one scale: a target metric reached below its value (a
    loss) shares the training loss's log axis; any other (accuracy) gets its own axis, both linear -- a log axis
    beside a linear one would make the two curves' shapes incomparable."""
    metric = workload.target_metric
    shared = workload.target_direction == "below" and bool((curve[metric] > 0).all()) and workload.target_value > 0
    logy = shared and bool((curve["train_loss"] > 0).all())
    ylabel = f"training loss, validation {metric}" if shared else "training loss"
    fig, ax = plotting.figure("Baseline learning curve", "step", ylabel + (" (log)" if logy else ""), logy=logy)
    ax.plot(curve["step"], curve["train_loss"], color="tab:blue", marker=".", label="training loss")
    other = ax
    if not shared:
        other = ax.twinx()
        other.set_ylabel(metric)
        other.grid(False)
    other.plot(curve["step"], curve[metric], color="tab:green", marker=".", label=f"validation {metric}")
    other.axhline(workload.target_value, color="tab:red", linestyle="--", label=f"target {workload.target_value:g}")
    handles, labels = ax.get_legend_handles_labels()
    if other is not ax:
        more = other.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, loc="center right")
    return fig


def plot_curve(curve: pd.DataFrame, workload: Workload, path: str) -> None:
    plotting.save(curve_figure(curve, workload), path)


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
                          Progress("baseline", "training step", int(config["train_steps"])), params.scaling.eval_resolution)
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

