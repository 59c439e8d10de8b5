"""`python -m stages.baseline`: see stages/baseline/stage.py."""
from stages.core.cli import run_main
from stages.baseline.stage import main

run_main(main, "baseline")
