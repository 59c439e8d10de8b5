"""Stage `probe`: which batch sizes fit in memory, with the measured peak and why each failure failed.

    python -m stages.probe

Reads params.yaml (workload, optimizer.name/momentum, runtime, probe) and writes
    reports/probe/probe.csv      one row per batch size: tried ones (fits, oom, over_budget, killed)
                                 and sizes above the training-set size (capped, never run)
    reports/probe/metrics.json   max_batch_size and the model's parameter_count: what a reviewer compares
    reports/probe/diagnostics.json  memory budget and limit, memory model, device, sizes tried, caps, seconds
    reports/probe/notes.md       the first failure's message, what the peak measures, trial isolation
    reports/probe/memory.png     peak memory against batch size, with the limit and the fitted line
                                 (and, with probe.plan_for, the predicted peak and each target's limit)
    reports/probe/memory_plan.csv  probe.plan_for: predicted peak per batch size and category, estimated
                                 under fake tensors for a device you do not have (stages/probe/plan.py);
                                 the header alone when plan_for is null

A trial is real training: `probe.steps` full steps (forward, backward, optimizer step) of
stages.core.train.train_step on workload.fake_batch(B), then one evaluation forward at B under no_grad,
each in a fresh process (stages/probe/trials.py). Sizes are tried in increasing order until the
first that does not fit (out of memory, over the memory limit, or killed), then optionally bisected
(stages/probe/search.py). Any other error in the model stops the stage (exit 2) with the trial's
traceback; so does a study where no size fits, after writing probe.csv and notes.md that say why.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from stages.probe import memory, plan, search
from stages.core.config import OptimizerSettings, Params, ProbeSettings
from stages.core import outputs as out
from stages.core.declared import replace_sections
from stages.core.errors import ConfigError, StudyError
from stages.core.log import human_bytes, info
from stages.core.optim import state_copies
from stages.core.progress import Progress
from stages.core.types import ProbeStatus
from stages.probe.trials import Isolation, ProbeJob, TrialError, TrialRunner



# ---------------------------------------------------------------------------- the probe

@dataclass
class TrialRecord:
    batch_size: int
    status: ProbeStatus
    reason: str
    rule: str = ""                            # which OOM rule fired (oom, killed)
    peak_memory_bytes: int | None = None      # what it measures: notes.md, 'Peak memory'
    peak_reserved_bytes: int | None = None    # CUDA only: peak held by the caching allocator
    baseline_memory_bytes: int | None = None  # CPU only: RSS at trial start (interpreter, libraries, data)
    steps_run: int = 0
    examples_run: int = 0
    seconds: float | None = None              # wall time of the trial, process start included
    train_seconds: float | None = None        # inside the training steps and the evaluation forward
    trial: int | None = None                  # order in which sizes were tried (1 = first)


def record_from_report(batch_size: int, report: dict, limit: int, trial: int) -> TrialRecord:
    """Turn a trial process's report into a row; a non-OOM error or zero steps raises TrialError."""
    res, seconds = report["result"], report["seconds"]
    if res is None:
        if report["signal"]:
            rule, reason = memory.classify_signal(report["signal"])
            return TrialRecord(batch_size, "killed", reason, rule, seconds=seconds, trial=trial)
        raise TrialError(f"batch size {batch_size}: the trial process exited with code {report['exitcode']} without "
                         f"reporting a result, so 0 steps were counted; a trial that ran no steps is a failure, "
                         f"not a fit (does the workload call sys.exit or os._exit?)")
    if res["kind"] == "error":
        raise TrialError(f"batch size {batch_size}: the workload failed with an error that is not out-of-memory, "
                         f"so the probe stops instead of calling it 'does not fit':\n{res['message'].rstrip()}")
    if res["kind"] == "oom":
        return TrialRecord(batch_size, "oom", res["message"], res["rule"], steps_run=res["steps_run"],
                           examples_run=res["examples_run"], seconds=seconds, trial=trial)
    if res["steps_run"] < 1 or res["examples_run"] < 1:
        raise TrialError(f"batch size {batch_size}: the trial ran {res['steps_run']} steps and {res['examples_run']} "
                         f"examples; a trial that ran nothing is a failure, not a fit")
    checked = max(res["peak_memory_bytes"], res["peak_reserved_bytes"] or 0)
    status: ProbeStatus = "fits" if checked <= limit else "over_budget"
    reason = f"peak {human_bytes(checked)} {'within' if status == 'fits' else 'exceeds'} the limit {human_bytes(limit)}"
    return TrialRecord(batch_size, status, reason, "", res["peak_memory_bytes"], res["peak_reserved_bytes"],
                       res["baseline_memory_bytes"], res["steps_run"], res["examples_run"], seconds,
                       res["train_seconds"], trial)


