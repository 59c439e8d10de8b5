"""`python -m stages`: validate params.yaml as every stage does (values, the workload's sources, the
workload itself, the device, and that dvc.yaml was rendered from it) and print the resolved values
with defaults filled in; with a profile active, first one line (stderr) saying which params.yaml keys
it overrides with which values; then name any job no longer declared whose results are still here (a
batch size or candidate dropped: `python -m stages.pipeline` removes them, stages/pipeline/orphans.py)."""
from stages.core.cli import no_arguments, run_main  # first: a package missing here is then one line

import sys  # noqa: E402

import yaml  # noqa: E402


def main() -> None:
    from stages.core.context import setup
    from stages.core.errors import ConfigError
    from stages.core.model_choice import check_candidates

    from pathlib import Path

    from stages.core import effective

    settings = effective.resolve(Path.cwd())  # params.yaml and the active profiles, by kickoff's one YAML reader
    if (line := effective.summary(settings)):
        print(line, file=sys.stderr)  # which params.yaml keys the active profiles override, with which values
    ctx = setup(family_choice=False)  # the params as written: the family's choice is a result, not a setting
    try:  # each candidate against the factory it will be given (the dataset workload: its model's too)
        check_candidates(ctx.params.workload.name, ctx.params.workload.kwargs, ctx.params.family.candidates)
    except ConfigError as e:
        raise ConfigError(f"params.yaml: {e}") from None
    # a setting that shapes dvc.yaml (family.candidates null or a list, optimizer.name, workload.name or
    # .sources, scaling.batch_sizes) changed without `python -m stages.pipeline`: say so here, before DVC fails parsing it
    from stages.pipeline.declaration import check_rendered

    check_rendered(Path.cwd())
    if effective.stale_note(Path.cwd(), settings):
        print(effective.stale_note(Path.cwd(), settings), file=sys.stderr)
    print(yaml.safe_dump(ctx.params.as_dict(), sort_keys=False), end="")
    from stages.pipeline import orphans

    left = orphans.find(Path.cwd(), ctx.params.as_dict())  # a size or candidate dropped without a render
    if left:
        print(f"kickoff: jobs no longer declared still have results here: {orphans.describe(left)}; "
              f"`python -m stages.pipeline` removes them and their dvc.lock entries", file=sys.stderr)


run_main(main, "params check", lock=False, parser=no_arguments("python -m stages", __doc__))  # writes nothing
