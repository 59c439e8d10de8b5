"""`python -m stages.select`: see stages/select/stage.py."""
from stages.core.cli import run_main
from stages.select.stage import main

run_main(main, "select")
