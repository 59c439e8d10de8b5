"""Stage `family`: the model configuration to start from -- among the candidate overrides of
workload.kwargs in `family.candidates`, the smallest (or fastest) that reaches the target with its
learning rate tuned, all compared at one batch size (docs/family.md).

    python -m stages.family trial --candidate candidate0   # one job per candidate (family_trial@candidate0)
    python -m stages.family choose                          # the choice: reports/family/model.yaml

A trial job measures its candidate (parameters, FLOPs per example, time per step) and runs the
scaling study's learning-rate search (stages/search/tune.py) at the comparison batch size, capped at
family.max_steps; it writes reports/family/trials/candidateN.csv (one row; a candidate that does not
fit or crashes is recorded with the reason). Finished search trials are journalled in
.kickoff/journal/family/, so an interrupted or repeated job replays them. `choose` reads every
candidate's row, checks it belongs to the current candidates, applies family.rule and writes
candidates.csv, model.yaml (the chosen overrides and the merged kwargs the later stages train),
metrics.json (the choice and its parameter count), diagnostics.json (its rate, steps
and time) and candidates.png. With family.candidates null it writes model.yaml saying that
workload.kwargs is used as given.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
import traceback
from pathlib import Path

import pandas as pd
import yaml

from stages.core import advice, io, log, plotting
from stages.core import outputs as out
from stages.core.context import Context, setup
from stages.core.device import classify_exception
from stages.core.declared import replace_sections
from stages.core.cli import ArgumentParser
from stages.core.errors import ConfigError, InputError, KickoffError
from stages.search.journal import Journal, journal_key
from stages.search.coarse import best_learning_rate, final_metric_score
from stages.core.model_choice import candidate_key, check_candidates, merged_kwargs
from stages.core.progress import Progress
from stages.search.tune import search_range, trial_identity, trial_text, tune_learning_rate
from stages.family.choose import choose
from stages.family.measure import flops_per_example, size_of, time_per_step_s
from stages.pipeline.declaration import load_stage_params
from stages.workloads.base import workload_factory

STAGE = "family"
JOURNAL_DIR = Path(".kickoff") / "journal" / "family"
DEFAULT_BATCH_SIZE = 64
COLUMNS = list(out.FAMILY_TABLE.columns)
FAMILY_RERUN_ALL = "dvc repro family (or snakemake family)"  # what rewrites every candidate's row


def comparison_batch_size(setting: int | None, num_train_examples: int | None) -> int:
    """family.batch_size, or 64 -- lowered to the largest power of two at most a quarter of the
    training set, so every candidate sees several batches per epoch."""
    if setting is not None:
        return setting
    if num_train_examples is None or num_train_examples >= 4 * DEFAULT_BATCH_SIZE:
        return DEFAULT_BATCH_SIZE
    return max(1, 2 ** int(math.floor(math.log2(max(1, num_train_examples // 4)))))


def overrides_text(overrides: dict) -> str:
    return json.dumps(overrides, sort_keys=True)


def blank_row(name: str, overrides: dict, batch_size: int, max_steps: int, **fields) -> dict:
    """A candidate's row with every declared column, the identity filled in."""
    return ({c: None for c in COLUMNS} | {"candidate": name, "overrides": overrides_text(overrides),
                                          "batch_size": batch_size, "max_steps": max_steps, "reason": ""} | fields)


def parse_candidate(candidate: str, candidates: list[dict] | None) -> int:
    if candidates is None:
        raise ConfigError(f"--candidate: received {candidate!r}, but family.candidates is null (the family stage is "
                          f"skipped); set family.candidates and run `python -m stages.pipeline`")
    m = re.fullmatch(r"candidate(\d+)", candidate)
    if not m or int(m.group(1)) >= len(candidates):
        raise ConfigError(f"--candidate: received {candidate!r}; allowed: candidate0 to candidate{len(candidates) - 1} "
                          f"(one per entry of family.candidates)")
    return int(m.group(1))


# ---------------------------------------------------------------------------- one candidate

def _seed_steps(trials, learning_rate: float) -> list[int | None]:
    return [t.result.steps_to_target for t in trials if t.learning_rate == learning_rate]


def target_of(w) -> advice.Target:
    return advice.Target(w.target_metric, w.target_value, w.target_direction)


def family_limits(max_steps: int, lr_min: float | None = None, lr_max: float | None = None) -> advice.Limits:
    """The settings the family's advice names: its own step cap and batch size, scaling's rate range
    (whose values only the trial jobs read)."""
    return advice.Limits("family.max_steps", max_steps, lr_min, lr_max, batch_size_key="family.batch_size",
                         model_key="family.candidates")


