"""Snakemake's view of what is up to date, made to agree with DVC's (`dvc status`).

Neither git nor DVC keeps file times, so on a fresh clone committed results can look older than the
code and Snakemake -- which compares times even without its `mtime` rerun trigger -- would rerun the
whole study while `dvc status` says it is up to date. The Snakefile therefore marks ancient() every
input that dvc.lock records unchanged (`unchanged_inputs`), and gives each rule a hash of its code
and workload sources as a `params:` value (`snakemake_params`), so a rule reruns when its code
changes by content, as under DVC. profiles/default/config.yaml drops the `mtime` trigger.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import yaml

from stages.pipeline.declaration import (ROOT, STAGES, Stage, deps_of, items_of, param_value, snakemake_inputs, stage,
                                         tracked_params)


CODE_PARAM = "code_sha256"


def code_hash(s: Stage, params: dict, root: Path = ROOT) -> str:
    """One hash over the stage's code and workload sources (deps_of without earlier outputs), so that
    Snakemake sees an edit by content once it has a record of the rule's last run."""
    from stages.core.io import content_hash

    earlier = {i.path for i in s.inputs}  # earlier stages' outputs: inputs, not code
    code = [d for d in deps_of(s, params) if d not in earlier]
    listing = "\n".join(f"{path} {content_hash(path, root)}" for path in code)
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def read_lock(root: Path = ROOT) -> dict:
    """dvc.lock's stages ({} without one): what DVC recorded of the last run of each job."""
    lock_file = root / "dvc.lock"
    if not lock_file.exists():
        return {}
    return _read_lock(str(lock_file), lock_file.stat().st_mtime_ns)


@lru_cache(maxsize=4)
def _read_lock(lock_file: str, _mtime_ns: int) -> dict:
    return (yaml.safe_load(Path(lock_file).read_text()) or {}).get("stages") or {}


@lru_cache(maxsize=4096)
def _md5(path: Path, _mtime_ns: int) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _matches_lock(entries: list[dict], paths: list[str], root: Path) -> bool:
    """Every path has the md5 the lock entries give it; a file inside a folder entry (DVC hashes the
    folder as a whole) counts as matching; a path the entries do not cover does not."""
    md5s = {e["path"]: str(e.get("md5")) for e in entries}
    folders = [p for p, m in md5s.items() if m.endswith(".dir")]
    for path in paths:
        file = root / path
        if path in folders or any(path.startswith(f + "/") for f in folders):
            continue  # not compared here; Snakemake's code hash (rule params) sees edits once it has run
        if path not in md5s or not file.is_file() or md5s[path] != _md5(file, file.stat().st_mtime_ns):
            return False
    return True


def _same_param(recorded, current) -> bool:
    """Equal as values: DVC reads params.yaml as YAML 1.2 and Snakemake as 1.1, so `1e-08` may be a
    number on one side and text on the other."""
    def norm(v):
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, (int, float, str)) and not isinstance(v, bool):
            try:
                return float(v)
            except ValueError:
                return v
        return v
    return norm(recorded) == norm(current)


def job_name(s: Stage, item=None) -> str:
    return f"{s.name}@{item}" if s.foreach else s.name


def producer_of(path: str, params: dict) -> str | None:
    """The job (as DVC names it) that writes `path`, or None for code, sources and params."""
    for t in STAGES:
        for item in (items_of(t, params) if t.foreach else [None]):
            if path in (o.path.replace(f"{{{t.foreach[0]}}}", str(item)) if t.foreach else o.path for o in t.outputs):
                return job_name(t, item)
    return None


def current_per_lock(job: str, params: dict, root: Path = ROOT) -> bool:
    """Is `job` exactly as dvc.lock recorded it -- same inputs, params and outputs, and every job it
    reads from too? (what `dvc status` reports as unchanged)"""
    entry = read_lock(root).get(job)
    if entry is None:
        return False
    name, _, item = job.partition("@")
    s = stage(name)
    outputs = [o.path.replace(f"{{{s.foreach[0]}}}", item) if s.foreach else o.path for o in s.outputs]
    recorded_params = (entry.get("params") or {}).get("params.yaml") or {}
    inputs = snakemake_inputs(s, params)
    return (_matches_lock(entry.get("deps") or [], inputs, root)
            and _matches_lock(entry.get("outs") or [], outputs, root)
            and all(_same_param(recorded_params.get(k), param_value(params, k)) for k in s.params)
            and all(current_per_lock(p, params, root) for p in {producer_of(i, params) for i in inputs} - {None}))


def unchanged_inputs(s: Stage, item, params: dict, root: Path = ROOT) -> set[str]:
    """The job's inputs that are as dvc.lock recorded them: code and sources with the recorded md5, and
    outputs of jobs that are current as a whole (so a job that reruns still makes its readers rerun).
    Snakemake marks these ancient(), so on a fresh clone it agrees with `dvc status`."""
    entry = read_lock(root).get(job_name(s, item))
    if entry is None:
        return set()
    same = set()
    for path in snakemake_inputs(s, params):
        producer = producer_of(path, params)
        if (current_per_lock(producer, params, root) if producer
                else _matches_lock(entry.get("deps") or [], [path], root)):
            same.add(path)
    return same


def snakemake_params(s: Stage, params: dict) -> dict:
    """The rule's `params:` -- what makes Snakemake rerun it besides its inputs' set and its command."""
    return {**tracked_params(s, params), CODE_PARAM: code_hash(s, params)}


# ---------------------------------------------------------------------------- dvc.yaml


def check_not_running(s: Stage, item=None, root: Path = ROOT) -> None:
    """LockedError if the job's stage command is running now (by `dvc repro`, another Snakemake, by
    hand): Snakemake would delete its outputs before starting the job, under the running one."""
    from stages.core.lock import LOCK_DIR, check_not_running as check, lock_name

    cmd = s.cmd.replace(f"{{{s.foreach[0]}}}", str(item)) if s.foreach else s.cmd
    _python, _m, module, *args = cmd.split()
    what = module.rsplit(".", 1)[-1]  # as each stage's __main__ names itself to run_main
    check(lock_name(what, args), " ".join([what, *args]), root / LOCK_DIR)
