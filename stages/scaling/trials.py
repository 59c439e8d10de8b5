"""`python -m stages.scaling trials --batch-size B`: the learning-rate search at one batch size --
coarse grid, widening at an edge and refinement around the best (refine.py), then seeds for the
rates in contention -- one job of the scaling study's fan-out (scaling_trials@B).

Writes reports/scaling/trials/bs_{B}.csv (every trial; or one `skipped` row with the reason when the
probe or throughput stage rules the size out, or it exceeds the training set) and bs_{B}_curves.csv.
Finished trials are journalled in .kickoff/journal/scaling/ -- outside the outputs, which DVC deletes
before a run -- so an interrupted job resumes without redoing them.

With scaling.adaptive (the default) the study descends from the largest size (`descent`): the job at
size B first makes sure every larger size is searched -- largest first, each under a lock beside its
journal, so a search another job already ran replays from the journal and one it is running is waited
for -- and stops descending once two consecutive halvings are confirmed in perfect scaling (the
smaller size needs scaling.adaptive_ratio x the steps): then B, below them, is `predicted` (perfect
scaling from the smallest measured size) instead of trained, in a file with one `predicted` row. Every
job computes the same descent, so the jobs agree on which sizes are predicted whatever order they run
in; they effectively run one after another (adaptive: false makes them independent, for many devices).

What a size learns from its neighbours -- the first rate to try (`_neighbour_hint`: from the larger
sizes when adaptive, else the smaller) and the give-up point of its first trials (`first_trial_bound`)
-- comes from the neighbours' journals as they stand when its search starts: nothing there, no hint
and a first look at a fraction of max_steps (lr_search.first_look). Without adaptive, which trials run
then depends on the order the jobs ran in; the best rate and its steps do not (a bound that proves
too tight is raised, then lifted: lr_search.search).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import pandas as pd

from stages.core import io, lock
from stages.core import outputs as out
from stages.core import log
from stages.core.errors import ConfigError, KickoffError
from stages.core.context import Context, setup
from stages.search.journal import JOURNAL_DIR, Journal, journal_key
from stages.search.coarse import Bound, Trial, best_learning_rate, best_steps, first_look
from stages.search.tune import trial_identity, tune_learning_rate
from stages.core.optim import effective_learning_rate
from stages.scaling.descent import Prediction, descent_stop
from stages.scaling.plan import SearchProgress, plan_line, plan_table, throughput_times
from stages.scaling.tables import (TRIAL_COLUMNS, curve_rows, per_size_table, predicted_row, skip_reason, skipped_row,
                                   trial_row)
from stages.pipeline.declaration import load_stage_params

STAGE = "scaling"


# (id of the context, batch size) -> (the context, the path): hashing the code costs, and the descent
# asks again for every size; the context is kept so that its id is never another context's
_JOURNAL_PATHS: dict[tuple[int, int], tuple[Context, Path]] = {}


def journal_path(ctx: Context, batch_size: int) -> Path:
    key = (id(ctx), batch_size)
    if key not in _JOURNAL_PATHS:
        identity = trial_identity(ctx, batch_size, ctx.params.scaling.max_steps)
        _JOURNAL_PATHS[key] = (ctx, JOURNAL_DIR / f"bs_{batch_size}-{journal_key(identity)}.jsonl")
    return _JOURNAL_PATHS[key][1]


_READ: dict[Path, tuple[tuple[int, int], list[dict]]] = {}  # path -> ((mtime_ns, size), its entries)


def _journalled(ctx: Context, batch_size: int) -> list[dict]:
    """Another size's finished trials (its journal's entries; none without a journal), read once per
    version of the file: the plan, the hint and the bound of every size ask for every neighbour's."""
    path = journal_path(ctx, batch_size)
    try:
        st = path.stat()
    except FileNotFoundError:
        return []
    version = (st.st_mtime_ns, st.st_size)
    if path not in _READ or _READ[path][0] != version:
        _READ[path] = (version, list(Journal.open(path).entries.values()))
    return _READ[path][1]


