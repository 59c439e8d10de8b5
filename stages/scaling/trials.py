"""The scaling study's jobs, wave by wave (stages/scaling/waves.py says which does what and why):

    python -m stages.scaling coarse --batch-size B   # wave 1 (scaling_wave1@B): the coarse search, nothing known
    python -m stages.scaling gaps                    # wave2.json: wave 2's sizes, predicted or searched from a prior
    python -m stages.scaling fill --batch-size B     # wave 2 (scaling_wave2@B): the coarse search from that prior
    python -m stages.scaling contenders              # contenders.json: the sizes wave 3 refines, and why
    python -m stages.scaling trials --batch-size B   # wave 3 (scaling_trials@B): refinement, hold and seeds, or
                                                     # the coarse answer as it is
    python -m stages.scaling plan                    # the study's bill before it runs (plan.py)

A coarse job writes reports/scaling/wave{1,2}/bs_{B}.csv (every trial of its search, or one `skipped` /
`predicted` row) and bs_{B}_curves.csv; a wave-3 job writes reports/scaling/trials/bs_{B}.csv with every
trial at its size, the coarse ones first. Finished trials are journalled in .kickoff/journal/scaling/ --
outside the outputs -- so an interrupted job resumes without training them again, and the trials a
coarse job found best are kept in .kickoff/checkpoints/scaling/ so that wave 3 holds them from where
they stopped (on another machine, without the checkpoint, it trains them again to that point: the same
seed trains the same way).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import pandas as pd

from stages.core import io, log
from stages.core import outputs as out
from stages.core.errors import ConfigError, InputError, KickoffError
from stages.core.types import NOT_TRAINED
from stages.pipeline.declaration import load_stage_params, wave_sizes
from stages.scaling.plan import plan_line, plan_table, throughput_times
from stages.scaling.tables import (TRIAL_COLUMNS, curve_rows, per_size_table, predicted_row, skip_reason, skipped_row,
                                   trial_row)
from stages.scaling.waves import Answer, answers, plan_contenders, plan_gaps

STAGE = "scaling"
CHECKPOINT_DIR = Path(".kickoff") / "checkpoints" / "scaling"
NO_CURVES = ["batch_size", "learning_rate", "seed", "phase", "examples", "step"]


def wave_of(params, batch_size: int) -> int:
    first, _ = wave_sizes(list(params.scaling.batch_sizes), params.scaling.adaptive)
    return 1 if batch_size in first else 2


def coarse_outputs(wave: int) -> tuple[out.Output, out.Output]:
    return (out.SCALING_WAVE1, out.SCALING_WAVE1_CURVES) if wave == 1 else (out.SCALING_WAVE2, out.SCALING_WAVE2_CURVES)


def check_size(params, batch_size: int, wave: int | None = None) -> None:
    s = params.scaling
    if batch_size not in s.batch_sizes:
        raise ConfigError(f"--batch-size: received {batch_size}; allowed: one of scaling.batch_sizes {s.batch_sizes}")
    if wave is not None and wave_of(params, batch_size) != wave:
        first, second = wave_sizes(list(s.batch_sizes), s.adaptive)
        raise ConfigError(f"--batch-size: received {batch_size}, which is not in wave {wave}; allowed: "
                          f"{first if wave == 1 else second} (wave 1: {first}, wave 2: {second})")


# ---------------------------------------------------------------------------- the context of a search

def journal_key_of(ctx, batch_size: int) -> str:
    from stages.search.journal import journal_key
    from stages.search.tune import trial_identity

    return journal_key(trial_identity(ctx, batch_size, ctx.params.scaling.max_steps))


def skip_reasons(ctx) -> Callable[[int], str | None]:
    """Batch size -> why the earlier stages rule it out (None: study it). Their verdicts are optional
    (the study can run alone), but a file that exists is checked."""
    probe_rows, probe_metrics, throughput_metrics = (
        reader(o) if o.at().exists() else None for reader, o in ((out.read_csv, out.PROBE_CSV),
                                                             (out.read_json, out.PROBE_METRICS),
                                                             (out.read_json, out.THROUGHPUT_METRICS)))
    return lambda b: skip_reason(b, probe_rows, probe_metrics, throughput_metrics, ctx.workload.num_train_examples)


def _time_per_step(batch_size: int) -> float | None:
    """Throughput's time per step at this size (the ETA's first guess); None where it is not known."""
    try:
        if not out.THROUGHPUT_CSV.at().exists():
            return None
        return throughput_times(out.read_csv(out.THROUGHPUT_CSV)).get(batch_size)
    except KickoffError:
        return None


def _write_trials(csv: Path, curves: Path, ctx, batch_size: int, trials: list, prior: str = "",
                  priors: dict | None = None) -> None:
    """The trials' rows and learning curves; `prior`: where the coarse search started from (its rows say
    so), or `priors` per (rate, seed) -- wave 3 keeps what the coarse rows said."""
    from stages.core.optim import effective_learning_rate

    s, w = ctx.params.scaling, ctx.workload
    rows = [trial_row(batch_size, t, s.max_steps, w.target_metric, effective_learning_rate(ctx.params.optimizer, t.learning_rate),
                      (priors or {}).get((t.learning_rate, t.seed), prior))
            for t in trials]
    io.write_csv(csv, pd.DataFrame(rows, columns=TRIAL_COLUMNS))
    io.write_csv(curves, pd.DataFrame([row for t in trials for row in curve_rows(batch_size, t)], columns=None)
                 if trials else pd.DataFrame(columns=NO_CURVES))


def _one_row(csv: Path, curves: Path, row: dict) -> None:
    io.write_csv(csv, pd.DataFrame([row], columns=TRIAL_COLUMNS))
    io.write_csv(curves, pd.DataFrame(columns=NO_CURVES))


class RungProgress:
    """The coarse search's progress: one line per rung, with an ETA once the pilot's leader shows how fast
    the size moves towards the target (its steps to target extrapolated from its learning curve)."""

    def __init__(self, label: str, time_per_step_s: float | None, max_steps: int, target):
        from stages.core.progress import duration

        self.label, self.per_step, self.max_steps, self.target, self.duration = label, time_per_step_s, max_steps, target, duration
        self.expected: float | None = None

    def __call__(self, step: int, trials: list) -> None:
        from stages.search.coarse import extrapolate_steps

        racing = [t for t in trials if t.result.outcome == "paused"]
        reached = [t for t in trials if t.result.outcome == "reached"]
        lead = min(reached, key=lambda t: t.result.steps_to_target) if reached else None
        spent = sum(t.result.steps_run for t in trials)
        seconds = sum(t.result.seconds for t in trials)
        per_step = seconds / spent if spent else self.per_step
        if lead is None and racing:
            best = min(racing, key=lambda t: t.result.final_metrics.get(self.target.metric, math.nan)
                       * (-1 if self.target.direction == "above" else 1))
            self.expected = extrapolate_steps(best.result, self.target, self.max_steps) or self.expected
        where = (f"lr {lead.learning_rate:.4g} reached at step {lead.result.steps_to_target}" if lead else
                 f"nothing reached yet" + (f"; the leader's curve points to about {self.expected:.0f} steps"
                                           if self.expected else ""))
        eta = ""
        if per_step and (lead or self.expected) and racing:
            goal = lead.result.steps_to_target if lead else self.expected
            left = sum(max(0.0, goal - t.result.steps_run) for t in racing)
            eta = f", about {self.duration(left * per_step)} left"
        pruned = sum(t.result.outcome == "pruned" or "pruned at" in t.result.reason for t in trials)
        log.info(STAGE, f"{self.label} rung {step}: {len(racing)} rate(s) racing, {where}"
                        + (f", {pruned} pruned" if pruned else "") + eta)


# ---------------------------------------------------------------------------- waves 1 and 2: the coarse search

def previous_prior(ctx, batch_size: int):
    """The previous study's answer at this size, as a prior: its best rate, the steps it needed and how
    finely the rate was known -- read from the results in the workspace (reports/scaling/, committed:
    a fresh clone of the same commit starts from the same), when they were made for the same workload and
    target metric. Only where the search starts (which rates, how long the first rung); every number the
    study reports is measured anew. None where there is nothing usable."""
    from stages.search.tune import Prior

    steps_file, diagnostics = Path(out.SCALING_STEPS.path), Path(out.SCALING_DIAGNOSTICS.path)
    try:
        table, made = pd.read_csv(steps_file), json.loads(diagnostics.read_text())
        w = ctx.workload
        if made.get("workload") != w.name or made.get("target_metric") != w.target_metric:
            return None
        row = table[(table["batch_size"] == batch_size) & (table["status"] == "reached")]
        if row.empty:
            return None
        r = row.iloc[0]
        rate, steps = float(r["best_learning_rate"]), float(r["steps_to_target"])
        spacing = float(r["lr_resolution_ratio"]) if "lr_resolution_ratio" in r and pd.notna(r["lr_resolution_ratio"]) else None
    except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    if not (math.isfinite(rate) and rate > 0 and math.isfinite(steps) and steps > 0):
        return None
    return Prior(rate, steps, f"the previous study ({steps_file}: lr {rate:.3g}, {steps:.0f} steps at this size)",
                 spacing if spacing and math.isfinite(spacing) else None)


def main_coarse(batch_size: int, wave: int) -> None:
    """Wave 1 or 2 at one size: the coarse search (from wave2.json's prior in wave 2), or the row that
    says why it is not searched (skipped by the earlier stages, predicted by wave2.json)."""
    from stages.core.context import setup
    from stages.search.journal import JOURNAL_DIR, Journal
    from stages.search.tune import Prior, coarse, make_pool, target_of

    ctx = setup(params=load_stage_params(f"scaling_wave{wave}"))
    s = ctx.params.scaling
    check_size(ctx.params, batch_size, wave)
    csv_out, curves_out = coarse_outputs(wave)
    csv, curves = csv_out.at(batch_size=batch_size), curves_out.at(batch_size=batch_size)
    if (reason := skip_reasons(ctx)(batch_size)) is not None:
        log.info(STAGE, f"bs {batch_size}: skipped ({reason})")
        _one_row(csv, curves, skipped_row(batch_size, reason))
        return
    prior = previous_prior(ctx, batch_size) if s.lr_start == "neighbour" else None
    if wave == 2:
        plan = out.read_json(out.SCALING_WAVE2_PLAN)["sizes"].get(str(batch_size))
        if plan is None:
            raise InputError(out.SCALING_WAVE2_PLAN.at(), f"has no plan for batch size {batch_size}", out.SCALING_WAVE2_PLAN_CMD)
        if plan["action"] == "predict":
            log.info(STAGE, f"bs {batch_size}: {plan['why']}")
            _one_row(csv, curves, predicted_row(batch_size, plan["steps"], plan["why"]))
            return
        if plan.get("prior") and s.lr_start == "neighbour" and prior is None:  # this study's neighbours, else the last study's
            prior = Prior(plan["prior"]["rate"], plan["prior"]["steps"], plan["prior"]["source"])
    allowance = budget_share(ctx, batch_size)
    key = journal_key_of(ctx, batch_size)
    journal = Journal.open(JOURNAL_DIR / f"bs_{batch_size}-{key}.jsonl")
    if journal.entries:
        log.info(STAGE, f"bs {batch_size}: resuming, {len(journal.entries)} finished advances in {journal.path}")
    log.info(STAGE, f"bs {batch_size}: wave {wave}, the coarse search "
                    + (f"around lr {prior.rate:.4g} ({prior.source}; about {prior.steps:.0f} steps expected)" if prior
                       else "over the whole grid (nothing known yet)"))
    pool = make_pool(ctx.workload, ctx.params.optimizer, batch_size, ctx.device, s, ctx.params.runtime.seed,
                     s.max_steps, journal=journal)
    progress = RungProgress(f"bs {batch_size}", _time_per_step(batch_size), s.max_steps, target_of(ctx.workload))
    if allowance is not None:
        log.info(STAGE, f"bs {batch_size}: its share of scaling.budget_seconds for the coarse search: {allowance:.3g} s")
    trials = coarse(pool, ctx.workload, s, ctx.params.optimizer.name, ctx.params.runtime.seed, s.max_steps,
                    prior=prior, on_rung=progress, allowance_s=allowance)
    kept = CHECKPOINT_DIR / f"bs_{batch_size}-{key}"
    for t in trials:  # the rates wave 3 may hold go on from here there
        if t.result.outcome == "reached":
            pool.save(t.learning_rate, t.seed, kept / f"{t.learning_rate!r}-{t.seed}.pt")
    reached = [t for t in trials if t.result.outcome == "reached"]
    best = min(reached, key=lambda t: t.result.steps_to_target) if reached else None
    log.info(STAGE, f"bs {batch_size}: coarse answer "
                    + (f"lr {best.learning_rate:.4g}, {best.result.steps_to_target} steps" if best else "none (no rate reached)")
                    + f" -- {len(trials)} trials, {sum(t.result.examples_run for t in trials)} examples")
    _write_trials(csv, curves, ctx, batch_size, trials,
                  f"lr {prior.rate:.4g} from {prior.source}" if prior else "the whole grid: nothing known")


def budget_share(ctx, batch_size: int) -> float | None:
    """This size's share of scaling.budget_seconds for its coarse search (plan.coarse_allowance), after
    refusing a budget the pilot alone would exceed (None: no budget)."""
    from stages.scaling.plan import check_budget, coarse_allowance
    from stages.search.tune import first_rung

    s = ctx.params.scaling
    if s.budget_seconds is None:
        return None
    reason_of = skip_reasons(ctx)
    studied = [b for b in s.batch_sizes if reason_of(b) is None]
    timing = throughput_times(out.read_csv(out.THROUGHPUT_CSV)) if out.THROUGHPUT_CSV.at().exists() else {}
    if (why := check_budget(studied, timing, first_rung(s, s.max_steps, None), s)) is not None:
        raise ConfigError(why)
    expected = {b: p.steps for b in studied if (p := previous_prior(ctx, b)) is not None}
    return coarse_allowance(batch_size, studied, expected, timing, s)


def coarse_table(params, sizes: list[int], waves: tuple[int, ...]) -> pd.DataFrame:
    """The coarse trials of `sizes` from the waves' files (each checked: complete, its own size only)."""
    frames = []
    for b in sizes:
        wave = wave_of(params, b)
        if wave not in waves:
            continue
        csv_out, _ = coarse_outputs(wave)
        frames.append(out.read_csv(csv_out, batch_size=b, expect_batch_sizes=[b], allow_repeats=True))
    return pd.concat(frames, ignore_index=True)[TRIAL_COLUMNS] if frames else pd.DataFrame(columns=TRIAL_COLUMNS)


def main_gaps() -> None:
    """wave2.json: what wave 2 does at each of its sizes, from wave 1's coarse answers."""
    params = load_stage_params("scaling_gaps")
    s = params.scaling
    first, second = wave_sizes(list(s.batch_sizes), s.adaptive)
    trials = coarse_table(params, first, (1,))
    table = per_size_table(trials, first, s.eval_resolution, intervals=False)
    timing = throughput_times(out.read_csv(out.THROUGHPUT_CSV)) if out.THROUGHPUT_CSV.at().exists() else {}
    plans = plan_gaps(answers(table), second, adaptive=s.adaptive, ratio=s.adaptive_ratio,
                      use_neighbours=s.lr_start == "neighbour", time_per_step_s=timing, factor=s.contender_factor)
    for b, plan in plans.items():
        log.info(STAGE, f"wave 2, bs {b}: {plan['why']}")
    io.write_json(out.SCALING_WAVE2_PLAN.path, {"wave1": first, "wave2": second,
                                                "sizes": {str(b): plan for b, plan in plans.items()}})


# ---------------------------------------------------------------------------- between waves 2 and 3

def coarse_b_crit(table: pd.DataFrame) -> float | None:
    """B_crit fitted to the coarse answers (no interval: it only says where the curve bends)."""
    from stages.scaling.fit import FitError, fit_critical_batch_size

    reached = table[(table["status"] == "reached") & table["steps_to_target"].notna()]
    if len(reached) < 3:
        return None
    try:
        fit = fit_critical_batch_size(reached["batch_size"], reached["steps_to_target"], bootstrap=10)
    except FitError:
        return None
    return fit.critical_batch_size if fit.kind == "estimate" else None


def main_contenders() -> None:
    """contenders.json: which sizes wave 3 refines, and why (waves.plan_contenders)."""
    params = load_stage_params("scaling_contenders")
    s = params.scaling
    trials = coarse_table(params, list(s.batch_sizes), (1, 2))
    table = per_size_table(trials, list(s.batch_sizes), s.eval_resolution, intervals=False)
    timing = throughput_times(out.read_csv(out.THROUGHPUT_CSV)) if out.THROUGHPUT_CSV.at().exists() else {}
    b_crit = coarse_b_crit(table)
    plans = plan_contenders(table, timing, factor=s.contender_factor, adaptive=s.adaptive, b_crit=b_crit)
    spent = float(trials["seconds"].fillna(0).sum())
    if s.budget_seconds is not None:
        from stages.scaling.plan import search_steps
        from stages.scaling.waves import share_budget

        cost = {b: (search_steps(p["coarse_steps"], s, seeds=p.get("seeds", True))
                    - search_steps(p["coarse_steps"], s, False)) * timing.get(b, 0.0)
                for b, p in plans.items() if p.get("refine")}
        plans = share_budget(plans, s.budget_seconds - spent, cost)
        log.info(STAGE, f"scaling.budget_seconds {s.budget_seconds:g}: the coarse waves spent {spent:.3g} s, "
                        f"{max(0.0, s.budget_seconds - spent):.3g} s left for wave 3")
    for b, plan in plans.items():
        log.info(STAGE, f"wave 3, bs {b}: {plan['why']}")
    # the coarse waves' seconds only where a budget shares them: a clock reading would change the file at every
    # rerun, and with it every job that reads it
    io.write_json(out.SCALING_CONTENDERS.path, {"objective": params.select.objective, "contender_factor": s.contender_factor,
                                                "coarse_critical_batch_size": b_crit,
                                                **({"budget_seconds": s.budget_seconds, "coarse_seconds": spent}
                                                   if s.budget_seconds is not None else {}),
                                                "sizes": {str(b): plan for b, plan in plans.items()}})


# ---------------------------------------------------------------------------- wave 3

def _coarse_trials(rows: pd.DataFrame, curves: pd.DataFrame, target_metric: str) -> list:
    """The coarse search's trials as the search knows them, from its files (results and learning curves)."""
    from stages.search.coarse import Trial
    from stages.search.result import TrialResult

    trials = []
    extra = {"batch_size", "learning_rate", "seed", "phase", "examples"}
    for r in rows[~rows["outcome"].isin(NOT_TRAINED)].itertuples():
        part = curves[(curves["learning_rate"] == r.learning_rate) & (curves["seed"] == r.seed)] if len(curves) else curves
        curve = [{k: (int(v) if k == "step" else float(v)) for k, v in row.items() if k not in extra and pd.notna(v)}
                 for row in part.sort_values("step").to_dict("records")] if len(part) else []
        steps = None if pd.isna(r.steps_to_target) else int(r.steps_to_target)
        final = {target_metric: float(r.final_metric)} if pd.notna(r.final_metric) else {}
        result = TrialResult(r.outcome, steps, int(r.steps_run), int(r.examples_run), float(r.seconds), final, curve,
                             str(r.reason) if pd.notna(r.reason) else "")
        give_up = None if pd.isna(r.give_up_after) else int(r.give_up_after)
        trials.append(Trial(float(r.learning_rate), int(r.seed), r.phase, int(r.order), give_up, result, True))
    return trials


def main_trials(batch_size: int) -> None:
    """Wave 3 at one size: where contenders.json says so, refinement, the hold of the rates in contention
    and extra seeds, after the coarse trials; elsewhere the coarse trials as they are (in about a second)."""
    params = load_stage_params("scaling_trials")
    s = params.scaling
    check_size(params, batch_size)
    wave = wave_of(params, batch_size)
    csv_out, curves_out = coarse_outputs(wave)
    rows = out.read_csv(csv_out, batch_size=batch_size, expect_batch_sizes=[batch_size], allow_repeats=True)
    curves = out.read_csv(curves_out, batch_size=batch_size)
    plan = out.read_json(out.SCALING_CONTENDERS)["sizes"].get(str(batch_size), {"refine": False, "why": "not studied"})
    target_csv, target_curves = out.SCALING_TRIALS.at(batch_size=batch_size), out.SCALING_TRIAL_CURVES.at(batch_size=batch_size)
    if not plan.get("refine"):
        log.info(STAGE, f"bs {batch_size}: {plan['why']}")
        io.write_csv(target_csv, rows[TRIAL_COLUMNS])
        io.write_csv(target_curves, curves if len(curves) else pd.DataFrame(columns=NO_CURVES))
        return
    from stages.core.context import setup
    from stages.search.journal import JOURNAL_DIR, Journal
    from stages.search.trial import LiveTrial
    from stages.search.tune import finish, make_pool, trial_settings, trial_text

    ctx = setup(params=params)
    w, seed = ctx.workload, ctx.params.runtime.seed
    key = journal_key_of(ctx, batch_size)
    log.info(STAGE, f"bs {batch_size}: {plan['why']}")
    found = _coarse_trials(rows, curves, w.target_metric)
    journal = Journal.open(JOURNAL_DIR / f"bs_{batch_size}-{key}.wave3.jsonl")
    pool = make_pool(w, ctx.params.optimizer, batch_size, ctx.device, s, seed, s.max_steps, journal=journal)
    kept = CHECKPOINT_DIR / f"bs_{batch_size}-{key}"
    for t in found:
        if t.result.outcome == "reached":
            pool.adopt(t.learning_rate, t.seed, _adopted(ctx, batch_size, t, kept / f"{t.learning_rate!r}-{t.seed}.pt",
                                                         pool, LiveTrial, trial_settings), last=t.result)
    count = [0]

    def line(t) -> None:
        count[0] += 1
        log.info(STAGE, f"bs {batch_size} {trial_text(t)} [wave 3, trial {count[0]}]")

    seeds = plan.get("seeds", True)  # False: refined only for B_crit's fit -- it cannot win
    trials = finish(found, pool, w, s, ctx.params.optimizer.name, seed, s.max_steps, seeds=seeds,
                    refine_trials=s.lr_refine_trials if seeds else s.fit_refine_trials,
                    budget_margin=ctx.params.select.step_budget_margin, on_trial=line,
                    allowance_s=plan.get("budget_seconds"))
    log.info(STAGE, f"bs {batch_size}: {len(trials)} trials, {sum(t.result.examples_run for t in trials)} examples "
                    f"({len(found)} of them the coarse search's)")
    _write_trials(target_csv, target_curves, ctx, batch_size, trials,
                  priors={(float(r.learning_rate), int(r.seed)): r.prior if isinstance(r.prior, str) else ""
                          for r in rows.itertuples()})


def _adopted(ctx, batch_size: int, trial, path: Path, pool, LiveTrial, trial_settings):
    """How wave 3 gets a coarse trial back where the coarse job left it: its checkpoint, if it is the
    same trial (its steps and crossing match the coarse file), else trained again to there."""
    import torch

    s, seed = ctx.params.scaling, ctx.params.runtime.seed

    def load() -> LiveTrial:
        want = (trial.result.steps_run, trial.result.steps_to_target)
        if path.is_file():
            try:
                state = torch.load(path, weights_only=False)
                live = LiveTrial.from_state(state, ctx.workload, ctx.params.optimizer, ctx.device, s.max_steps,
                                            **trial_settings(s, seed, trial.seed, state["hold_factor"]))
                if (live.step, live.steps_to_target) == want:
                    return live
            except Exception as e:  # a cut or foreign checkpoint: train again instead
                log.info(STAGE, f"bs {batch_size}: checkpoint {path} not usable ({type(e).__name__}); training lr "
                                f"{trial.learning_rate:.4g} again to where the coarse search stopped it")
        live = pool.make(trial.learning_rate, trial.seed)
        live.advance()
        return live

    return load


# ---------------------------------------------------------------------------- the bill

def measured_steps(ctx) -> dict[int, float]:
    """Batch size -> the steps of its best rate so far, from the coarse waves' files where they exist."""
    found: dict[int, float] = {}
    for b in ctx.params.scaling.batch_sizes:
        csv_out, _ = coarse_outputs(wave_of(ctx.params, b))
        if not csv_out.at(batch_size=b).exists():
            continue
        try:
            rows = out.read_csv(csv_out, batch_size=b)
        except KickoffError:
            continue
        table = per_size_table(rows, [b], ctx.params.scaling.eval_resolution, intervals=False)
        answer = answers(table)[b]
        if answer.steps is not None:
            found[b] = answer.steps
    return found


def main_plan() -> None:
    """`python -m stages.scaling plan`: the study's estimated cost per size, before it runs."""
    from stages.core.context import setup

    ctx = setup(params=load_stage_params("scaling_trials"))
    s = ctx.params.scaling
    measured = measured_steps(ctx)
    timing = throughput_times(out.read_csv(out.THROUGHPUT_CSV)) if out.THROUGHPUT_CSV.at().exists() else {}
    reason_of = skip_reasons(ctx)
    studied = [b for b in s.batch_sizes if reason_of(b) is None]
    table = plan_table(studied, measured, timing, s)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    if s.budget_seconds is not None:
        from stages.scaling.plan import check_budget
        from stages.search.tune import first_rung

        why = check_budget(studied, timing, first_rung(s, s.max_steps, None), s)
        bill = table.loc[table["seconds"].notna(), "seconds"].sum()
        log.info("scaling", why or (f"scaling.budget_seconds {s.budget_seconds:g}: "
                                    + (f"fits the estimated bill ({bill:.3g} s)" if bill <= s.budget_seconds else
                                       f"below the estimated bill ({bill:.3g} s, an upper end while no size has measured its "
                                       f"steps): what it cannot resolve -- searches cut short, refinement or seeds skipped -- "
                                       f"the report will say")))
    known = table["seconds"].notna()
    skipped = [b for b in s.batch_sizes if b not in studied]
    log.info("scaling", f"plan: {int(table['trials'].sum())} trials, {int(table['examples'].sum())} examples, "
                        f"about {table.loc[known, 'seconds'].sum():.0f} s of training"
                        f"{'' if known.all() else ' (sizes without a throughput time per step not counted)'}"
                        f"{f'; skipped by the earlier stages: {skipped}' if skipped else ''}"
                        f"{'; an upper end: no size has measured its steps yet' if not measured else ''}")
