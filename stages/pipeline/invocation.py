"""What kickoff takes from one `snakemake` command line beyond the rules: forced jobs, --config, storage.

Snakemake decides whether a job is planned; dvc.lock decides whether a planned job re-measures
(stages/pipeline/freshness.py: a job whose inputs came out as dvc.lock records them is skipped, as
`dvc repro` skips it). A job the user forces must re-measure all the same, as under `dvc repro --force`:

    snakemake --forceall          every job re-measures                      (dvc repro --force)
    snakemake -F select           select and every job it reads from         (dvc repro --force select)
    snakemake -f throughput       that job alone                             (dvc repro --force -s throughput)
    snakemake -R throughput       its jobs, then every job downstream whose  (dvc repro --force -s throughput,
                                  inputs came out changed                     then dvc repro)

Snakemake's own choice of forced jobs (the DAG's "forced" reason) is handed to the jobs in the
environment (`FORCED_ENV`, set in the Snakefile's onstart: local, cluster-generic and SLURM jobs inherit
it), and `python -m stages.pipeline.record --skip-if-current` never skips a job it names; each forced
job records itself in dvc.lock as every job does. Inputs are ancient() so that a missing stamp is the
only reason to plan a job; `-R` lifts that for the stamps of the forced jobs and what is downstream of
them (`rerun_stamps`), so Snakemake plans the downstream jobs and each one asks dvc.lock whether what it
reads changed.

`snakemake --config` and `--configfile` would change only what Snakemake plans with, never what the
stages read (params.yaml, tracked in dvc.lock): refused with one line saying how to change a setting.
A default storage provider (`default-storage-provider`, profiles/kubernetes) moves only each job's stamp
through object storage, never the stages' files or dvc.lock: refused with one line naming the shared
volume kickoff needs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from stages.core.errors import ConfigError
from stages.pipeline.declaration import ROOT, STAGES

FORCED_ENV = "KICKOFF_FORCED_JOBS"  # space-separated DVC job names Snakemake forces in this run


def forced_jobs() -> set[str]:
    """The jobs this Snakemake run forces (empty outside one, and in a run that forces none)."""
    return set(os.environ.get(FORCED_ENV, "").split())


def _dvc_name(job) -> str | None:
    """A Snakemake job as DVC names it ('scaling_trials@64'); None for the `all` rule."""
    s = next((s for s in STAGES if s.name == job.rule.name), None)
    if s is None:
        return None
    return f"{s.name}@{job.wildcards[s.foreach[0]]}" if s.foreach else s.name


def export_forced(workflow) -> set[str]:
    """Put the jobs Snakemake's DAG marks as forced (--forceall, -f, -R) into this process's
    environment, which every job it starts inherits; return them. Called from the Snakefile's onstart:
    the DAG exists, and no job has started."""
    dag = workflow.dag
    forced = {name for job in dag.needrun_jobs() if dag.reason(job).forced and (name := _dvc_name(job))}
    os.environ[FORCED_ENV] = " ".join(sorted(forced))
    return forced


def forced_run(workflow, params: dict) -> set[str]:
    """The jobs `-R/--forcerun` names (by rule or by stamp file), as DVC names them; empty without -R.
    Read while the DAG is built (workflow.dag_settings does not exist yet while the Snakefile is parsed)."""
    from stages.core.provenance import stamp_path
    from stages.pipeline.freshness import all_jobs

    named = set(getattr(getattr(workflow, "dag_settings", None), "forcerun", None) or ())
    return {job for job in all_jobs(params) if job.partition("@")[0] in named or str(stamp_path(job)) in named}


def rerun_stamps(workflow, params: dict) -> set[str]:
    """The stamps that must not be ancient() inputs in this run: those of the jobs `-R` forces and of every
    job downstream of them, so that Snakemake plans each reader after the job it reads from."""
    from stages.core.provenance import stamp_path
    from stages.pipeline.freshness import downstream

    forced = forced_run(workflow, params)
    return {str(stamp_path(job)) for job in downstream(forced, params)} if forced else set()


def check_config(workflow, root: Path = ROOT) -> None:
    """ConfigError if the command line carries --config or another --configfile than params.yaml: the
    stages would not see it."""
    settings = workflow.config_settings
    given = [f"{key}={json.dumps(value, default=str)}" for key, value in (settings.config or {}).items()]
    others = [str(f) for f in settings.configfiles or () if Path(f).resolve() != (root / "params.yaml").resolve()]
    if not given and not others:
        return
    received = " ".join([*(f"--config {g}" for g in given), *(f"--configfile {f}" for f in others)])
    raise ConfigError(f"snakemake {received}: received a setting on the command line; allowed: none -- kickoff's "
                      f"stages read params.yaml (recorded in dvc.lock), never Snakemake's config, so it would be "
                      f"ignored; change a setting in params.yaml (or `dvc exp run -S section.key=value`, or a "
                      f"profile: `python -m stages.pipeline --profile NAME`), then run snakemake again")


def check_shared_filesystem(workflow) -> None:
    """ConfigError if Snakemake is told to move files through a storage provider (the Kubernetes profile):
    kickoff's jobs read earlier stages' files and write their own and dvc.lock in the project folder,
    which every job must share."""
    storage = workflow.storage_settings
    provider = getattr(storage, "default_storage_provider", None)
    if provider:
        raise ConfigError(f"default-storage-provider: received {provider!r}; allowed: none -- kickoff's jobs need "
                          f"the project folder ({Path.cwd()}) on a volume every "
                          f"job shares (on Kubernetes a ReadWriteMany PersistentVolumeClaim mounted there in every "
                          f"pod), since they read and write the stages' files and dvc.lock in place and storage "
                          f"would carry only each job's stamp; run snakemake where the jobs share it "
                          f"(profiles/slurm, profiles/local-cluster, or `snakemake -c N` in one pod with the volume)")