def most_trials(s) -> int:
    """An upper bound on one learning-rate search's trials (the search stops early, so it is rarely reached):
    the coarse grid, the widening on either side, the refinement, the seed reruns (successive halving)."""
    r = search_range(s, "sgd")
    grid_step = (r.high / r.low) ** (1 / (s.lr_points - 1)) if s.lr_points > 1 and r.high > r.low else 2.0
    widen = 2 * math.ceil(math.log(s.lr_widen_factor) / math.log(grid_step)) if s.lr_widen_factor > 1 else 0
    seeds, contenders = 0, s.rerun_top
    for k in range(s.seeds):
        contenders = contenders if k == 0 else max(1, math.ceil(contenders / 2))
        seeds += contenders
    return s.lr_points + widen + s.lr_refine_trials + seeds


def candidate_progress(progress: Progress):
    """tune_learning_rate's on_trial: the trial in words on a progress line with the ETA."""
    count = [0]

    def on_trial(t) -> None:
        count[0] += 1
        progress.update(min(count[0], progress.total), trial_text(t))
    return on_trial


def measure_candidate(ctx: Context, name: str, overrides: dict, batch_size: int, max_steps: int) -> dict:
    """The candidate's row: its size and cost, then the learning-rate search at `batch_size`."""
    w, p, seed = ctx.workload, ctx.params, ctx.params.runtime.seed
    row = blank_row(name, overrides, batch_size, max_steps, parameters=size_of(w, seed))
    if w.num_train_examples is not None and batch_size > w.num_train_examples:
        return row | {"status": "failed", "reason": f"batch size {batch_size} exceeds the training set "
                                                    f"({w.num_train_examples} examples); set family.batch_size lower"}
    row["flops_per_example"] = flops_per_example(w, p.optimizer, batch_size, ctx.device, seed, STAGE)
    journal = Journal.open(JOURNAL_DIR / f"{name}-{journal_key(trial_identity(ctx, batch_size, max_steps))}.jsonl")
    most = most_trials(p.scaling)
    progress = Progress(STAGE, f"{name} {overrides_text(overrides)} bs {batch_size}: trial (of at most {most})", most,
                        every_s=0.0)  # a line per trial, with an ETA from the trials so far
    trials = tune_learning_rate(w, p.optimizer, batch_size, ctx.device, p.scaling, seed, max_steps,
                                journal=journal, stage=STAGE, label=f"{name} {overrides_text(overrides)} bs {batch_size}",
                                on_trial=candidate_progress(progress))
    progress.finish(len(trials))
    score = final_metric_score(w.target_metric, w.target_direction)
    closest = min((t.result for t in trials), key=score)  # the trial that got closest to (or furthest past) the target
    row["final_metric"] = closest.final_metrics.get(w.target_metric, math.nan)
    row["trials"] = len(trials)
    lr = best_learning_rate([(t.learning_rate, t.phase, t.result.steps_to_target) for t in trials])
    row["time_per_step_s"] = time_per_step_s(w, p.optimizer, lr or search_range(p.scaling, p.optimizer.name).low, batch_size, ctx.device, seed)
    if lr is None:  # why, and the one change that fits (stages/core/advice.py), opened by the class's label
        runs = [advice.Run(t.result.outcome, t.learning_rate, t.result.steps_run, max_steps,
                           t.result.final_metrics.get(w.target_metric, math.nan), t.result.reason) for t in trials]
        why = advice.why_not_reached(runs, target_of(w), family_limits(max_steps, *dataclasses.astuple(search_range(p.scaling, p.optimizer.name))[:2]))
        return row | {"status": "not_reached", "reason": f"{why.label}: {why.message}"}
    steps = _seed_steps(trials, lr)
    row["learning_rate"] = lr
    if any(s is None for s in steps):
        return row | {"status": "not_reached",
                      "reason": f"at its best learning rate {lr:.3g}, {sum(s is not None for s in steps)} of "
                                f"{len(steps)} seeds reached the target within {max_steps} steps"}
    median = statistics.median_low(steps)
    return row | {"status": "reached", "steps_to_target": median, "steps_low": min(steps), "steps_high": max(steps),
                  "time_to_target_s": median * row["time_per_step_s"]}