def plan_candidates(settings: ProbeSettings, num_train_examples: int | None) -> tuple[list[int], list[int]]:
    """(sizes to try, sizes capped at the training-set size); ConfigError if nothing is left to try."""
    candidates = search.candidate_batch_sizes(settings.min_batch_size, settings.max_batch_size, settings.batch_sizes)
    if not candidates:
        raise ConfigError(f"probe: no power of two lies in [min_batch_size, max_batch_size] = "
                          f"[{settings.min_batch_size}, {settings.max_batch_size}]; allowed: a range holding one, or probe.batch_sizes")
    kept, capped = search.cap_candidates(candidates, num_train_examples)
    if not kept:
        raise ConfigError(f"probe: every candidate batch size {candidates} exceeds the workload's {num_train_examples} "
                          f"training examples; allowed: probe.min_batch_size (or probe.batch_sizes) at most {num_train_examples}")
    return kept, capped


def query_device(runner: TrialRunner) -> dict:
    """Capacity, description and thread count of the device, and whether the model has batch norm."""
    report = runner.run(("info",))
    res = report["result"]
    if res and res["kind"] == "info":
        return res
    if res and res["kind"] == "error":
        raise TrialError(f"querying the device and building the model failed:\n{res['message'].rstrip()}")
    raise TrialError(f"the device query process ended without a result (signal {report['signal']}, "
                     f"exit code {report['exitcode']})")


def check_training_state_fits(params: Params, about: dict, budget: int, limit: int) -> None:
    """Refuse before any trial builds the model for real: parameters, gradients and optimizer state
    (counted on the meta device) need memory whatever the batch size, so if they alone exceed the
    limit no batch size can fit -- and a real build could take the machine down with it."""
    copies = state_copies(params.optimizer)
    need = memory.training_state_bytes(about["parameter_bytes"], copies)
    if need > limit:
        raise ConfigError(
            f"probe.memory_budget: received {params.probe.memory_budget!r} ({human_bytes(budget)}, limit "
            f"{human_bytes(limit)} after the {params.probe.safety_margin:.0%} margin), but the model's "
            f"{about['parameter_count']:,} parameters need {human_bytes(need)} before any batch: weights, "
            f"gradients and {copies} optimizer-state cop{'y' if copies == 1 else 'ies'} ({params.optimizer.name}) of "
            f"{human_bytes(about['parameter_bytes'])} each; allowed: a budget above {human_bytes(need)} "
            f"(plus the margin and the activations), or a smaller model in workload.kwargs")


def state_only(params: Params) -> OptimizerSettings:
    """Only the optimizer's name and momentum size its state (the probe declares just those); the other
    optimizer values keep their defaults in the trials, so the probe's result cannot depend on them."""
    return OptimizerSettings(name=params.optimizer.name, momentum=params.optimizer.momentum)


@dataclass
class ProbeOutcome:
    records: list[TrialRecord]  # tried sizes in the order tried, then capped sizes
    tried: list[int]
    max_batch_size: int | None
    metrics: dict
    plan: list[plan.Estimate] | None = None  # probe.plan_for's estimates, None without a plan
    plan_fits: list[plan.TargetFit] | None = None


