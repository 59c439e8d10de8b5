"""`python -m stages.pipeline [--check] [--profile NAME ... | --no-profile]`: render dvc.yaml from
stages/pipeline/declaration.py, params.yaml and the active profiles; then remove the results and dvc.lock
entries of jobs it no longer declares (stages/pipeline/orphans.py)."""
import sys

from stages.core.cli import run_main
from stages.pipeline.declaration import main
from stages.pipeline.orphans import after_render

run_main(lambda: sys.exit(main(after_write=after_render)), "pipeline", lock=False)
