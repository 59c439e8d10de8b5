"""Atomic output writers: every file a stage writes goes to a temp file, then is renamed.

A crash (or Ctrl-C) mid-write therefore never leaves a half-written report: either the old file
is still there, or the new one is complete. Also here: the one content hash of files and folders
(the scaling journal's identity, Snakemake's code trigger).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator


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


# While a stage's output set is open (staged_writes, opened by stages/core/provenance.output_set), the
# written files wait as temp files beside their targets: (temp, target) in the order written.
_staged: list[tuple[Path, Path]] | None = None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to `path`; on success rename it onto `path` (or, inside staged_writes,
    keep it for the set's commit), else delete it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except PermissionError:
        from stages.core.errors import KickoffError

        raise KickoffError(f"{path.parent}: not writable (permission denied), so {path.name} cannot be written; "
                           f"allowed: a folder you may write to (check its owner and mode)") from None
    os.close(fd)
    tmp_path: Path | None = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, normal_write_mode(path))
        if _staged is not None:
            _staged.append((tmp_path, path))
            tmp_path = None
        else:
            os.replace(tmp_path, path)
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
