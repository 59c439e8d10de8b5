"""`python -m stages.probe`: see stages/probe/stage.py."""
from stages.core.cli import run_main
from stages.probe.stage import main

run_main(main, "probe")
