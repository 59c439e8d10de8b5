"""kickoff's provenance: what is up to date (`dvc.lock`), and what each file was written by (manifests).

**What is up to date: `dvc.lock`**, committed with the results.

DVC writes it on `dvc repro`; after a Snakemake job, `record()` writes that job's entry with
`dvc commit` (what a `dvc repro` of it would have recorded: its params, the hashes of its code,
inputs and outputs). Snakemake's own record (`.snakemake/`) never travels with git, so the
Snakefile asks `stale()` -- `dvc status`, DVC's own comparison of the workspace with dvc.lock --
which jobs to run. One record, read by both tools in the same way: they cannot disagree.

    python -m stages.pipeline.record JOB    # what every Snakemake job runs after its stage

**What each file was written by: the job's manifest**, committed with the results too. A stage writes
all its outputs or none (`output_set`, around every stage's main() in stages/core/cli.run_main): every
file waits as a temp file until the stage has finished, then all are renamed into place, and the job's
manifest (stages/core/outputs.MANIFESTS) is written last -- each file's content hash and rows, and what
the job ran for (its command, the workload and model it built, the settings it read: `settings_read`).
Every reader checks the file it reads against it (`verify`, called by stages/core/outputs' readers): a
table missing rows, a file edited by hand, one left from another run, a set mixed by a crash between two
renames, results made for another model or with other settings than those in force are refused with one
line naming the file and the command that rewrites it. A file no manifest lists (written by hand for a
test, or by a kickoff before manifests) is read as it is. A setting the job read that was edited while
it ran stops it at its end, before anything is renamed into place.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from stages.core.errors import InputError, KickoffError

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


def stale(root: Path, *jobs: str, wait: bool = False) -> set[str]:
    """The jobs `dvc status` lists as changed (as DVC names them: 'probe', 'scaling_trials@64'): a
    changed param, code file, input or output, a changed command, or no entry in dvc.lock yet.
    All jobs, or only those named; `wait`: for a Snakemake job, whose neighbours may be writing dvc.lock."""
    from stages.core.lock import check_dvc_idle

    require_dvc(root)
    if not wait:  # `dvc repro` running: say so, rather than DVC's "unable to acquire lock"
        check_dvc_idle(root)
    proc = _dvc([*(["--wait-for-lock"] if wait else []), "status", "--json", *jobs], root)
    if proc.returncode != 0:
        from stages.core.dvc_lock import check_rwlock, dvc_error

        check_rwlock(root)  # the one DVC failure with a known fix: name it and the command
        raise ProvenanceError(f"`dvc status` failed in {root} (exit {proc.returncode}): {dvc_error(proc.stderr)}")
    try:
        status = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError:
        raise ProvenanceError(f"`dvc status --json` printed no JSON: {proc.stdout[:200]!r}") from None
    return {name.rsplit(":", 1)[-1] for name in status}


def recorded(root: Path, job: str) -> bool:
    """Whether dvc.lock has an entry for `job` at all, read without DVC (a line scan: DVC writes each entry's
    name on a line of its own, two spaces in). A job without one is stale whatever else `dvc status` would
    find -- every job of a first run -- so the check that skips a current job need not start DVC for it."""
    try:
        text = (root / "dvc.lock").read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return False
    return any(f"\n  {name}:" in text for name in (job, f"'{job}'", f'"{job}"'))


def record(job: str, root: Path) -> None:
    """Write `job`'s entry in dvc.lock as it now stands (after it ran outside `dvc repro`): `dvc commit`, run
    in this process with dvc.lock written whole (temp file and rename: stages/core/dvc_lock.dvc_atomic), so an
    interrupt leaves the previous dvc.lock or the new one. `--wait-for-lock`: jobs that finish together take
    turns at dvc.lock."""
    from stages.core.dvc_lock import dvc_atomic

    require_dvc(root)
    code, errors = dvc_atomic(["--wait-for-lock", "commit", "--force", job], root)
    if code != 0:
        raise ProvenanceError(f"`dvc commit {job}` failed (exit {code}): {'; '.join(errors) or 'no message'}; "
                              f"dvc.lock is as it was before")


def stamp_path(job: str) -> Path:
    """'scaling_trials@64' -> .kickoff/snakemake/scaling_trials/64.done; 'probe' -> .../probe.done"""
    name, _, item = job.partition("@")
    return STAMP_DIR / name / f"{item}.done" if item else STAMP_DIR / f"{name}.done"


# ---------------------------------------------------------------------------- manifests

_identity: dict[str, Any] | None = None  # what the running job is run for, while its output set is open
ManifestFor = Callable[[str], "Path | None"]  # a written path (relative) -> the manifest that lists it


def note(key: str, value: Any) -> None:
    """Record what the running job is run for (e.g. "model": the workload and kwargs it built): written
    into its manifests, and compared with the manifests of what it reads."""
    if _identity is not None:
        _identity[key] = _as_read(value)


def _as_read(value: Any) -> Any:
    """`value` as a manifest reads it back (JSON: tuples become lists, other objects their text)."""
    return json.loads(json.dumps(value, default=str))


# ---------------------------------------------------------------------------- settings

@dataclass
class Settings:
    """The settings in force for the running stage process: `values`, the params keys its job tracks
    (as dvc.yaml lists them) with the values it read; `now(key)`, any key's value in the settings the
    process loaded (params.yaml with the active profiles, validated: defaults filled in); `reread()`,
    every key's value as the files say at this moment; `source`, the files, for messages."""
    values: dict[str, Any]
    now: Callable[[str], Any]
    reread: Callable[[], Callable[[str], Any]]
    source: str