def run_plan(params: Params, workload, outcome: ProbeOutcome, num_train_examples: int | None) -> None:
    """probe.plan_for: estimate every candidate size under fake tensors (not only those that fit here:
    the plan is for a bigger device) and find the largest that fits each target. Adds to `outcome`."""
    targets = plan.plan_targets(params.probe.plan_for)
    if not targets:
        outcome.metrics["memory_plan"] = None
        return
    sizes, _ = plan_candidates(params.probe, num_train_examples)
    if outcome.metrics["has_batch_norm"]:
        sizes = [b for b in sizes if b >= 2]  # training-mode batch norm cannot run on one example
    info("probe", f"memory plan for {', '.join(t.label for t in targets)}: estimating the peak under fake "
                  f"tensors at batch sizes {sizes}")
    start = time.perf_counter()
    estimates = plan.plan_memory(workload, state_only(params), sizes, params.probe.steps,
                                 progress=lambda e: info("probe", f"plan: batch size {e.batch_size:>6}: " + (
                                     f"predicted peak {human_bytes(e.peak_bytes)}" if e.status == "estimated"
                                     else f"refused: {e.reason}")))
    fits = plan.fit_targets(estimates, targets, params.probe.safety_margin)
    for f in fits:
        info("probe", f"plan: {f.target.label}: largest batch size predicted to fit {f.max_batch_size} "
                      f"(limit {human_bytes(f.limit_bytes)} after the {params.probe.safety_margin:.0%} margin)")
    outcome.plan, outcome.plan_fits = estimates, fits
    outcome.metrics["memory_plan"] = {
        f.target.label: {"memory_bytes": f.target.memory_bytes, "limit_bytes": f.limit_bytes,
                         "max_batch_size": f.max_batch_size, "at_largest_candidate": f.at_largest_candidate}
        for f in fits}
    outcome.metrics["memory_plan_status"] = ("refused" if any(e.status == "refused" for e in estimates)
                                             else "estimated")
    outcome.metrics["memory_plan_seconds"] = time.perf_counter() - start


def run_probe(params: Params, device: torch.device, num_train_examples: int | None,
              runner: TrialRunner | None = None, isolation: Isolation = "auto") -> ProbeOutcome:
    """Plan the candidates, run the search in trial processes (`runner`, or a new one), fit the memory model."""
    settings = params.probe
    kept, capped = plan_candidates(settings, num_train_examples)
    if runner is None:
        with TrialRunner(isolation) as own:
            return run_probe(params, device, num_train_examples, own)
    start = time.perf_counter()
    records: list[TrialRecord] = []
    methods: list[str] = []  # what peak_memory_bytes is, as the trial processes measured it
    runner.load(ProbeJob(replace_sections(params, optimizer=state_only(params)), str(device)))
    about = query_device(runner)
    budget = memory.resolve_budget(settings.memory_budget, about["capacity_bytes"])
    limit = memory.memory_limit(budget, settings.safety_margin)
    fraction = limit / about["capacity_bytes"] if device.type == "cuda" else None
    info("probe", f"{about['device']}: budget {human_bytes(budget)} ({settings.memory_budget}), limit "
                  f"{human_bytes(limit)} after the {settings.safety_margin:.0%} margin; candidates {kept}"
                  + (f"; capped at {num_train_examples} training examples: {capped}" if capped else ""))
    check_training_state_fits(params, about, budget, limit)
    below_batch_norm = []
    if about["has_batch_norm"]:
        info("probe", "the model has batch-norm layers: their statistics depend on the batch size (see the playbook)")
        # Training-mode batch norm needs two examples per channel: size 1 raises, it does not "not fit".
        below_batch_norm, kept = [b for b in kept if b < 2], [b for b in kept if b >= 2]
        if not kept:
            raise ConfigError(f"probe: received candidates {below_batch_norm}, but the model has batch norm, "
                              f"which cannot train on one example; allowed: batch sizes of at least 2")

    most = search.most_trials(kept, settings.bisect)
    progress = Progress("probe", f"trial (of at most {most})", most, every_s=0.0)  # a line per trial, with an ETA

    def fits(batch_size: int) -> bool:
        report = runner.run(("trial", batch_size, fraction, limit if device.type == "cpu" else None))
        rec = record_from_report(batch_size, report, limit, len(records) + 1)
        if report["result"] and report["result"].get("method"):
            methods.append(report["result"]["method"])
        records.append(rec)
        progress.update(len(records), f"batch size {batch_size}: {rec.status}, peak {human_bytes(rec.peak_memory_bytes)}, "
                                      f"{rec.steps_run} steps, {rec.seconds:.2f} s"
                                      + ("" if rec.status == "fits" else f"; {rec.rule + ': ' if rec.rule else ''}{rec.reason}"),
                        eta_s=search.trials_eta_s([r.seconds or 0.0 for r in records], most - len(records)))
        return rec.status == "fits"

    tried, best = search.search(kept, fits, settings.bisect)
    progress.finish(len(tried), f"largest size that fits: {best}")
    seconds = time.perf_counter() - start
    records += [TrialRecord(b, "capped", f"exceeds the {num_train_examples} training examples; not run") for b in capped]
    records += [TrialRecord(b, "capped", "batch norm cannot train on a single example (its batch statistics "
                                         "need at least 2); not run") for b in below_batch_norm]
    fitting = [r for r in records if r.status == "fits"]
    model = memory.fit_memory_model([r.batch_size for r in fitting], [r.peak_memory_bytes for r in fitting])
    unfit = memory.fit_problem(model, [r.batch_size for r in fitting], [r.peak_memory_bytes for r in fitting])
    failure = next((r for r in records if r.status in ("oom", "over_budget", "killed")), None)
    metrics = {
        "max_batch_size": best,
        "memory_budget_bytes": budget, "memory_limit_bytes": limit, "safety_margin": settings.safety_margin,
        "memory_budget_setting": settings.memory_budget,
        "memory_capacity_bytes": about["capacity_bytes"], "memory_capacity_source": about["capacity_source"],
        "memory_fixed_bytes": model.fixed_bytes, "memory_per_example_bytes": model.per_example_bytes,
        "memory_fit_r2": model.r2, "memory_model_fitted": unfit is None, "memory_model_problem": unfit,
        "predicted_max_batch_size": None if unfit else memory.predicted_max_batch_size(model, limit),
        "peak_memory_measure": methods[0] if methods else "",
        "device": about["device"], "device_type": device.type, "threads": about["threads"],
        "has_batch_norm": about["has_batch_norm"], "parameter_count": about["parameter_count"],
        "capped_at": num_train_examples if capped else None, "capped_batch_sizes": capped,
        "candidates": below_batch_norm + kept + capped, "tried_batch_sizes": tried, "fitting_batch_sizes": sorted(r.batch_size for r in fitting),
        "first_failure": None if failure is None else {"batch_size": failure.batch_size, "status": failure.status,
                                                       "rule": failure.rule, "reason": failure.reason},
        "bisect": settings.bisect, "steps": settings.steps, "optimizer": params.optimizer.name,
        "workload": params.workload.name, "isolation": runner.isolation, "isolation_note": runner.note,
        "seconds": seconds,
    }
    return ProbeOutcome(records, tried, best, metrics)


