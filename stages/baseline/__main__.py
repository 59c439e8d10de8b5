"""`python -m stages.baseline [--train-edited-config]`: see stages/baseline/stage.py."""
from stages.core.cli import run_main
from stages.baseline.stage import main, parser

run_main(main, "baseline", parser=parser())  # an unknown argument is refused before any work