def _best_journalled_rate(ctx: Context, batch_size: int) -> float | None:
    """Fewest steps at the search seed among the finished trials of another size (None: no journal)."""
    entries = [e for e in _journalled(ctx, batch_size)
               if e["seed"] == ctx.params.runtime.seed and e["result"]["steps_to_target"] is not None]
    if not entries:
        return None
    return min(entries, key=lambda e: (e["result"]["steps_to_target"], e["learning_rate"]))["learning_rate"]


def _journalled_steps(ctx: Context, batch_size: int) -> list[int] | None:
    """The steps to target over every seed of another size's best rate so far (its journal: the best
    by median over seed reruns where there are any, else at the search seed); None if nothing there
    reached the target. The best found so far needs at least as many steps as that size's optimum,
    so even a search still under way bounds it."""
    seed = ctx.params.runtime.seed
    rows = [(e["learning_rate"], "seed" if e["seed"] != seed else "coarse", e["result"]["steps_to_target"])
            for e in _journalled(ctx, batch_size)]
    lr = best_learning_rate(rows)
    if lr is None:
        return None
    steps = [st for rate, _, st in rows if rate == lr and st is not None]
    return steps or None


def measured_steps(ctx: Context) -> dict[int, float]:
    """Batch size -> the slowest seed's steps of its best rate so far, for every size whose journal
    has a rate that reached the target (the plan's input: stages/scaling/plan.py)."""
    return {b: float(max(st)) for b in ctx.params.scaling.batch_sizes if (st := _journalled_steps(ctx, b))}


def _time_per_step(batch_size: int) -> float | None:
    """Throughput's time per step at this size, for the plan line and the ETA before any trial trained;
    None where throughput has not run, did not time the size, or its table is not readable (a job's
    estimate must not stop it)."""
    try:
        if not out.THROUGHPUT_CSV.at().exists():
            return None
        return throughput_times(out.read_csv(out.THROUGHPUT_CSV)).get(batch_size)
    except KickoffError:
        return None


def first_trial_bound(ctx: Context, batch_size: int) -> Bound | None:
    """The most steps the best rate at this size can need, from the neighbouring sizes' journals, x
    scaling.give_up_margin (a neighbour's steps are a noisy measurement): with the rate retuned, steps
    to target never rise with the batch size (a smaller size bounds it with its own steps) and examples
    to target never fall as it shrinks (a larger size B' bounds it with its steps x B'/B: perfect
    scaling). The tightest of these (None where it reaches max_steps); when no neighbour has reached
    the target yet, a first look at a fraction of max_steps (lr_search.first_look)."""
    s = ctx.params.scaling
    candidates: list[tuple[float, str]] = []
    for other in s.batch_sizes:
        if other == batch_size or (steps := _journalled_steps(ctx, other)) is None:
            continue
        slowest = max(steps)
        if other < batch_size:
            candidates.append((slowest * s.give_up_margin,
                               f"bs {other} reached in {slowest} steps, x {s.give_up_margin:g}; steps to target never "
                               f"rise with the batch size"))
        else:
            candidates.append((slowest * other / batch_size * s.give_up_margin,
                               f"bs {other} reached in {slowest} steps, x {other}/{batch_size} (perfect scaling) x "
                               f"{s.give_up_margin:g}; examples to target never fall as the batch size shrinks"))
    if not candidates:  # nothing known: a first look, deepened while no rate reaches
        return first_look(s.max_steps)
    steps, why = min(candidates)
    return Bound(math.ceil(steps), why) if math.ceil(steps) < s.max_steps else None