# ---------------------------------------------------------------------------- outputs

def write_outputs(outcome: ProbeOutcome) -> None:
    import pandas as pd

    from stages.core.io import write_csv, write_text

    frame = pd.DataFrame([asdict(r) for r in outcome.records]).sort_values("batch_size", kind="stable")
    for column in ("peak_memory_bytes", "peak_reserved_bytes", "baseline_memory_bytes", "trial"):
        frame[column] = frame[column].astype("Int64")
    # Prose (an out-of-memory message runs to hundreds of characters) goes to notes.md, numbers to metrics.json / diagnostics.json.
    metrics = {k: v for k, v in outcome.metrics.items()
               if k not in ("isolation_note", "peak_memory_measure", "memory_model_problem")}
    failure = metrics["first_failure"]
    if failure is not None:
        metrics["first_failure"] = {k: v for k, v in failure.items() if k != "reason"}
    notes = {"First size that did not fit": failure and f"Batch size {failure['batch_size']} ({failure['status']}): "
                                                         f"{failure['reason']}",
             "Peak memory": outcome.metrics.get("peak_memory_measure"),
             "Memory model": outcome.metrics.get("memory_model_problem") and (
                 f"Not fitted, so no predicted_max_batch_size: {outcome.metrics['memory_model_problem']}."),
             "Trial isolation": outcome.metrics.get("isolation_note"),
             "Memory plan": outcome.plan and plan.plan_markdown(outcome.plan, outcome.plan_fits,
                                                               outcome.metrics["safety_margin"])}
    plan_rows = plan.plan_frame(outcome.plan or [])
    write_csv(out.PROBE_CSV.path, frame)
    write_csv(out.PROBE_PLAN_CSV.path, plan_rows)
    out.write_results(out.PROBE_METRICS, out.PROBE_DIAGNOSTICS, metrics)
    write_text(out.PROBE_NOTES.path, out.notes_markdown(notes))
    plot_memory(frame, outcome.metrics, out.PROBE_PLOT.path, plan_rows, outcome.plan_fits or [])


