"""`python -m stages.family`: see stages/family/stage.py."""
from stages.core.cli import run_main
from stages.family.stage import main, parser

run_main(main, "family", parser=parser())
