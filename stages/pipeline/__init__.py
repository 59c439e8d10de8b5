"""The pipeline declaration that dvc.yaml and the Snakefile come from, params overrides, and review helpers."""
