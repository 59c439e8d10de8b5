"""`python -m stages.pipeline [--check]`: render dvc.yaml from stages/pipeline/declaration.py."""
import sys

from stages.pipeline.declaration import main

sys.exit(main())
