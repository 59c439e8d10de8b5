"""What the Snakefile does first, so that the plain `snakemake -c2` recovers after any kill.

* dvc.lock: a cut one (an interrupted `dvc repro`) is put back to its last whole version before
  Snakemake asks `dvc status` what to run (stages/core/dvc_lock.keep_whole).
* Snakemake's own leftovers: a killed Snakemake (SIGKILL, a lost node, a closed terminal) leaves its
  lock (.snakemake/locks/) and marks the jobs it had started incomplete (.snakemake/incomplete/); its
  orphaned jobs may still finish and record themselves. Snakemake then refuses to start ("Directory
  cannot be locked": `--unlock`; "incomplete files": `--rerun-incomplete`). Every real Snakemake run
  in this clone holds kickoff's pipeline lock for as long as it runs (stages/core/lock.hold_pipeline,
  flock(2): released by the kernel however the process ends), so when nobody holds it no Snakemake
  runs here, and the lock files and the incomplete marks of kickoff's stamps are leftovers: cleared.
  Whether a job runs again is decided by dvc.lock alone (stages/pipeline/freshness.sync_stamps).

The Snakefile runs this while Snakemake parses it, before Snakemake checks its lock (in
`Workflow.execute`, after the Snakefile was read) and its incomplete marks (when the DAG is built).
"""
from __future__ import annotations

import shutil
import sys
from base64 import urlsafe_b64decode
from pathlib import Path

from stages.core import provenance
from stages.core.dvc_lock import keep_whole
from stages.core.lock import LOCK_DIR, PIPELINE, held
from stages.core.outputs import folders


def snakemake_running(root: Path) -> bool:
    """Does a Snakemake run hold this clone's pipeline lock now?"""
    return held(root / LOCK_DIR / f"{PIPELINE}.lock")


def _decoded(path: Path, top: Path) -> str | None:
    """The file an incomplete mark stands for (Snakemake names it by the url-safe base64 of the path, split into
    folders of at most 255 characters, each but the last starting with '@')."""
    parts = path.relative_to(top).parts
    try:
        return urlsafe_b64decode("".join(p.removeprefix("@") for p in parts)).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def clear_snakemake_leftovers(root: Path) -> list[str]:
    """Remove a dead Snakemake's lock files and the incomplete marks of kickoff's stamps; return what was cleared
    (nothing while a Snakemake run holds the pipeline lock)."""
    if snakemake_running(root):
        return []
    cleared = []
    locks = root / ".snakemake" / "locks"
    if locks.is_dir() and any(locks.iterdir()):
        shutil.rmtree(locks, ignore_errors=True)
        cleared.append("its lock")
    incomplete = root / ".snakemake" / "incomplete"
    stamps = [f for f in incomplete.rglob("*") if f.is_file()] if incomplete.is_dir() else []
    marks = [f for f in stamps if (_decoded(f, incomplete) or "").startswith(str(provenance.STAMP_DIR))]
    for f in marks:
        f.unlink(missing_ok=True)
    if marks:
        cleared.append(f"the incomplete marks of {len(marks)} job{'s' if len(marks) > 1 else ''}")
    return cleared


def at_start(root: Path, log=sys.stderr) -> None:
    """The Snakefile's first step in the main process (dry runs too): dvc.lock whole, Snakemake's leftovers gone."""
    keep_whole(root, say=lambda line: print(line, file=log), temp_folders=folders())
    cleared = clear_snakemake_leftovers(root)
    if cleared:
        print(f"kickoff: no Snakemake runs in this clone (the pipeline lock is free), so a killed run's leftovers were "
              f"cleared: {' and '.join(cleared)}; dvc.lock decides what runs again", file=log)