def plot_memory(frame, metrics: dict, path: str, plan_rows=None, plan_fits=()) -> None:
    import numpy as np
    import seaborn as sns
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from stages.core import plotting

    fig, ax = plotting.figure("Peak memory by batch size", "batch size", "peak memory", logx=True, logy=True,
                               size=(8.4, 4.2))
    measured = frame[frame["peak_memory_bytes"].notna()].astype({"peak_memory_bytes": float})
    if len(measured):
        sns.scatterplot(data=measured, x="batch_size", y="peak_memory_bytes", hue="status", s=60, ax=ax,
                        palette={"fits": "tab:blue", "over_budget": "tab:orange"})
    limit = metrics["memory_limit_bytes"]
    failed = frame[frame["status"].isin(["oom", "killed"])]
    if len(failed):
        ax.scatter(failed["batch_size"], [limit] * len(failed), marker="x", color="tab:red", s=60,
                   label="oom / killed (no peak)")
    fixed, per_example = metrics["memory_fixed_bytes"], metrics["memory_per_example_bytes"]
    tried = frame[frame["status"] != "capped"]["batch_size"]
    if fixed is not None and per_example is not None and len(tried) and metrics.get("memory_model_fitted", True):
        xs = np.geomspace(tried.min(), tried.max(), 50)
        ys = fixed + per_example * xs
        ax.plot(xs[ys > 0], ys[ys > 0], color="tab:gray", lw=1,
                label=f"fit: {human_bytes(fixed)} + {human_bytes(per_example)} x B")
    if metrics["capped_at"] is not None:
        ax.axvline(metrics["capped_at"], ls="-.", color="tab:purple", lw=1,
                   label=f"training-set size {metrics['capped_at']} (larger sizes capped)")
    predicted = (plan_rows[plan_rows["status"] == "estimated"] if plan_rows is not None
                 else frame.iloc[0:0])
    if len(predicted):  # probe.plan_for: the fake-tensor estimate and each target's limit
        ax.plot(predicted["batch_size"], predicted["predicted_peak_bytes"].astype(float), marker="^", ms=5,
                color="tab:green", lw=1, label="predicted peak (fake tensors)")
        for i, f in enumerate(plan_fits):
            ax.axhline(f.limit_bytes, ls=(0, (5, 2 + i)), color="tab:green", lw=1,
                       label=f"plan {f.target.label}: limit {human_bytes(f.limit_bytes)}, fits up to {f.max_batch_size}")
    ax.axhline(limit, ls="--", color="tab:red", lw=1, label=f"limit {human_bytes(limit)}")
    ax.axhline(metrics["memory_budget_bytes"], ls=":", color="tab:gray", lw=1,
               label=f"budget {human_bytes(metrics['memory_budget_bytes'])}")
    xs = (list(frame["batch_size"]) + ([metrics["capped_at"]] if metrics["capped_at"] is not None else [])
          + list(predicted["batch_size"]))
    ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
    ax.yaxis.set_major_locator(LogLocator(base=2))  # ticks at 256 MiB, 512 MiB, 1 GiB, ...
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: human_bytes(y)))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    plotting.save(fig, path)


def main() -> None:
    from stages.core.context import setup
    from stages.pipeline.declaration import load_stage_params

    with TrialRunner() as runner:  # its server warms up (imports) while params.yaml is validated
        ctx = setup(params=load_stage_params("probe"))
        outcome = run_probe(ctx.params, ctx.device, ctx.workload.num_train_examples, runner)
    run_plan(ctx.params, ctx.workload, outcome, ctx.workload.num_train_examples)
    write_outputs(outcome)  # also when nothing fits: probe.csv records why each size failed
    best = outcome.max_batch_size
    if best is None:
        failure = outcome.metrics["first_failure"]
        raise StudyError(f"probe: no batch size fits: batch size {failure['batch_size']} was {failure['status']} "
                         f"({failure['reason']}); see {out.PROBE_CSV.path}; lower probe.min_batch_size, shrink the "
                         f"model, or raise probe.memory_budget")
    predicted = outcome.metrics["predicted_max_batch_size"]
    problem = outcome.metrics.get("memory_model_problem")
    model_says = (f"the memory model could not be fitted: {problem}" if problem
                  else "the memory model could not be fitted" if predicted is None
                  else f"the memory model predicts {predicted}")
    info("probe", f"max batch size {best} ({model_says}); "
                  f"wrote {out.PROBE_CSV.path}, {out.PROBE_METRICS.path}, {out.PROBE_PLOT.path}")