def main_trial(candidate: str) -> None:
    params = load_stage_params("family_trial")
    fam = params.family
    index = parse_candidate(candidate, fam.candidates)
    overrides = fam.candidates[index]
    check_candidates(params.workload.name, params.workload.kwargs, [overrides])
    kwargs = merged_kwargs(params.workload.kwargs, overrides)
    ctx = setup(params=replace_sections(params, workload=dataclasses.replace(params.workload, kwargs=kwargs)),
                family_choice=False)
    batch_size = comparison_batch_size(fam.batch_size, ctx.workload.num_train_examples)
    log.info(STAGE, f"{candidate} {overrides_text(overrides)}: learning-rate search at batch size {batch_size}, "
                    f"at most {fam.max_steps} steps per trial")
    try:
        row = measure_candidate(ctx, candidate, overrides, batch_size, fam.max_steps)
    except KickoffError:
        raise
    except Exception as e:  # out of memory (CUDA's or the CPU allocator's: stages/core/device.py), or the
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""  # candidate's own code crashed
        if classify_exception(e):
            row = blank_row(candidate, overrides, batch_size, fam.max_steps, status="out_of_memory",
                            reason=f"{advice.LABELS['out_of_memory']}: at batch size {batch_size} ({first}); "
                                   f"lower family.batch_size")
        else:  # recorded (with the traceback on stderr), never chosen
            log.info(STAGE, f"{candidate} crashed:\n{traceback.format_exc()}")
            row = blank_row(candidate, overrides, batch_size, fam.max_steps, status="failed",
                            reason=f"{type(e).__name__}: {first}")
    log.info(STAGE, f"{candidate}: {row['status']}"
                    + (f" in {row['steps_to_target']} steps at lr {row['learning_rate']:.3g}" if row["status"] == "reached"
                       else f" ({row['reason']})"))
    io.write_csv(out.FAMILY_TRIAL.at(candidate=candidate), pd.DataFrame([row], columns=COLUMNS))


# ---------------------------------------------------------------------------- the choice

def read_trials(candidates: list[dict], max_steps: int, batch_size: int | None) -> pd.DataFrame:
    """Every candidate's row, checked to be the result for the current candidate and settings."""
    rows = []
    for i, overrides in enumerate(candidates):
        name = candidate_key(i)
        frame = out.read_csv(out.FAMILY_TRIAL, candidate=name)
        path, rerun = out.FAMILY_TRIAL.at(candidate=name), out.FAMILY_TRIAL.rerun(candidate=name)
        if len(frame) != 1:
            raise InputError(path, f"holds {len(frame)} rows; allowed: exactly one", rerun)
        row = frame.iloc[0]
        stale = []
        if row["candidate"] != name or row["overrides"] != overrides_text(overrides):
            stale.append(f"candidate {row['candidate']} {row['overrides']} (now {name} {overrides_text(overrides)})")
        if row["max_steps"] != max_steps:
            stale.append(f"max_steps {row['max_steps']:g} (now {max_steps})")
        if batch_size is not None and row["batch_size"] != batch_size:
            stale.append(f"batch size {row['batch_size']:g} (now {batch_size})")
        if stale:
            raise InputError(path, f"holds the result for {'; '.join(stale)}: it is stale", rerun)
        rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS).reset_index(drop=True)
    if table["batch_size"].nunique() > 1:
        raise InputError(out.FAMILY_TRIAL.at(candidate="*"), f"compare different batch sizes {sorted(table['batch_size'].unique())}; "
                                                             f"allowed: one", FAMILY_RERUN_ALL)
    return table


def plot(table: pd.DataFrame, chosen: int | None, path) -> None:
    """Steps and time to target against parameter count (log axes), the seed range as error bars;
    candidates that missed the target at the step cap, the chosen one circled."""
    fig, axes = plotting.panels(["Steps to target", "Time to target"], "parameters",
                                ["steps to target", "time to target (s)"], logx=True, logy=True)
    reached = table[table["status"] == "reached"]
    missed = table[(table["status"] != "reached") & table["parameters"].notna()]
    for ax, scale in zip(axes, (1.0, None)):
        if len(reached):
            per_step = 1.0 if scale else reached["time_per_step_s"]
            y, low, high = (reached["steps_to_target"] * per_step, reached["steps_low"] * per_step,
                            reached["steps_high"] * per_step)
            ax.errorbar(reached["parameters"], y, yerr=[y - low, high - y], fmt="o", capsize=3,
                        label="reached (range over seeds)")
            for _, r in reached.iterrows():
                ax.annotate(r["overrides"], (r["parameters"], r["steps_to_target"] * (1.0 if scale else r["time_per_step_s"])),
                            textcoords="offset points", xytext=(5, 5), fontsize=7)
        if chosen is not None:
            c = table.loc[chosen]
            ax.scatter([c["parameters"]], [c["steps_to_target"] * (1.0 if scale else c["time_per_step_s"])], s=220,
                       facecolors="none", edgecolors="black", linewidths=1.5, label="chosen", zorder=3)
    if len(missed):  # at the step cap: they did not reach the target within it
        axes[0].scatter(missed["parameters"], missed["max_steps"], marker="x", color="C3", s=60,
                        label="not reached (at the step cap)")
        for _, r in missed.iterrows():
            axes[0].annotate(r["overrides"], (r["parameters"], r["max_steps"]), textcoords="offset points",
                             xytext=(5, 5), fontsize=7)
    from matplotlib.ticker import FuncFormatter, NullFormatter

    for ax in axes:  # parameter counts as plain numbers, room for the labels
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.25, y=0.12)
    if len(table):
        axes[0].legend(loc="best", fontsize=8)
    else:
        axes[0].text(0.5, 0.5, "family stage skipped\n(family.candidates: null)", transform=axes[0].transAxes,
                     ha="center")
    plotting.save(fig, path)


