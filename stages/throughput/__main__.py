"""`python -m stages.throughput`: see stages/throughput/stage.py."""
from stages.core.cli import no_arguments, run_main
from stages.throughput.stage import __doc__ as doc, main

run_main(main, "throughput", parser=no_arguments("python -m stages.throughput", doc))  # it takes none: any is refused
