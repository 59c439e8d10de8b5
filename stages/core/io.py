"""Atomic output writers: every file a stage writes goes to a temp file, then is renamed.

A crash (or Ctrl-C) mid-write therefore never leaves a half-written report: either the old file
is still there, or the new one is complete. The temp files wait under the project's .kickoff/tmp/,
never beside the outputs: a hard kill (SIGKILL) leaves nothing in a folder DVC hashes as an output
(reports/scaling/trials/, reports/family/trials/) or git lists, and the next start of any kickoff
command removes what a killed writer left (`clean_temp`). Also here: the one content hash of files
and folders (the scaling journal's identity, Snakemake's code trigger).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

TMP_DIR = Path(".kickoff/tmp")  # temp files of atomic writes, named `<host>-<pid>.XXXXXXXX.<file name>`
STALE_ELSEWHERE_S = 24 * 3600   # a temp file another machine's writer left (a cluster's shared disk): gone after a day


def normal_write_mode(path: Path) -> int:
    """The mode a plain open(path, "w") would leave: an existing file keeps its own, a new one gets 0o666
    less the umask. mkstemp creates 0600 files, which would hide the reports from the other users of a
    shared checkout."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)  # the only portable way to read the umask is to set it; put it straight back
        os.umask(umask)
        return 0o666 & ~umask


def temp_path(target: Path, root: Path | None = None) -> Path:
    """A new, empty temp file for an atomic write of `target`: under `root`/.kickoff/tmp/ (root: the working
    directory, the project root) when `target` lies inside root, else beside `target`; named with this machine and
    process first, so the next start tells a killed writer's leftover from one a running writer still needs."""
    target = Path(target)
    root = Path.cwd() if root is None else Path(root)
    inside = Path(os.path.abspath(target)).is_relative_to(os.path.abspath(root))
    base = root / TMP_DIR if inside else target.parent
    base.mkdir(parents=True, exist_ok=True)
    prefix = f"{_writer()}." if inside else f".{target.name}.{os.getpid()}."
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=f".{target.name}" if inside else ".tmp", dir=base)
    os.close(fd)
    return Path(name)


def replace(tmp: Path, target: Path) -> None:
    """os.replace, or -- where .kickoff/ lies on another filesystem than the target (a symlink) -- a copy beside
    the target first, then the rename there."""
    try:
        os.replace(tmp, target)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        import shutil

        beside = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            shutil.copy2(tmp, beside)
            os.replace(beside, target)
        finally:
            beside.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def _writer() -> str:
    """This process, as temp names carry it: host and pid (on a cluster's shared disk, a pid alone is ambiguous)."""
    import socket

    return f"{re.sub(r'[^A-Za-z0-9_]+', '_', socket.gethostname())}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# The temp files an older kickoff left beside its outputs: `.probe.csv.k2j4_x9a.tmp.csv`, `.manifest.json.x8d_1ka2.tmp`
_OLD_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.\w+)?$")


def clean_temp(root: Path, folders: Iterable[Path] = ()) -> list[Path]:
    """Remove what writers killed half-way left (a SIGKILL runs no cleanup): the files in root/.kickoff/tmp/ whose
    process no longer runs on this machine (or, from another machine sharing the disk, older than a day), and the
    hidden temp files an older kickoff wrote beside its outputs in `folders` (relative to root). Returns them."""
    import time

    removed = []
    tmp = Path(root) / TMP_DIR
    here = _writer().rsplit("-", 1)[0]
    if tmp.is_dir():
        for f in tmp.iterdir():
            host, _, pid = f.name.split(".", 1)[0].rpartition("-")
            with contextlib.suppress(OSError):
                gone = (not _alive(int(pid)) if host == here else
                        time.time() - f.stat().st_mtime > STALE_ELSEWHERE_S) if pid.isdigit() else False
                if gone:
                    f.unlink()
                    removed.append(f)
    for folder in folders:
        with contextlib.suppress(OSError):
            for f in (Path(root) / folder).iterdir():
                if _OLD_TEMP.match(f.name) and f.is_file():
                    f.unlink()
                    removed.append(f)
    return removed


# While a stage's output set is open (staged_writes, opened by stages/core/provenance.output_set), the
# written files wait as temp files: (temp, target) in the order written.
_staged: list[tuple[Path, Path]] | None = None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path (temp_path); on success rename it onto `path` (or, inside staged_writes, keep it for
    the set's commit), else delete it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path: Path | None = temp_path(path)
    except PermissionError as e:
        from stages.core.errors import KickoffError

        where = Path(e.filename).parent if e.filename else path.parent
        raise KickoffError(f"{where}: not writable (permission denied), so {path.name} cannot be written; "
                           f"allowed: a folder you may write to (check its owner and mode)") from None
    try:
        try:
            yield tmp_path
        except OSError as e:  # a full disk while writing: name the file being written, not its temp file
            if e.filename in (None, str(tmp_path)) and e.errno is not None:
                raise OSError(e.errno, e.strerror, str(path)) from e
            raise
        os.chmod(tmp_path, normal_write_mode(path))
        if _staged is not None:
            _staged.append((tmp_path, path))
            tmp_path = None
        else:
            replace(tmp_path, path)
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def staged_writes() -> Iterator[list[tuple[Path, Path]]]:
    """Inside, every write through this module waits as a temp file; the caller renames them (all of
    them, on success) from the yielded list. On an exception every temp file is removed and nothing
    already in place changes. Nested calls share the outer set."""
    global _staged
    if _staged is not None:
        yield _staged
        return
    _staged = staged = []
    try:
        yield staged
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _staged = None


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_cache(path: Path, text: str) -> None:
    """Write a cache file whole (temp file beside it, then rename); a cache, so a failure to write it costs
    only time and is not raised."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        pass


def _jsonable(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null so DVC and browsers can read the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame without its index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def save_figure(path: str | os.PathLike, fig) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def content_hash(path: str | Path, base: Path | None = None) -> str:
    """A file's content hash; a folder's covers every file under it (relative names and contents,
    sorted; __pycache__ and .pyc left out, as .dvcignore does) since `workload.sources` may list folders; "absent" if missing."""
    p = Path(path)
    if not p.is_absolute():
        p = (Path.cwd() if base is None else base) / p
    if p.is_dir():
        digest = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file() and q.suffix != ".pyc"
                        and "__pycache__" not in q.relative_to(p).parts):
            digest.update(f.relative_to(p).as_posix().encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
        return digest.hexdigest()[:16]
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.exists() else "absent"