_settings: Settings | None = None


def settings_read(values: dict[str, Any], now: Callable[[str], Any], reread: Callable[[], Callable[[str], Any]],
                  source: str) -> None:
    """The running job read these settings (stages/pipeline/declaration.load_stage_params): its manifest
    records them with their hash; every file it reads is checked against them (`verify`); and at its end
    they are read again, so an edit made while it ran is refused rather than recorded as what it ran with."""
    global _settings
    if _identity is None:  # not a job (a test, a notebook): nothing to record, nothing to check against
        return
    values = {k: _as_read(v) for k, v in values.items()}
    _settings = Settings(values, now, reread, source)
    note("settings", values)
    note("settings_sha256", settings_hash(values))


def settings_hash(values: dict[str, Any]) -> str:
    return _digest(json.dumps(values, sort_keys=True).encode())[:16]


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def _changed_while_running(job: str) -> None:
    """KickoffError if a setting the job read differs now from when it started (nothing written yet)."""
    if _settings is None:
        return
    now = _settings.reread()
    for key, value in _settings.values.items():
        current = _as_read(now(key))
        if current != value:
            raise KickoffError(f"{key}: was {_show(value)} when `{job}` started and is {_show(current)} now in "
                               f"{_settings.source} (edited while it ran); nothing was written, so no record claims "
                               f"results it did not compute; rerun it (`dvc repro` or `snakemake`)")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rows(data: bytes, path: Path) -> int | None:
    """Data rows of a CSV (lines after the header), None for other files."""
    return max(data.count(b"\n") - 1, 0) if path.suffix == ".csv" else None


def _relative(path: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path.cwd().resolve())).as_posix()