def main_choose() -> None:
    params = load_stage_params("family")
    fam, wl = params.family, params.workload
    model = {"workload": wl.name, "base_kwargs": dict(wl.kwargs), "candidates": fam.candidates, "rule": fam.rule}
    try:  # the workload as given must be valid even when skipped: every later stage builds it
        workload_factory(wl.name, wl.kwargs)
    except ConfigError as e:
        raise ConfigError(f"params.yaml: {e}") from None
    if fam.candidates is None:
        table = pd.DataFrame(columns=COLUMNS)
        choice_index, metrics = None, {"candidates": 0, "reached": 0}
        model |= {"chosen": None, "overrides": {}, "kwargs": dict(wl.kwargs)}
        reasoning = "family.candidates is null: the family stage is skipped and workload.kwargs is the model."
    else:
        check_candidates(wl.name, wl.kwargs, fam.candidates)
        table = read_trials(fam.candidates, fam.max_steps, fam.batch_size)
        choice = choose(table, fam.rule, family_limits(fam.max_steps))  # StudyError (nothing written) when no candidate reached the target
        c = table.loc[choice.index]
        choice_index = choice.index
        overrides = fam.candidates[choice.index]
        model |= {"chosen": c["candidate"], "overrides": overrides, "kwargs": merged_kwargs(wl.kwargs, overrides),
                  "parameters": int(c["parameters"])}
        reasoning = choice.reasoning
        metrics = {"candidates": len(table), "reached": int((table["status"] == "reached").sum()),
                   "chosen_index": choice.index, "chosen_parameters": int(c["parameters"]),
                   "chosen_flops_per_example": float(c["flops_per_example"]),
                   "chosen_learning_rate": float(c["learning_rate"]), "chosen_steps_to_target": int(c["steps_to_target"]),
                   "chosen_time_to_target_s": float(c["time_to_target_s"]), "batch_size": int(c["batch_size"])}
        log.info(STAGE, f"chose {c['candidate']} {c['overrides']} ({fam.rule}): {int(c['parameters'])} parameters, "
                        f"{int(c['steps_to_target'])} steps to target")
    header = ("# The model configuration chosen by `python -m stages.family choose` (docs/family.md).\n"
              "# `kwargs` is what probe, throughput, scaling and select build the workload with; the\n"
              "# measurements are in candidates.csv, the reasoning in reasoning.md.\n")
    io.write_csv(out.FAMILY_TABLE.at(), table)
    out.write_results(out.FAMILY_METRICS, out.FAMILY_DIAGNOSTICS, metrics)
    plot(table, choice_index, out.FAMILY_PLOT.at())
    plain = json.loads(json.dumps(model))  # no YAML anchors where the chosen overrides repeat a candidate
    io.write_text(out.FAMILY_REASONING.at(), f"# Which model configuration, and why\n\n{reasoning}\n")
    io.write_text(out.FAMILY_MODEL.at(), header + yaml.safe_dump(plain, sort_keys=False, default_flow_style=None))


def parser() -> ArgumentParser:
    """The command line (its errors are one line: stages/core/cli.ArgumentParser)."""
    ap = ArgumentParser(prog="python -m stages.family", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("trial", help="measure one candidate and tune its learning rate at the comparison batch size")
    t.add_argument("--candidate", required=True, help="candidate0, candidate1, ... (position in family.candidates)")
    sub.add_parser("choose", help=f"apply family.rule to every candidate's result; write {out.FAMILY_MODEL.path}")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "trial":
        main_trial(args.candidate)
    else:
        main_choose()
