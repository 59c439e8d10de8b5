# kickoff's Snakemake workflow. Its rules are built from stages/pipeline.py -- the same declaration
# dvc.yaml is rendered from -- so the two tools always agree on stages, commands, inputs, params and
# outputs (tests/test_pipeline_declaration.py checks it through both tools).
#
#   snakemake -c2                                   # run everything locally on 2 cores
#   snakemake -n                                    # what would run, and why
#   snakemake --profile profiles/slurm              # fan the scaling trials out on a SLURM cluster
#
# Each rule's `params:` holds the values of the params keys its stage reads, so Snakemake reruns
# it exactly when one of them changes; its inputs include its code and the workload's sources.
import sys

sys.path.insert(0, workflow.basedir)

from stages.pipeline import declaration as pipeline
from stages.core.config import validate
from stages.core.errors import ConfigError

configfile: "params.yaml"

try:  # the same validation the stages run, on the values Snakemake's YAML 1.1 loader produced
    PARAMS = validate(config, "params.yaml (as read by Snakemake)")
except ConfigError as e:
    raise WorkflowError(str(e)) from None

wildcard_constraints:
    batch_size=r"\d+",


def declare(s):
    """One rule per stage. A function, not a loop body: Snakemake evaluates `shell:` when the job
    runs, so a loop variable would hand every rule the last stage's command."""

    rule:
        name: s.name
        input: pipeline.snakemake_inputs(s, config)
        output: [report(o.path, category=s.name) if o.kind == "image" else o.path for o in s.outputs]  # PNGs go into `snakemake --report`
        params: **pipeline.tracked_params(s, config)
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