def _neighbour_hint(ctx: Context, batch_size: int) -> float | None:
    """The rate predicted from the two nearest sizes already searched on the side the study comes
    from (their journals: the larger sizes with scaling.adaptive, else the smaller): their
    learning-rate exponent (clamped to [0, 1]: between no and linear scaling) extrapolated to this
    size; with one such size, its best scaled by the square root of the size ratio."""
    s = ctx.params.scaling
    if s.lr_start != "neighbour":
        return None
    side = (sorted(b for b in s.batch_sizes if b > batch_size) if s.adaptive
            else sorted((b for b in s.batch_sizes if b < batch_size), reverse=True))
    known: list[tuple[int, float]] = []
    for other in side:
        rate = _best_journalled_rate(ctx, other)
        if rate is not None:
            known.append((other, rate))
        if len(known) == 2:
            break
    if not known:
        return None
    (b1, lr1), exponent = known[0], 0.5
    if len(known) == 2:
        b2, lr2 = known[1]
        exponent = min(1.0, max(0.0, math.log(lr1 / lr2) / math.log(b1 / b2)))
    return lr1 * (batch_size / b1) ** exponent


def _start(ctx: Context, batch_size: int, journal: Journal | None) -> tuple[float | None, Bound | None]:
    """The search's starting rate and first-trial bound, from the neighbours' journals as they stand now --
    or, where this size's journal already holds trials (a rerun, a resume), those its first run started
    with (kept beside the journal): the neighbours may have finished since, and a rerun must replay."""
    start_file = journal.path.with_suffix(".start.json") if journal is not None else None
    if start_file is not None and journal.entries and start_file.is_file():
        try:
            recorded = json.loads(start_file.read_text())
            bound = recorded["bound"]
            return recorded["hint"], (Bound(int(bound["steps"]), str(bound["why"])) if bound else None)
        except (ValueError, KeyError, TypeError):
            pass  # unreadable: start afresh (the trials whose keys match still replay)
    hint = _neighbour_hint(ctx, batch_size)
    bound = first_trial_bound(ctx, batch_size) if ctx.params.scaling.early_stopping else None
    if start_file is not None:
        start_file.parent.mkdir(parents=True, exist_ok=True)  # local state beside the journal, not an output
        start_file.write_text(json.dumps({"hint": hint, "bound": bound and {"steps": bound.steps, "why": bound.why}}))
    return hint, bound


def run_trials(ctx: Context, batch_size: int, journal: Journal | None, replays: bool = True,
               studied: list[int] | None = None) -> list[Trial]:
    """The learning-rate search at this size (stages/search/tune.py), started near the rate the
    neighbouring sizes predict; first its bill (the plan's line for this size), then one line per
    trial with an ETA (`replays` False: none for the trials replayed from the journal). `studied`:
    the sizes the earlier stages did not rule out (default: all), for the plan."""
    s = ctx.params.scaling
    per_step = _time_per_step(batch_size)
    plan = plan_table([batch_size], measured_steps(ctx), {batch_size: per_step} if per_step else {}, s,
                      all_sizes=studied or list(s.batch_sizes)).iloc[0]
    say = replays or journal is None or not journal.entries  # another size's search being replayed: its last line only
    if say:
        log.info(STAGE, f"bs {batch_size}: plan: {plan_line(plan)}")
    progress = SearchProgress(f"bs {batch_size}", float(plan["steps_to_target"]), s, per_step, stage=STAGE)
    hint, bound = _start(ctx, batch_size, journal)
    if hint and say:
        log.info(STAGE, f"bs {batch_size}: starting near lr {hint:.4g} (predicted from the "
                        f"{'larger' if s.adaptive else 'smaller'} batch sizes)")
    if say:
        log.info(STAGE, f"bs {batch_size}: first trials give up at step "
                        f"{bound.steps if bound else s.max_steps} "
                        f"({bound.why if bound else 'max_steps: the neighbouring sizes say the best rate may need that many'})")
    trials = tune_learning_rate(ctx.workload, ctx.params.optimizer, batch_size, ctx.device, s,
                                ctx.params.runtime.seed, s.max_steps, journal=journal, hint=hint,
                                bound=bound, stage=STAGE,
                                on_trial=progress if replays else (lambda t: progress.count(t) if t.resumed else progress(t)))
    progress.finish(f"{sum(t.result.examples_run for t in trials)} examples, plan: {plan['examples']}")
    return trials


