"""`python -m stages.pipeline [--check] [--profile NAME ... | --no-profile]`: render dvc.yaml from
stages/pipeline/declaration.py, params.yaml and the active profiles."""
import sys

from stages.core.cli import run_main
from stages.pipeline.declaration import main

run_main(lambda: sys.exit(main()), "pipeline", lock=False)
