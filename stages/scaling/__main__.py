"""`python -m stages.scaling`: see stages/scaling/stage.py."""
import sys

from stages.core.cli import run_main
from stages.scaling.stage import main, parser

# `fit` reads the table it is given and writes nothing: no lock, runs anywhere
run_main(main, "scaling", lock=sys.argv[1:2] != ["fit"], parser=parser())