def size_steps(ctx: Context, batch_size: int, trials: list[Trial]) -> float | None:
    """A searched size's steps to target as the scaling table will state them (median over the best
    rate's seeds; None unless the size reached the target at a rate inside the searched range)."""
    rows = [trial_row(batch_size, t, ctx.params.scaling.max_steps, ctx.workload.target_metric, t.learning_rate)
            for t in trials]
    row = per_size_table(pd.DataFrame(rows, columns=TRIAL_COLUMNS), [batch_size],
                         ctx.params.scaling.eval_resolution, intervals=False).iloc[0]
    return float(row["steps_to_target"]) if row["status"] == "reached" and pd.notna(row["steps_to_target"]) else None


def search_size(ctx: Context, batch_size: int, replays: bool = True, studied: list[int] | None = None) -> list[Trial]:
    """One size's search, under a lock beside its journal: whichever job comes first runs it, the
    others wait and replay it from the journal."""
    path = journal_path(ctx, batch_size)
    say = lambda text: log.info(STAGE, f"bs {batch_size}: {text}")  # noqa: E731
    with lock.waiting(path.with_suffix(".lock"), f"the search at bs {batch_size}", say):
        journal = Journal.open(path)
        if journal.entries and replays:
            say(f"resuming, {len(journal.entries)} finished trials in {journal.path}")
        return run_trials(ctx, batch_size, journal, replays=replays, studied=studied)


def descent(ctx: Context, batch_size: int, reason_of: Callable[[int], str | None]) -> tuple[list[Trial], Prediction | None]:
    """scaling.adaptive: the sizes from the largest down to `batch_size` (those the earlier stages did
    not rule out), each searched (or replayed) in turn, until two consecutive halvings are confirmed
    in perfect scaling: then ([], the prediction for `batch_size`); else (its own trials, None)."""
    s = ctx.params.scaling
    measured: list[tuple[int, float | None]] = []
    studied = [b for b in s.batch_sizes if reason_of(b) is None]
    for b in sorted((b for b in studied if b >= batch_size), reverse=True):
        why = descent_stop(measured, s.adaptive_ratio)
        if why is not None:
            smallest, steps = measured[-1]
            predicted = steps * smallest / batch_size
            return [], Prediction(predicted, (
                f"predicted, not trained (scaling.adaptive): {why}; perfect scaling from bs {smallest} "
                f"({steps:.0f} steps) gives {predicted:.0f} steps here, and a smaller batch in perfect scaling trains "
                f"no faster and no cheaper, so it is never chosen (scaling.adaptive: false trains it)"))
        if b != batch_size:
            log.info(STAGE, f"bs {batch_size}: adaptive descent: bs {b} first (the larger sizes decide whether "
                            f"this one is trained)")
        trials = search_size(ctx, b, replays=b == batch_size, studied=studied)
        if b == batch_size:
            return trials, None
        measured.append((b, size_steps(ctx, b, trials)))
        log.info(STAGE, f"bs {batch_size}: bs {b} needs "
                        f"{'no steps (did not reach)' if measured[-1][1] is None else f'{measured[-1][1]:.0f} steps'}")
    raise AssertionError(f"bs {batch_size} is not among the sizes the descent searches")


def skip_reasons(ctx: Context) -> Callable[[int], str | None]:
    """Batch size -> why the earlier stages rule it out (None: study it). Their verdicts are optional
    (the study can run alone), but a file that exists is checked."""
    probe_rows, probe_metrics, throughput_metrics = (
        reader(o) if o.at().exists() else None for reader, o in ((out.read_csv, out.PROBE_CSV),
                                                             (out.read_json, out.PROBE_METRICS),
                                                             (out.read_json, out.THROUGHPUT_METRICS)))
    return lambda b: skip_reason(b, probe_rows, probe_metrics, throughput_metrics, ctx.workload.num_train_examples)


