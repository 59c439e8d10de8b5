"""`python -m stages.report`: see stages/report/stage.py."""
from stages.core.cli import no_arguments, run_main
from stages.report.stage import __doc__ as doc, main

run_main(main, "report", parser=no_arguments("python -m stages.report", doc))  # it takes none: any is refused
