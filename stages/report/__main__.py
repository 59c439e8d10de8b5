"""`python -m stages.report`: see stages/report/stage.py."""
from stages.core.cli import run_main
from stages.report.stage import main

run_main(main, "report")