def main_trials(batch_size: int) -> None:
    ctx = setup(params=load_stage_params("scaling_trials"))
    s, w = ctx.params.scaling, ctx.workload
    if batch_size not in s.batch_sizes:
        raise ConfigError(f"--batch-size: received {batch_size}; allowed: one of scaling.batch_sizes {s.batch_sizes}")
    csv_path, curves_path = out.SCALING_TRIALS.at(batch_size=batch_size), out.SCALING_TRIAL_CURVES.at(batch_size=batch_size)
    reason_of = skip_reasons(ctx)
    no_curves = pd.DataFrame(columns=["batch_size", "learning_rate", "seed", "phase", "examples", "step"])
    if (reason := reason_of(batch_size)) is not None:
        log.info(STAGE, f"bs {batch_size}: skipped ({reason})")
        io.write_csv(csv_path, pd.DataFrame([skipped_row(batch_size, reason)], columns=TRIAL_COLUMNS))
        io.write_csv(curves_path, no_curves)
        return
    if s.adaptive:
        trials, prediction = descent(ctx, batch_size, reason_of)
        if prediction is not None:
            log.info(STAGE, f"bs {batch_size}: {prediction.why}")
            io.write_csv(csv_path, pd.DataFrame([predicted_row(batch_size, prediction.steps, prediction.why)],
                                                columns=TRIAL_COLUMNS))
            io.write_csv(curves_path, no_curves)
            return
    else:
        trials = search_size(ctx, batch_size, studied=[b for b in s.batch_sizes if reason_of(b) is None])
    rows = [trial_row(batch_size, t, s.max_steps, w.target_metric,
                      effective_learning_rate(ctx.params.optimizer, t.learning_rate)) for t in trials]
    curves = [row for t in trials for row in curve_rows(batch_size, t)]
    best = best_steps([t.result for t in trials if t.phase != "seed"])
    log.info(STAGE, f"bs {batch_size}: best steps to target {best} over {len(trials)} trials")
    io.write_csv(csv_path, pd.DataFrame(rows, columns=TRIAL_COLUMNS))
    io.write_csv(curves_path, pd.DataFrame(curves))


def main_plan() -> None:
    """`python -m stages.scaling plan`: the study's estimated cost per size, before it runs."""
    ctx = setup(params=load_stage_params("scaling_trials"))
    s = ctx.params.scaling
    measured = measured_steps(ctx)
    timing = throughput_times(out.read_csv(out.THROUGHPUT_CSV)) if out.THROUGHPUT_CSV.at().exists() else {}
    reason_of = skip_reasons(ctx)
    studied = [b for b in s.batch_sizes if reason_of(b) is None]
    table = plan_table(studied, measured, timing, s)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    known = table["seconds"].notna()
    skipped = [b for b in s.batch_sizes if b not in studied]
    predicted = table.loc[table["trials"] == 0, "batch_size"].tolist()
    log.info("scaling", f"plan: {int(table['trials'].sum())} trials, {int(table['examples'].sum())} examples, "
                        f"about {table.loc[known, 'seconds'].sum():.0f} s of training"
                        f"{'' if known.all() else ' (sizes without a throughput time per step not counted)'}"
                        f"{f'; skipped by the earlier stages: {skipped}' if skipped else ''}"
                        f"{f'; predicted, not trained: {predicted}' if predicted else ''}"
                        f"{'; an upper end: no size has measured its steps yet' if not measured else ''}"
                        f"{'; an upper end: scaling.adaptive will predict the sizes below two halvings in perfect scaling, not train them' if s.adaptive and not predicted and set(studied) - set(measured) else ''}")
