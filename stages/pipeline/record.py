"""`python -m stages.pipeline.record JOB`: what every Snakemake job runs after its stage -- the job's
entry in dvc.lock (`dvc commit`, stages/core/provenance.py), then its stamp, the output Snakemake
waits for. Run outside Snakemake it records a job run by hand, as `dvc commit JOB` does."""
from __future__ import annotations

import argparse
from pathlib import Path

from stages.core import provenance
from stages.core.cli import run_main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("job", help="the job as DVC names it: probe, scaling_trials@64, family_trial@candidate0")
    args = ap.parse_args(argv)
    root = Path.cwd()
    provenance.record(args.job, root)
    stamp = root / provenance.stamp_path(args.job)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()


if __name__ == "__main__":
    run_main(main, "record", lock=False)
