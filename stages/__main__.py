"""`python -m stages`: validate params.yaml as every stage does (values, the workload's sources, the
workload itself, the device, and that dvc.yaml was rendered from it) and print the resolved values
with defaults filled in; with a profile active, first one line (stderr) saying which params.yaml keys
it overrides with which values."""
import yaml

from stages.core.cli import no_arguments, run_main


def main() -> None:
    from stages.core.context import setup
    from stages.core.errors import ConfigError
    from stages.core.model_choice import check_candidates

    import sys
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
    # .sources) changed without `python -m stages.pipeline`: say so here, before DVC fails parsing it
    from stages.pipeline.declaration import check_rendered

    check_rendered(Path.cwd())
    if effective.stale_note(Path.cwd(), settings):
        print(effective.stale_note(Path.cwd(), settings), file=sys.stderr)
    print(yaml.safe_dump(ctx.params.as_dict(), sort_keys=False), end="")


run_main(main, "params check", lock=False, parser=no_arguments("python -m stages", __doc__))  # writes nothing
