# kickoff's Snakemake workflow. Its rules are built from stages/pipeline/declaration.py -- the same declaration
# dvc.yaml is rendered from -- so the two tools always agree on stages, commands, inputs, params and
# outputs (tests/test_pipeline_declaration.py checks it through both tools).
#
#   snakemake -c2                                   # run everything locally on 2 cores
#   snakemake -n                                    # what would run, and why
#   snakemake --profile profiles/slurm              # fan the scaling trials out on a SLURM cluster
#
# Each rule's `params:` holds the values of the params keys its stage reads and a hash of its code
# and the workload's sources, so Snakemake reruns it when one of them changes by content, as DVC
# does. profiles/default/config.yaml (loaded by Snakemake by itself) drops the `mtime` rerun trigger
# and the inputs dvc.lock records unchanged are marked ancient (stages/pipeline/freshness.py): file
# times, which a fresh clone scrambles, would otherwise rerun the whole study.
import sys

from snakemake.settings.types import RerunTrigger

sys.path.insert(0, workflow.basedir)

from stages.pipeline import declaration as pipeline
from stages.pipeline import freshness
from stages.core.config import validate
from stages.core.context import check_sources
from stages.core.errors import ConfigError, KickoffError
from stages.core.model_choice import check_candidates
from stages.workloads.base import workload_factory

configfile: "params.yaml"

try:  # the same validation the stages run, on the values Snakemake's YAML 1.1 loader produced
    PARAMS = validate(config, "params.yaml (as read by Snakemake)")
    # and, before any job, the stages' checks that need no device and build nothing: Snakemake
    # deletes a job's outputs before running it, so a typo the job itself would catch costs them
    check_sources(PARAMS)
    workload_factory(PARAMS.workload.name, PARAMS.workload.kwargs)
    check_candidates(PARAMS.workload.name, PARAMS.workload.kwargs, PARAMS.family.candidates)
except ConfigError as e:
    raise WorkflowError(str(e)) from None

wildcard_constraints:
    batch_size=r"\d+",
    candidate=r"candidate\d+",


def inputs_of(s):
    """The rule's inputs, those dvc.lock records as unchanged marked ancient() -- unless `mtime` is a
    rerun trigger. Neither git nor DVC keeps file times, so on a fresh clone the committed results can
    look older than the code; and Snakemake 9 compares times even without the `mtime` trigger (its
    "Updated input files" check ignores the setting). An input edited since the recorded run, or
    written by a job that is not current, is compared by time as usual: both tools rerun the same
    rules. A function: the rerun triggers are known when the DAG is built, not when this is parsed.
    It also refuses to plan a job whose stage is running now (stages/core/lock.py)."""

    def inputs(wildcards):
        item = wildcards[s.foreach[0]] if s.foreach else None
        try:  # before Snakemake deletes the job's outputs under a run that is writing them
            freshness.check_not_running(s, item)
        except KickoffError as e:
            raise WorkflowError(str(e)) from None
        paths = pipeline.snakemake_inputs(s, config)
        if RerunTrigger.MTIME in workflow.rerun_triggers:
            return paths
        same = freshness.unchanged_inputs(s, item, config)
        return [ancient(f) if f in same else f for f in paths]

    return inputs


def declare(s):
    """One rule per stage. A function, not a loop body: Snakemake evaluates `shell:` when the job
    runs, so a loop variable would hand every rule the last stage's command."""

    rule:
        name: s.name
        input: inputs_of(s)
        # Not update(): it would keep the old outputs while a job runs and restore them if it fails,
        # but Snakemake then records the failed run's params for them -- a job that failed with new
        # params (killed, out of memory) would count as done. Params are checked above instead.
        output: [report(o.path, category=s.name) if o.kind == "image" else o.path for o in s.outputs]  # PNGs go into `snakemake --report`
        params: **freshness.snakemake_params(s, config)  # the params keys it reads, and its code's hash
        log: pipeline.snakemake_log(s)
        threads: PARAMS.runtime.threads if s.uses_workload else 1
        resources: **s.resources
        conda: "envs/kickoff.yaml"  # used with --software-deployment-method conda (clusters); `snakemake --lint` wants one
        shell: pipeline.snakemake_shell(s)


for _stage in pipeline.STAGES:
    declare(_stage)


rule all:
    default_target: True
    input: [o.path for s in pipeline.STAGES if not s.foreach for o in s.outputs]
