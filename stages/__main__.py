"""`python -m stages`: validate params.yaml as every stage does (values, the workload's sources, the
workload itself, the device) and print the resolved values with defaults filled in."""
import yaml

from stages.core.cli import run_main


def main() -> None:
    from stages.core.context import setup

    ctx = setup()
    print(yaml.safe_dump(ctx.params.as_dict(), sort_keys=False), end="")


run_main(main, "params check", lock=False)  # writes nothing
