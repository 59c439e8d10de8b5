"""kickoff's one record of what is up to date: `dvc.lock`, committed with the results.

DVC writes it on `dvc repro`; after a Snakemake job, `record()` writes that job's entry with
`dvc commit` (what a `dvc repro` of it would have recorded: its params, the hashes of its code,
inputs and outputs). Snakemake's own record (`.snakemake/`) never travels with git, so the
Snakefile asks `stale()` -- `dvc status`, DVC's own comparison of the workspace with dvc.lock --
which jobs to run. One record, read by both tools in the same way: they cannot disagree.

    python -m stages.pipeline.record JOB    # what every Snakemake job runs after its stage
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from stages.core.errors import KickoffError

# Snakemake's job stamps (its declared outputs): projections of dvc.lock, never committed.
STAMP_DIR = Path(".kickoff/snakemake")


class ProvenanceError(KickoffError):
    """DVC could not read or write dvc.lock."""


def _dvc(args: list[str], root: Path) -> subprocess.CompletedProcess:
    """The `dvc` of this environment (the one next to the interpreter), run in `root`."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True)


def require_dvc(root: Path) -> None:
    if not (root / ".dvc").is_dir():
        raise ProvenanceError(f"{root} is not a DVC repository: kickoff keeps its record of what is up to date in "
                              f"dvc.lock, for DVC and for Snakemake alike; run `dvc init` there first")


def stale(root: Path, *jobs: str) -> set[str]:
    """The jobs `dvc status` lists as changed (as DVC names them: 'probe', 'scaling_trials@64'): a
    changed param, code file, input or output, a changed command, or no entry in dvc.lock yet.
    All jobs, or only those named."""
    require_dvc(root)
    proc = _dvc(["status", "--json", *jobs], root)
    if proc.returncode != 0:
        raise ProvenanceError(f"`dvc status` failed in {root}: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    try:
        status = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError:
        raise ProvenanceError(f"`dvc status --json` printed no JSON: {proc.stdout[:200]!r}") from None
    return {name.rsplit(":", 1)[-1] for name in status}


def record(job: str, root: Path) -> None:
    """Write `job`'s entry in dvc.lock as it now stands (after it ran outside `dvc repro`).
    `--wait-for-lock`: jobs that finish together take turns at dvc.lock."""
    require_dvc(root)
    proc = _dvc(["--wait-for-lock", "commit", "--force", "--quiet", job], root)
    if proc.returncode != 0:
        raise ProvenanceError(f"`dvc commit {job}` failed: {proc.stderr.strip() or proc.stdout.strip()}")


def stamp_path(job: str) -> Path:
    """'scaling_trials@64' -> .kickoff/snakemake/scaling_trials/64.done; 'probe' -> .../probe.done"""
    name, _, item = job.partition("@")
    return STAMP_DIR / name / f"{item}.done" if item else STAMP_DIR / f"{name}.done"
