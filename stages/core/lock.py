"""One run per output set: a stage holds an exclusive lock for as long as it runs.

DVC's own lock stops a second `dvc repro`, but not `snakemake` (or a stage run by hand) working on
the same outputs at the same time -- which mixes two runs' files. Every stage takes
`.kickoff/locks/<job>.lock` with flock(2) through `run_main`; the kernel releases it when the
process ends, however it ends (error, Ctrl-C, SIGKILL), so a stale lock never blocks a rerun. The
job is the stage plus its arguments, so the per-batch-size scaling jobs still run side by side.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Iterator

from stages.core.errors import KickoffError

LOCK_DIR = Path(".kickoff/locks")


class LockedError(KickoffError):
    """Another run holds the lock of the same outputs."""


def lock_name(stage: str, argv: list[str]) -> str:
    """'scaling', ['trials', '--batch-size', '64'] -> 'scaling-trials-batch-size-64' (long ones shortened
    with a hash, to stay a valid file name)."""
    name = re.sub(r"[^A-Za-z0-9_.]+", "-", " ".join([stage, *argv])).strip("-")
    if len(name) > 100:
        name = f"{name[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return name


@contextlib.contextmanager
def exclusive(name: str, what: str, lock_dir: Path = LOCK_DIR) -> Iterator[Path]:
    """Hold `lock_dir/name.lock` for the block; raise LockedError naming the holder if it is taken."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"{what} is already running ({_holder(path)}; lock {path}): two runs at once would "
                              f"mix their outputs; wait for it to finish (or stop it), then rerun") from None
        # Who holds it, for the message the next run prints; written only while holding the lock.
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "command": shlex.join([Path(sys.executable).name, *sys.orig_argv[1:]]),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode())
        yield path
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def waiting(path: Path, what: str, say) -> Iterator[Path]:
    """Hold the flock on `path` for the block, waiting for another process that holds it (after
    `say(...)`-ing so, once): for work two jobs may both need, done once by whichever comes first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting: another job is running {what} (lock {path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)  # releases the lock


def check_not_running(name: str, what: str, lock_dir: Path = LOCK_DIR) -> None:
    """Raise LockedError if a run holds `name` now (for a tool that would delete that run's outputs
    before starting its own -- Snakemake does). Creates nothing."""
    path = lock_dir / f"{name}.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LockedError(f"{what} is already running ({_holder(path)}; lock {path}); wait for it to finish "
                          f"(or stop it), then rerun") from None
    finally:
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']}, `{info['command']}`, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):  # the holder is between taking the lock and writing
        return "holder unknown"


# ---------------------------------------------------------------------------- the whole pipeline

PIPELINE = "pipeline"                  # .kickoff/locks/pipeline.lock: held by a running `snakemake`
HOLDER_ENV = "KICKOFF_PIPELINE_PID"    # the holder's pid, inherited by the jobs it starts
DVC_LOCK = Path(".dvc/tmp/lock")       # held by a running `dvc repro` (zc.lockfile: flock(2) and the pid)


def held(path: Path) -> bool:
    """Does another process hold an flock on `path`? (False if it does not exist.)"""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def check_dvc_idle(root: Path = Path(".")) -> None:
    """LockedError naming the process if a `dvc` command holds DVC's lock in this clone."""
    dvc_lock = root / DVC_LOCK
    if held(dvc_lock):
        try:
            pid = dvc_lock.read_text().split()[0]
        except (OSError, IndexError):
            pid = "?"
        raise LockedError(f"dvc is running in this clone (pid {pid}; lock {DVC_LOCK}): two tools running one "
                          f"pipeline would mix their stages' outputs; wait for it to finish (or stop it), then rerun")


def hold_pipeline(tool: str, root: Path = Path(".")) -> int:
    """Take the pipeline lock for this process's lifetime (Snakemake's main process, before its first job):
    refuse if `dvc repro` or another Snakemake runs the pipeline in this clone. Returns the open fd."""
    check_dvc_idle(root)
    lock_dir = root / LOCK_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{PIPELINE}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockedError(f"the pipeline is already running in this clone ({_holder(path)}; lock {path}); wait for "
                          f"it to finish (or stop it), then rerun") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "command": tool, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode())
    os.environ[HOLDER_ENV] = str(os.getpid())
    return fd


def check_pipeline(root: Path = Path(".")) -> None:
    """LockedError if a Snakemake run other than the one that started this process holds the pipeline (a
    stage run by `dvc repro`, or by hand, while Snakemake is mid-pipeline)."""
    path = root / LOCK_DIR / f"{PIPELINE}.lock"
    if not held(path):
        return
    try:
        holder = str(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        holder = None
    if holder is not None and os.environ.get(HOLDER_ENV) == holder:
        return  # one of the holder's own jobs
    raise LockedError(f"the pipeline is running in this clone ({_holder(path)}; lock {path}): a stage run beside it "
                      f"would mix its outputs with that run's; wait for it to finish (or stop it), then rerun")
