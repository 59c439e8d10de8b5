"""`python -m stages.throughput`: see stages/throughput/stage.py."""
from stages.core.cli import run_main
from stages.throughput.stage import main

run_main(main, "throughput")
