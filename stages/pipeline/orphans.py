"""Jobs that left the declaration: a batch size no longer in `scaling.batch_sizes`, a family candidate
dropped from `family.candidates` (or the whole list set to null), after a params edit or a switch to a
profile with fewer sizes. DVC keeps their entries in dvc.lock and their files stay in reports/, so a
commit would carry results no stage reads any more as if they were part of the run.

`python -m stages.pipeline` (the render) removes them: each such job's entry in dvc.lock, the files
it wrote (its declared outputs and manifest, and the outputs its dvc.lock entry lists) and its
Snakemake stamp; `git checkout` brings committed ones back. `python -m stages` reports them, with
that command. The scaling journal (.kickoff/journal/) is kept: a size that comes back replays its
finished trials.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from stages.core import outputs as out
from stages.core import provenance
from stages.core.dvc_lock import keep
from stages.core.io import write_text
from stages.pipeline.declaration import STAGES, Stage, effective_params, items_of, load_raw_params, present

LOCK_FILE = "dvc.lock"


def _job(s: Stage, item) -> str:
    return f"{s.name}@{item}"


def _files(s: Stage, item) -> list[str]:
    return [o.path.replace(f"{{{s.foreach[0]}}}", str(item)) for o in s.outputs]


def _lock_entries(root: Path) -> dict:
    try:
        return (yaml.safe_load((root / LOCK_FILE).read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return {}


def find(root: Path, params: dict) -> dict[str, list[str]]:
    """{job: its files that exist} for every fan-out job that dvc.lock records or whose files lie in
    reports/ but that `params` (params.yaml with the active profiles) no longer declares."""
    lock = _lock_entries(root)
    found: dict[str, list[str]] = {}
    for s in STAGES:
        if not s.foreach:
            continue
        current = {str(i) for i in items_of(s, params)} if present(s, params) else set()
        items = {name.partition("@")[2] for name in lock if name.partition("@")[0] == s.name}
        for o in s.outputs:  # files on disk: a job run by hand, or by a tool that did not record it
            folder = root / Path(o.path).parent
            if folder.is_dir():
                pattern = out._pattern(Path(o.path).name)
                items |= {m.group(s.foreach[0]) for f in folder.iterdir() if (m := pattern.match(f.name))}
        for item in sorted(items - current, key=lambda v: (len(v), v)):
            job = _job(s, item)
            listed = [o.get("path") for o in (lock.get(job) or {}).get("outs") or [] if isinstance(o, dict)]
            files = list(dict.fromkeys([*_files(s, item), *(p for p in listed if isinstance(p, str))]))
            found[job] = [f for f in files if (root / f).is_file()]
    return found


def _without_entries(text: str, jobs: set[str]) -> str:
    """dvc.lock's text without the `stages:` entries named `jobs`, every other line as DVC wrote it."""
    kept, skipping, in_stages = [], False, False
    for line in text.splitlines(keepends=True):
        if line.strip() and not line.startswith(" "):
            in_stages, skipping = line.rstrip() == "stages:", False
        elif in_stages and re.match(r"^  \S", line):
            key = next(iter(yaml.safe_load(line) or {}), None) if line.rstrip().endswith(":") else None
            skipping = key in jobs
        if not skipping:
            kept.append(line)
    return "".join(kept)


def remove(root: Path, params: dict) -> dict[str, list[str]]:
    """Remove every orphan job's files, stamp and dvc.lock entry; return what was removed. LockedError
    (nothing removed) while `dvc` or a Snakemake pipeline runs in this clone: it may be writing them."""
    from stages.core.lock import check_dvc_idle, check_pipeline

    found = find(root, params)
    if not found:
        return {}
    check_dvc_idle(root)
    check_pipeline(root)
    lock_path = root / LOCK_FILE
    if lock_path.is_file():
        text = lock_path.read_text()
        data = yaml.safe_load(text) or {}
        entries = data.get("stages") or {}
        if set(found) & set(entries):
            expected = {**data, "stages": {k: v for k, v in entries.items() if k not in found}}
            new = _without_entries(text, set(found))
            if yaml.safe_load(new) != expected:  # a layout DVC did not write: write the data back instead
                new = yaml.safe_dump(expected, sort_keys=False)
            write_text(lock_path, new)
            keep(root, new.encode())  # written whole by kickoff: the next start compares with it, not with git's
    for job, files in found.items():
        for f in files:
            (root / f).unlink(missing_ok=True)
        (root / provenance.stamp_path(job)).unlink(missing_ok=True)
    return found


def describe(found: dict[str, list[str]]) -> str:
    """'scaling_trials@512 (reports/scaling/trials/bs_512.csv, ...), family_trial@candidate3 (...)'"""
    return ", ".join(f"{job} ({', '.join(files) or 'its dvc.lock entry'})" for job, files in found.items())


def after_render(root: Path) -> None:
    """What `python -m stages.pipeline` does once dvc.yaml is written: remove the jobs it no longer
    declares (kept, with one line saying why, while a pipeline runs in this clone)."""
    from stages.core.lock import LockedError

    try:
        removed = remove(root, effective_params(load_raw_params(root / "params.yaml"), root))
    except LockedError as e:
        print(f"kept the jobs no longer declared, for now: {e}", file=sys.stderr)
        return
    if removed:
        print(f"removed the jobs no longer declared, their dvc.lock entries and files (`git checkout` brings "
              f"committed ones back): {describe(removed)}", file=sys.stderr)
