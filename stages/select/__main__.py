"""`python -m stages.select`: see stages/select/stage.py."""
from stages.core.cli import no_arguments, run_main
from stages.select.stage import __doc__ as doc, main

run_main(main, "select", parser=no_arguments("python -m stages.select", doc))  # it takes none: any is refused
