"""dvc.lock kept whole: what is up to date survives any interrupt.

DVC rewrites dvc.lock in place (`dvc.utils.serialize._common._dump_data` opens it with "w+", then
dumps the whole file into it), so Ctrl-C, SIGTERM or SIGKILL during that write leaves it cut: still
valid YAML missing the later jobs' entries (every tool then reruns them), or not valid at all (every
`dvc` command then fails). kickoff defends at both ends:

* **What kickoff writes is written whole.** A Snakemake job records itself through `dvc_atomic()`
  (stages/core/provenance.record): DVC runs in this process with that one write redirected to a temp
  file under .kickoff/tmp/, flushed to disk and renamed onto dvc.lock -- an interrupt at any byte
  leaves the previous file, whole, or the new one.
* **What `dvc repro` writes is checked.** Every kickoff entry point (`python -m stages`, every stage,
  the record step, the Snakefile, `python -m stages.pipeline`) first calls `keep_whole()`: a dvc.lock
  that is byte for byte the last whole one kickoff saw goes on at once; a changed one is checked --
  valid YAML ending with its last line, no entry of a job still declared lost since, its last entry
  complete (a cut can only shorten the end) -- and kept (.kickoff/dvc.lock.whole) when whole; a cut one
  is replaced by the last whole version, the cut one kept beside it, and said in one line. A stage that
  `dvc repro` started then stops (exit 2): DVC planned this run from the cut file, so the user reruns
  it, and only the interrupted job runs again.

Where DVC itself fails on an invalid dvc.lock before any kickoff code runs ("'./dvc.lock' validation
failed", "unable to read: 'dvc.lock', YAML file structure is corrupted"), `python -m stages` restores
it (docs/configuration.md, "When a run was interrupted").

Tests interrupt the write through `FAULT_ENV` (kickoff's writer: it kills its own process half-way
through the temp file) and a test-only sitecustomize for DVC's own write (tests/faults/).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from stages.core.errors import KickoffError
from stages.core.io import clean_temp, normal_write_mode, temp_path

LOCKFILE = Path("dvc.lock")
KEPT = Path(".kickoff/dvc.lock.whole")   # the last whole dvc.lock a kickoff entry point saw (or wrote)
CUT = Path(".kickoff/dvc.lock.cut")      # the last cut one it replaced, for a look
RWLOCK = Path(".dvc/tmp/rwlock")         # DVC's record of the processes reading and writing its files
FAULT_ENV = "KICKOFF_FAULT_AT_LOCK_WRITE"  # tests: SIGINT, SIGTERM or SIGKILL half-way through kickoff's write

_MD5 = re.compile(r"^[0-9a-f]{32}(\.dir)?$")


class LockfileCutError(KickoffError):
    """dvc.lock was cut by an interrupted write; restored, and this run must not go on."""


# ---------------------------------------------------------------------------- the check at every start

def _load(data: bytes) -> Any:
    import yaml

    return yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _entries(data: bytes | None) -> dict:
    if data is None:
        return {}
    try:
        doc = _load(data)
    except Exception:  # noqa: BLE001 -- a kept copy is whole by construction; anything else means nothing kept
        return {}
    stages = doc.get("stages") if isinstance(doc, dict) else None
    return stages if isinstance(stages, dict) else {}


def _declared_shape(root: Path) -> dict[str, dict[str, int]]:
    """Per stage of dvc.yaml (a fan-out's name without its item): how many deps, params keys and outputs each
    of its dvc.lock entries holds when whole. {} if dvc.yaml cannot be read."""
    try:
        doc = _load((root / "dvc.yaml").read_bytes())
        stages = doc["stages"]
    except Exception:  # noqa: BLE001
        return {}
    shapes = {}
    for name, body in stages.items() if isinstance(stages, dict) else ():
        body = body.get("do", body) if isinstance(body, dict) else {}
        params = 0
        for p in body.get("params") or []:
            params += len(next(iter(p.values())) or []) if isinstance(p, dict) else 1
        outs = sum(len(body.get(k) or []) for k in ("outs", "metrics", "plots"))
        shapes[name] = {"deps": len(body.get("deps") or []), "params": params, "outs": outs}
    return shapes


def _item_problem(item: Any) -> str | None:
    if not isinstance(item, dict) or not isinstance(item.get("path"), str):
        return "an item without its path"
    md5 = item.get("md5")
    if not isinstance(md5, str) or not _MD5.match(md5):
        return f"{item['path']} without its whole hash"
    if not isinstance(item.get("size"), int) or (md5.endswith(".dir") and not isinstance(item.get("nfiles"), int)):
        return f"{item['path']} without its size"
    return None


def _entry_problem(name: str, entry: Any, shapes: dict[str, dict[str, int]]) -> str | None:
    """What makes dvc.lock's entry for `name` incomplete, or None."""
    if not isinstance(entry, dict) or not isinstance(entry.get("cmd"), (str, list)):
        return f"its entry for {name} stops before its command"
    shape = shapes.get(name.split("@", 1)[0], {})
    for section in ("deps", "outs"):
        items = entry.get(section) or []
        if not isinstance(items, list):
            return f"its entry for {name} has a cut {section} list"
        if len(items) < shape.get(section, 0):
            return f"its entry for {name} stops after {len(items)} of its {shape[section]} {section}"
        for item in items:
            problem = _item_problem(item)
            if problem:
                return f"its entry for {name} has {problem}"
    params = entry.get("params") or {}
    count = sum(len(v) for v in params.values() if isinstance(v, dict)) if isinstance(params, dict) else -1
    if count < shape.get("params", 0):
        return f"its entry for {name} stops after {max(count, 0)} of its {shape['params']} params"
    return None


def _declared_jobs(root: Path) -> set[str] | None:
    """The jobs dvc.yaml declares now, as DVC expands them (its fan-outs' items); None if DVC cannot say."""
    try:
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            return {s.addressing for s in repo.index.stages}
    except Exception:  # noqa: BLE001 -- DVC cannot read its own files: count every job of a declared stage
        return None


def cut_problem(data: bytes, kept: bytes | None, root: Path) -> str | None:
    """Why `data` (dvc.lock's bytes) is not a whole dvc.lock, compared with `kept` (the last whole one); None if
    it is. A whole file ends with its last line, is YAML with `stages:`, keeps every entry of `kept` whose job is
    still declared (DVC never drops one), and its last entry -- the only one a cut can shorten -- is, if it changed
    since `kept`, complete: every hash whole, and as many deps, params and outputs as dvc.yaml declares (DVC wrote
    it from the dvc.yaml of now; an entry left as it was may be older than dvc.yaml)."""
    if not data.strip():
        return "is empty"
    if not data.endswith(b"\n"):
        return f"ends in the middle of a line (after {len(data):,} bytes)"
    try:
        doc = _load(data)
    except Exception as e:  # noqa: BLE001 -- yaml's errors, and anything its C loader raises on a cut file
        mark = getattr(e, "problem_mark", None)
        return f"is not valid YAML{f' (line {mark.line + 1})' if mark is not None else ''}"
    stages = doc.get("stages") if isinstance(doc, dict) else None
    if not isinstance(stages, dict):
        return "has no `stages:` entries"
    lost = [name for name in _entries(kept) if name not in stages]
    if lost:
        declared = _declared_jobs(root)
        shapes = _declared_shape(root)
        lost = [n for n in lost if (n in declared if declared is not None else n.split("@", 1)[0] in shapes)]
        if lost:
            return (f"lost the entries of {len(lost)} job{'s' if len(lost) > 1 else ''} it had "
                    f"({', '.join(lost[:4])}{', ...' if len(lost) > 4 else ''})")
    last = list(stages)[-1] if stages else None
    if last is not None and stages[last] != _entries(kept).get(last):  # written (or cut) since: complete per dvc.yaml?
        return _entry_problem(last, stages[last], _declared_shape(root))
    return None


def _known_to_git(root: Path, data: bytes) -> bool:
    """Is this exact content a version git has (committed, staged or stashed)? A `git checkout` of an older
    dvc.lock may lack entries; a cut file is never in git."""
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 -- git's object id
    try:
        return subprocess.run(["git", "cat-file", "-e", blob], cwd=root, capture_output=True).returncode == 0
    except OSError:
        return False


def _git_head(root: Path) -> bytes | None:
    try:
        proc = subprocess.run(["git", "show", f"HEAD:{LOCKFILE}"], cwd=root, capture_output=True)
    except OSError:
        return None
    return proc.stdout if proc.returncode == 0 and proc.stdout else None


def write_bytes(path: Path, data: bytes, root: Path) -> None:
    """Write `path` whole: a temp file under .kickoff/tmp/ (stages/core/io.temp_path), flushed to disk, renamed onto it."""
    tmp = temp_path(path, root)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, normal_write_mode(path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def keep(root: Path, data: bytes) -> None:
    """Save `data` as the last whole dvc.lock; a copy only, so a failure to write it (a full disk) costs nothing
    now -- the next start tries again."""
    with contextlib.suppress(OSError):
        write_bytes(root / KEPT, data, root)


def keep_whole(root: Path = Path("."), say: Callable[[str], None] | None = None, temp_folders: Iterable[str] = ()) -> None:
    """At the start of every entry point: keep dvc.lock's last whole version, or put it back over a cut one
    (saying so in one line; a stage started by `dvc repro` then stops with LockfileCutError). Also removes the
    temp files of killed writers (in .kickoff/tmp/, and an older kickoff's in `temp_folders`: the output folders,
    stages/core/outputs.folders) and names a stuck DVC rwlock. Creates nothing where there is no dvc.lock."""
    say = say or (lambda line: print(line, file=sys.stderr))
    lock = root / LOCKFILE
    try:
        data = lock.read_bytes()
    except FileNotFoundError:
        return
    except OSError as e:
        raise KickoffError(f"{LOCKFILE}: cannot be read ({e.strerror}); allowed: a file kickoff and DVC may read and "
                           f"write (check its owner and mode)") from None
    check_rwlock(root)
    clean_temp(root, temp_folders)  # what writers killed half-way left
    from stages.core.lock import DVC_LOCK, held

    if not os.environ.get("DVC_STAGE") and held(root / DVC_LOCK):
        return  # a dvc command runs beside this one and may be writing dvc.lock now: look next time
    try:
        kept = (root / KEPT).read_bytes()
    except OSError:
        kept = None
    if data == kept:
        return
    # nothing kept yet (a fresh clone): what changed since the committed version is what may be cut -- an
    # entry left as committed may be older than dvc.yaml (code that gained a module since) and is whole
    problem = cut_problem(data, kept if kept is not None else _git_head(root), root)
    if problem is None or _known_to_git(root, data):
        keep(root, data)
        return
    if b"\n<<<<<<< " in b"\n" + data:
        raise KickoffError(f"{LOCKFILE}: holds git's merge-conflict markers; allowed: a resolved dvc.lock -- take one "
                           f"side (`git checkout --theirs dvc.lock` or `--ours`), then `dvc commit -f` records what is "
                           f"in the workspace")
    whole, source = (kept, str(KEPT)) if kept is not None else (_git_head(root), "the committed version, git HEAD")
    if whole is None:
        raise LockfileCutError(f"{LOCKFILE} {problem}: an interrupted write cut it, and there is no whole version to put "
                               f"back (none kept in {KEPT.parent}/, none committed); allowed: a whole dvc.lock -- remove "
                               f"it (`rm dvc.lock`) and every job runs again")
    try:
        write_bytes(root / CUT, data, root)
        write_bytes(lock, whole, root)
    except OSError as e:
        raise KickoffError(f"{LOCKFILE} {problem} (an interrupted write cut it), and putting back the last whole version "
                           f"({source}) failed: {e.strerror}; allowed: free space or fix permissions, then rerun (the "
                           f"whole version stays in {source if kept is not None else 'git'})") from None
    line = (f"{LOCKFILE} {problem}: an interrupted write cut it; put back the last whole version ({source}, "
            f"{len(_entries(whole))} jobs; the cut one is kept as {CUT})")
    if os.environ.get("DVC_STAGE"):  # started by `dvc repro` / `dvc exp run`, which planned from the cut file
        raise LockfileCutError(f"{line}; `dvc repro` planned this run from the cut file, so it stops here: rerun "
                               f"`dvc repro`, and only the interrupted job runs again")
    say(f"kickoff: {line}")


def check_rwlock(root: Path) -> None:
    """KickoffError naming DVC's rwlock and the command that clears it when it is empty or cut -- a full disk
    leaves it so, and then every `dvc` command fails ("Unable to read RWLock-file") until it is removed. Read
    under DVC's own lock of that file (a shared flock on .dvc/tmp/rwlock.lock), so never while DVC rewrites it."""
    import fcntl

    path = root / RWLOCK
    if not path.is_file():
        return
    try:
        fd = os.open(path.with_name("rwlock.lock"), os.O_RDONLY)
    except OSError:
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # a dvc command is editing it right now
        try:
            text = path.read_text()
            json.loads(text)
            return
        except (OSError, UnicodeDecodeError):
            return
        except ValueError:
            pass
    finally:
        if fd is not None:
            os.close(fd)
    raise KickoffError(f"{RWLOCK}: DVC's record of the dvc commands running here is {'empty' if not text.strip() else 'cut'} "
                       f"(a full disk or a killed dvc left it so), and every dvc command fails on it (\"Unable to read "
                       f"RWLock-file\"); clear it with `rm {RWLOCK}` (DVC writes a new one), then rerun")


# ---------------------------------------------------------------------------- kickoff's own writes through DVC

def _fault(f, text: str) -> None:
    """Tests: write half of dvc.lock's new text to the temp file, then kill this process with FAULT_ENV's signal."""
    name = os.environ.get(FAULT_ENV)
    if not name:
        return
    f.write(text[: len(text) // 2])
    f.flush()
    os.fsync(f.fileno())
    os.kill(os.getpid(), getattr(signal, name))  # SIGINT: KeyboardInterrupt from here; the others: gone


@contextlib.contextmanager
def _whole_writes(root: Path) -> Iterator[None]:
    """Inside, DVC writes dvc.lock through a temp file and a rename."""
    from dvc.utils.serialize import _common, _yaml

    original = _common._dump_data
    lock = (root / LOCKFILE).resolve()

    def dump(path, data, dumper, fs=None, **dumper_args):
        if Path(os.fsdecode(path)).resolve() != lock:
            return original(path, data, dumper, fs=fs, **dumper_args)
        text = io.StringIO()
        dumper(data, text, **dumper_args)
        tmp = temp_path(lock, root)
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                _fault(f, text.getvalue())
                f.write(text.getvalue())
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, normal_write_mode(lock))
            os.replace(tmp, lock)
        finally:
            tmp.unlink(missing_ok=True)
        keep(root, text.getvalue().encode())

    parse_for_update = _yaml.parse_yaml_for_update

    def parse(text, path):
        """dvc.lock has no comments to keep (DVC writes it whole): read it as plain data, in C (6x faster
        than the round-trip parser here); DVC's writer gives the same text for it (tests/test_dvc_lock.py)."""
        if Path(os.fsdecode(path)).resolve() != lock:
            return parse_for_update(text, path)
        return _yaml.parse_yaml(text, path, typ="safe")

    _common._dump_data = _yaml._dump_data = dump
    _yaml.parse_yaml_for_update = parse
    try:
        yield
    finally:
        _common._dump_data = _yaml._dump_data = original
        _yaml.parse_yaml_for_update = parse_for_update


class _Errors(list):
    """DVC's error lines, as it prints them without colour (its own formatter: the message and every cause)."""

    def handler(self):
        import logging

        from dvc.logger import ColorFormatter

        class Collect(logging.Handler):
            def emit(inner, record):  # noqa: N805
                if record.levelno >= logging.ERROR:
                    self.append(ColorFormatter(log_colors=False).format(record).splitlines()[0].removeprefix("ERROR: "))

        return Collect(logging.ERROR)


def dvc_atomic(args: list[str], root: Path) -> tuple[int, list[str]]:
    """Run `dvc ARGS` in this process, in `root`, with dvc.lock written whole; return DVC's exit code and its
    error lines (DVC's own console output is held back: the caller says what failed, in one line). Ctrl-C
    during the run comes back as KeyboardInterrupt (DVC's own code for it is 252)."""
    import logging

    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    from dvc.cli import main

    errors = _Errors()
    handler = errors.handler()
    loggers = [logging.getLogger(n) for n in ("dvc", "dvc_objects", "dvc_data")]
    saved = [lg.handlers[:] for lg in loggers]
    here = Path.cwd()
    os.chdir(root)
    for lg in loggers:
        lg.handlers = [handler]
    try:
        with _whole_writes(root.resolve()):
            code = main(args)
    finally:
        for lg, handlers in zip(loggers, saved):
            lg.handlers = handlers
        os.chdir(here)
    if code == 252:
        raise KeyboardInterrupt
    return code, list(errors)


def dvc_error(stderr: str) -> str:
    """DVC's own error from a `dvc` command's stderr: its ERROR lines (not its closing help-forum line)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln.removeprefix("ERROR: ") for ln in lines if ln.startswith("ERROR:")]
    if errors:
        return "; ".join(dict.fromkeys(errors))
    useful = [ln for ln in lines if "dvc.org/support" not in ln and not ln.startswith("Having any troubles")]
    return (useful or lines or ["(no message)"])[-1]
