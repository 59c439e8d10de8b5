"""`python -m stages.probe`: see stages/probe/stage.py."""
from stages.core.cli import no_arguments, run_main
from stages.probe.stage import __doc__ as doc, main

run_main(main, "probe", parser=no_arguments("python -m stages.probe", doc))  # it takes none: any is refused
