"""`python -m stages.scaling`: see stages/scaling/stage.py."""
from stages.core.cli import run_main
from stages.scaling.stage import main

run_main(main, "scaling")
