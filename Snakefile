# kickoff's Snakemake workflow. Its rules are built from stages/pipeline/declaration.py -- the same declaration
# dvc.yaml is rendered from -- so the two tools always agree on stages, commands, inputs, params and
# outputs (tests/test_pipeline_declaration.py checks it through both tools).
#
#   snakemake -c2                                   # run everything that is out of date, locally on 2 cores
#   snakemake -n                                    # what would run, and why
#   snakemake --profile profiles/slurm              # fan the scaling trials out on a SLURM cluster
#
# Its first job, `settings`, validates params.yaml and the active profiles and writes the settings in force
# (reports/settings/effective.yaml), where every other job tracks its keys; the Snakefile brings that file
# up to date before it plans (stages/core/effective.py), as `dvc repro` runs that stage first.
#
# What is up to date is what the committed dvc.lock says, for Snakemake as for DVC
# (stages/pipeline/freshness.py): before planning, the jobs `dvc status` lists and everything
# downstream of them lose their stamp (.kickoff/snakemake/, each rule's one declared output), every
# other job gets one, and each job records itself in dvc.lock when it has run. So a fresh clone, a
# clone with old `.snakemake/` metadata and a clone after `dvc repro` all plan exactly what `dvc
# status` says; and Snakemake never deletes a stage's real outputs (only its stamp). A job that
# --forceall, -f or -R forces re-measures, as under `dvc repro --force`; --config is refused (the stages
# read params.yaml), and so is a storage provider (the jobs need the project folder: a shared filesystem).
import os
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)

from stages.pipeline import declaration as pipeline
from stages.pipeline import freshness
from stages.pipeline import invocation
from stages.pipeline import recover
from stages.core import effective
from stages.core.config import read_raw, validate
from stages.core.errors import KickoffError
from stages.core.lock import hold_pipeline
from stages.core.profile import profiles_in

# No `configfile:`: Snakemake's loader reads YAML 1.1 (`1e-3` a string, a key given twice silently the
# last). params.yaml and the active profiles are read by kickoff's one reader, as every stage and the
# settings stage under DVC read them (stages/core/yamlfile.py); `config` holds only `--config` values.
BASE = Path(workflow.basedir)
try:  # the same validation the settings stage runs under DVC, before anything is planned
    if workflow.is_main_process:
        invocation.check_config(workflow)  # --config, --configfile: refused (stages/pipeline/invocation.py)
        recover.at_start(BASE)  # then a cut dvc.lock put back, a killed Snakemake's lock and marks cleared
    SOURCE = " + ".join(["params.yaml", *profiles_in(BASE)])
    RAW = read_raw(Path(os.path.relpath(BASE / "params.yaml")))  # params.yaml with the active profiles
    PARAMS = validate(RAW, SOURCE)
    pipeline.check_rendered(BASE)
    # and, before any job, the settings stage's checks that need no device and build nothing
    SETTINGS = effective.resolve(BASE)
    effective.check_static(SETTINGS, BASE, key=pipeline.static_key(BASE, SETTINGS.params))  # a pass is remembered
    if workflow.is_main_process:  # not again inside each cluster job: the main process planned it
        if (line := effective.summary(SETTINGS)):
            print(line, file=sys.stderr)  # which params.yaml keys the profiles override, with which values
        # the settings stage's files brought up to date first, as `dvc repro` runs that stage first, so that
        # the plan holds exactly the jobs whose settings in force changed
        freshness.sync_stamps(RAW, settings_current=effective.refresh(BASE, SETTINGS))
except KickoffError as e:
    raise WorkflowError(str(e)) from None

onstart:  # a real run, not a dry one: the pipeline is this process's until it ends (stages/core/lock.py)
    try:
        PIPELINE_LOCK = hold_pipeline("snakemake")
    except KickoffError as e:
        raise WorkflowError(str(e)) from None
    invocation.export_forced(workflow)  # the jobs --forceall/-f/-R force re-measure (stages/pipeline/invocation.py)


wildcard_constraints:
    batch_size=r"\d+",
    candidate=r"candidate\d+",


def inputs_of(s):
    """The rule's inputs (its code and sources, and the stamps of the jobs it reads from), ancient():
    a missing stamp is the only reason to run -- but for the stamps of jobs `-R` forces and of those
    downstream of them, so that their readers are planned too (stages/pipeline/invocation.py). A
    function, evaluated when the DAG is built: it refuses to plan a job whose stage is running now
    (stages/core/lock.py), or any job with a storage provider (stages/pipeline/invocation.py)."""

    def inputs(wildcards):
        item = wildcards[s.foreach[0]] if s.foreach else None
        try:
            freshness.check_not_running(s, item)
            invocation.check_shared_filesystem(workflow)  # before Snakemake maps the inputs to a storage provider
        except KickoffError as e:
            raise WorkflowError(str(e)) from None
        rerun = invocation.rerun_stamps(workflow, RAW)  # -R: the forced jobs' readers are planned after them
        return [f if f in rerun else ancient(f) for f in freshness.rule_inputs(s, RAW)]

    return inputs


def declare(s):
    """One rule per stage. A function, not a loop body: Snakemake evaluates `shell:` when the job
    runs, so a loop variable would hand every rule the last stage's command."""

    rule:
        name: s.name
        input: inputs_of(s)
        output: freshness.stamp_pattern(s)  # the stage's own outputs are written, atomically, by the stage
        params: **pipeline.tracked_params(s, RAW)  # the params keys it reads (shown in -n -p; dvc.lock decides)
        log: pipeline.snakemake_log(s)
        threads: PARAMS.runtime.threads if s.uses_workload else 1
        resources: **s.resources
        conda: "envs/kickoff.yaml"  # used with --software-deployment-method conda (clusters); `snakemake --lint` wants one
        shell: pipeline.snakemake_shell(s)


for _stage in pipeline.STAGES:
    declare(_stage)


rule all:
    default_target: True
    input: [str(freshness.provenance.stamp_path(job)) for job in freshness.all_jobs(RAW)]