def _commit(staged: list[tuple[Path, Path]], identity: dict, manifest_for: ManifestFor) -> None:
    """Rename the staged files into place, then each job manifest that lists them -- unless a setting the job
    read was edited while it ran (then nothing is written). Everything that can fail -- the manifests written
    to their temp files (a full disk), a folder that is not writable -- happens before the first rename, so a
    failure leaves every file as it was; renames need no space."""
    from stages.core.io import normal_write_mode, replace, temp_path

    _changed_while_running(str(identity.get("job")))
    last = {}
    for tmp, target in staged:  # a target written twice: the last write wins
        if target in last:
            last[target].unlink(missing_ok=True)
        last[target] = tmp
    manifests: dict[Path, dict] = {}
    for target, tmp in last.items():
        rel = _relative(target)
        manifest = manifest_for(rel)
        if manifest is not None:
            data = tmp.read_bytes()
            manifests.setdefault(manifest, {})[rel] = {"sha256": _digest(data), "bytes": len(data),
                                                       "rows": _rows(data, target)}
    for target in [*last, *manifests]:  # what would stop a rename half-way, before any rename: nothing written then
        if target.is_dir():
            raise KickoffError(f"{target}: is a directory, so the stage's output cannot be written there; nothing "
                               f"was written; allowed: a file path (remove or move the directory, then rerun)")
        if not os.access(target.parent, os.W_OK):
            raise KickoffError(f"{target.parent}: not writable, so {target.name} cannot be written; nothing was "
                               f"written; allowed: a folder you may write to")
    ready: list[tuple[Path, Path]] = []
    try:
        for manifest, files in manifests.items():
            record = {"job": identity.get("job"), **{k: v for k, v in identity.items() if k != "job"}, "files": files}
            tmp = temp_path(manifest)
            ready.append((tmp, manifest))
            try:
                tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
            except OSError as e:  # a full disk: name the manifest, not its temp file
                raise OSError(e.errno, e.strerror, str(manifest)) from e
            os.chmod(tmp, normal_write_mode(manifest))
        for target, tmp in last.items():
            replace(tmp, target)
        for tmp, manifest in ready:  # last: a crash before here leaves the old manifest, which the new files fail
            replace(tmp, manifest)
    finally:
        for tmp, _ in ready:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def output_set(job: str, manifest_for: ManifestFor) -> Iterator[None]:
    """Around a stage's main(): its outputs are written all or none, the manifest last. `manifest_for`
    names the manifest that lists a written path (stages/core/outputs.manifest_for_path), or None."""
    global _identity, _settings
    from stages.core.io import staged_writes

    outer, _identity = _identity, {"job": job}
    outer_settings, _settings = _settings, None
    try:
        with staged_writes() as staged:
            try:
                yield
            except SystemExit as e:  # sys.exit(0) from a main() that finished is success too
                if e.code not in (0, None):
                    raise
                _commit(staged, _identity, manifest_for)
                raise
            _commit(staged, _identity, manifest_for)
    finally:
        _identity, _settings = outer, outer_settings


_trusting = False


@contextlib.contextmanager
def unverified() -> Iterator[None]:
    """Read files as they are, manifest or not (a user who asked to: `baseline --train-edited-config`)."""
    global _trusting
    before, _trusting = _trusting, True
    try:
        yield
    finally:
        _trusting = before


def verify(path: Path, data: bytes, manifest_path: Path | None, rerun: str, rel: str | None = None) -> None:
    """InputError unless `path` is byte for byte what its job's manifest (`manifest_path`) lists, and was
    written for the model the running job builds (where both are known). `rerun`: the job's command; `rel`: the
    path as the manifest names it, relative to the project root (default: `path` relative to the working directory)."""
    if _trusting or manifest_path is None or not manifest_path.is_file():
        return
    manifest = _read_manifest(manifest_path, rerun)
    files = manifest["files"]
    entry = files.get(rel or _relative(path)) if isinstance(files, dict) else None  # rel: as the manifest lists it
    if not isinstance(entry, dict):
        raise InputError(path, f"is not among the files its job's last run wrote ({manifest_path}): it is left "
                               f"from another run", rerun)
    if entry.get("sha256") != _digest(data):
        rows, recorded = _rows(data, path), entry.get("rows")
        what = (f"has {rows} rows where its job wrote {recorded}" if rows is not None and recorded is not None and rows != recorded
                else "differs from what its job wrote")
        raise InputError(path, f"{what} ({manifest_path}): cut, edited by hand, or written by another run", rerun)
    current, recorded = (_identity or {}).get("model"), manifest.get("model")
    if current is not None and recorded is not None and current != recorded:
        raise InputError(path, f"was made for model {_describe(recorded)}, and this run builds {_describe(current)}",
                         rerun)
    made_with = manifest.get("settings")
    if _settings is not None and isinstance(made_with, dict):
        for key, value in made_with.items():
            now = _as_read(_settings.now(key))
            if now != value:
                raise InputError(path, f"was made with {key} {_show(value)}, and the settings in force now "
                                       f"({_settings.source}) have {key} {_show(now)}", rerun)


_manifests: dict[Path, tuple[tuple[int, int, int], dict]] = {}  # parsed once per version of the file


def _read_manifest(path: Path, rerun: str) -> dict:
    """The manifest at `path`, parsed once per version (a reader checks each file it reads against it)."""
    try:
        where, st = path.resolve(), path.stat()
        version = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = _manifests.get(where)
        if cached is not None and cached[0] == version:
            return cached[1]
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest["files"], dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(path, "is not a readable manifest (cut off or edited?)", rerun) from None
    _manifests[where] = (version, manifest)
    return manifest


def _describe(model: dict) -> str:
    return f"{model.get('workload')} {json.dumps(model.get('kwargs'), sort_keys=True)}"
