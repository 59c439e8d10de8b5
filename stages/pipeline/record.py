"""`python -m stages.pipeline.record JOB`: what every Snakemake job runs after its stage -- the job's
entry in dvc.lock (`dvc commit`, stages/core/provenance.py, with dvc.lock written whole through a temp
file: an interrupt leaves the old file or the new one), then its stamp, the output Snakemake waits for.
Run outside Snakemake it records a job run by hand, as `dvc commit JOB` does.

`python -m stages.pipeline.record --skip-if-current JOB` runs first: Snakemake plans every job
downstream of a changed one, but when the jobs a job reads from come out byte for byte as before,
dvc.lock records it as current again -- it then writes the stamp and exits 0 (the stage is skipped,
as `dvc repro` skips it); otherwise exits 1 and the stage runs. A job this Snakemake run forces
(--forceall, -f, -R: stages/pipeline/invocation.py) is never skipped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stages.core import provenance
from stages.core.cli import run_main
from stages.pipeline.invocation import forced_jobs


def _stamp(job: str, root: Path) -> None:
    stamp = root / provenance.stamp_path(job)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("job", help="the job as DVC names it: probe, scaling_trials@64, family_trial@candidate0")
    ap.add_argument("--skip-if-current", action="store_true",
                    help="exit 0 (and write the stamp) if dvc.lock records the job as current, else exit 1")
    args = ap.parse_args(argv)
    root = Path.cwd()
    if args.skip_if_current:
        if args.job in forced_jobs():  # --forceall, -f, -R: re-measured, as `dvc repro --force` would
            print(f"kickoff: {args.job}: forced by this Snakemake run; re-measured", file=sys.stderr)
            sys.exit(1)
        if not provenance.recorded(root, args.job):
            sys.exit(1)  # no entry in dvc.lock yet (a first run): stale, as `dvc status` would say
        try:
            current = args.job not in provenance.stale(root, args.job, wait=True)
        except provenance.ProvenanceError:
            current = False  # then run the stage: it says what is wrong, if anything
        if not current:
            sys.exit(1)
        print(f"kickoff: {args.job}: what it reads came out as dvc.lock records it; skipped, as `dvc repro` would",
              file=sys.stderr)
    else:
        provenance.record(args.job, root)
    _stamp(args.job, root)


if __name__ == "__main__":
    run_main(main, "record", lock=False)
