"""Snakemake's view of what is up to date: exactly `dvc status`'s, read from the committed dvc.lock.

Snakemake's own record (`.snakemake/`) stays on the machine that ran it: on a fresh clone it has
none and misses every change to params or code, and after a `dvc repro` its record is out of date.
So kickoff's Snakefile decides nothing by Snakemake's record or by file times. Its rules declare
one stamp each (`.kickoff/snakemake/<job>.done`, never committed) as their output, and before
Snakemake plans anything `sync_stamps` makes the stamps a projection of dvc.lock: a job that
`dvc status` lists (stages/core/provenance.py), or that reads from one, loses its stamp and so
runs; every other job has one. Every input is ancient(), and profiles/default/config.yaml leaves
only the `mtime` trigger, so a missing stamp is the one reason to run. A job, after its stage,
records itself in dvc.lock (`python -m stages.pipeline.record`), so `dvc status` is clean after
a Snakemake run, and `snakemake -n` plans nothing after a `dvc repro`.

The stamps, not the stages' real outputs, are what Snakemake deletes before a job runs and
leaves deleted when it fails: the committed results are never touched by Snakemake, and a stage
writes its own outputs atomically, after its checks.
"""
from __future__ import annotations

import sys
from base64 import urlsafe_b64encode
from pathlib import Path

from stages.core import provenance
from stages.pipeline.declaration import ROOT, STAGES, Stage, deps_of, items_of, present, snakemake_inputs

SETTINGS = "settings"  # the first job: its outputs are where the others track their settings


def job_name(s: Stage, item=None) -> str:
    return f"{s.name}@{item}" if s.foreach else s.name


def all_jobs(params: dict) -> list[str]:
    return [job_name(s, item) for s in STAGES if present(s, params)
            for item in (items_of(s, params) if s.foreach else [None])]


def producer_of(path: str, params: dict) -> str | None:
    """The job (as DVC names it) that writes `path`, or None for code, sources and params."""
    for t in STAGES:
        for item in (items_of(t, params) if t.foreach else [None]):
            if path in (o.path.replace(f"{{{t.foreach[0]}}}", str(item)) if t.foreach else o.path for o in t.outputs):
                return job_name(t, item)
    return None


def upstream_jobs(s: Stage, params: dict) -> list[str]:
    """The jobs whose outputs stage `s` reads (every item of a fan-out it gathers)."""
    jobs: list[str] = []
    for path in snakemake_inputs(s, params):
        job = producer_of(path, params)
        if job and job not in jobs:
            jobs.append(job)
    return jobs


def downstream(jobs: set[str], params: dict) -> set[str]:
    """`jobs` and every job that reads from one of them, transitively."""
    readers = {job_name(s, item): set(upstream_jobs(s, params)) for s in STAGES if present(s, params)
               for item in (items_of(s, params) if s.foreach else [None])}
    closure, grew = set(jobs), True
    while grew:
        grew = False
        for job, ups in readers.items():
            if job not in closure and ups & closure:
                closure.add(job)
                grew = True
    return closure


def rule_inputs(s: Stage, params: dict) -> list[str]:
    """The rule's inputs: its code and workload sources, and the stamps of the jobs it reads from
    (which order the jobs; whether a job runs is decided by its own stamp alone)."""
    earlier = {i.path for i in s.inputs}
    code = [d for d in deps_of(s, params) if d not in earlier]
    return code + [str(provenance.stamp_path(job)) for job in upstream_jobs(s, params)]


def stamp_pattern(s: Stage) -> str:
    return str(provenance.stamp_path(job_name(s, f"{{{s.foreach[0]}}}" if s.foreach else None)))


def _forget_incomplete(stamp: Path, root: Path) -> None:
    """A stamp made afresh must not carry Snakemake's 'incomplete' mark of a failed run: the job it
    stands for is current per dvc.lock (put back as it was, or recorded by `dvc repro` since)."""
    marker = root / ".snakemake" / "incomplete" / urlsafe_b64encode(str(stamp).encode()).decode()
    marker.unlink(missing_ok=True)


def sync_stamps(params: dict, root: Path = ROOT, log=sys.stderr, settings_current: bool = True) -> set[str]:
    """Give every job that is current per dvc.lock its stamp and take it from every other; return
    the jobs to run (`dvc status`'s list and everything downstream of it). No job reads the settings
    stage's files as an input: each tracks its own keys in the effective file, which the Snakefile
    brings up to date before planning (stages/core/effective.refresh) -- so `dvc status` lists exactly
    the jobs whose settings changed. Where it could not (`settings_current` false), every job is planned
    after a settings change, and each is skipped at run time if dvc.lock records it current."""
    jobs = all_jobs(params)
    changed = provenance.stale(root) & set(jobs)
    to_run = downstream(changed, params)
    if not settings_current and SETTINGS in changed:
        to_run = set(jobs)
    for job in jobs:
        stamp = root / provenance.stamp_path(job)
        if job in to_run:
            stamp.unlink(missing_ok=True)
        elif not stamp.exists():
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.touch()
            _forget_incomplete(provenance.stamp_path(job), root)
    if to_run:
        later = sorted(to_run - changed)
        print(f"kickoff: dvc.lock records {len(jobs) - len(to_run)} of {len(jobs)} jobs as up to date; "
              f"changed since: {', '.join(sorted(changed))}" + (f"; downstream of them: {', '.join(later)}" if later else ""),
              file=log)
    return to_run


def check_not_running(s: Stage, item=None, root: Path = ROOT) -> None:
    """LockedError if the job's stage command is running now (by `dvc repro`, another Snakemake, by
    hand): two runs of one stage would mix their outputs."""
    from stages.core.lock import LOCK_DIR, check_not_running as check, lock_name

    cmd = s.cmd.replace(f"{{{s.foreach[0]}}}", str(item)) if s.foreach else s.cmd
    _python, _m, module, *args = cmd.split()
    what = module.rsplit(".", 1)[-1]  # as each stage's __main__ names itself to run_main
    check(lock_name(what, args), " ".join([what, *args]), root / LOCK_DIR)

