"""How a stage process starts and ends: `run_main` holds the stage's output lock (core/lock.py) and its
output set (core/provenance.py: every output written together at the end, the manifest last),
turns a KickoffError (core/errors.py) -- and an OS error a user fixes: a full disk, a folder that may not be
written, a read-only mount -- into one line and exit code 2, and Ctrl-C into one line and exit 130 -- also
while the stage is still importing (the hook below, which also names a package this Python lacks). Every
entry point first keeps dvc.lock whole (core/dvc_lock.py). This module imports only the standard library
and kickoff's own, so the hook is in place before a stage imports torch."""
from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

from stages.core.dvc_lock import keep_whole
from stages.core.errors import ConfigError, KickoffError
from stages.core.lock import check_pipeline, exclusive, lock_name
from stages.core.outputs import folders, manifest_for_path
from stages.core.provenance import output_set

def _interrupted_message(job: str) -> str:
    return (f"kickoff: interrupted {job}; outputs already written are complete, and rerunning resumes "
            f"from the finished trials")


def _one_line_interrupt(exc_type, exc, tb, _previous=sys.excepthook) -> None:
    """A Ctrl-C before run_main starts (while a stage imports torch, seconds) is one line too -- also
    when the interrupted import then failed otherwise (numpy's lazy imports recurse). So is a package the
    stage imports that this Python does not have (a stage run outside the project's environment)."""
    seen, e = set(), exc
    while e is not None and id(e) not in seen and not isinstance(e, KeyboardInterrupt):
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    command = " ".join([Path(sys.argv[0]).parent.name or "stage", *sys.argv[1:]])
    if isinstance(e, KeyboardInterrupt):
        print(_interrupted_message(command), file=sys.stderr)
        return
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.split(".")[0] != "stages":
        print(f"kickoff: error: {command}: the package {exc.name.split('.')[0]!r} is not installed for {sys.executable}; "
              f"allowed: the project's environment -- `. .venv/bin/activate` (`make setup` makes it), then rerun",
              file=sys.stderr)
        sys.stderr.flush()
        os._exit(2)
    _previous(exc_type, exc, tb)


# OS errors a user meets and fixes (a full disk, a folder or file that may not be written, a read-only mount):
# one line naming the path, what was kept and what to do, not a traceback.
_OS_FIXES = {errno.ENOSPC: "free space on that disk", errno.EDQUOT: "free space within your disk quota",
             errno.EACCES: "a file and folder you may write (check their owner and mode)",
             errno.EPERM: "a file and folder you may write (check their owner, mode and attributes: chattr -i)",
             errno.EROFS: "a writable filesystem (this one is mounted read-only)"}


def os_error_line(e: OSError, job: str, stage: bool) -> str:
    path = f"{e.filename}: " if e.filename else ""
    kept = ("every output already in place is as it was (a stage writes its outputs all or none; finished trials "
            "stay in its journal)" if stage else "every file already in place is as it was (each is written whole, "
            "through a temp file and a rename)")
    return f"{job}: {path}{e.strerror or e}; kept: {kept}; allowed: {_OS_FIXES[e.errno]}, then rerun"


def _is_stage_command() -> bool:
    """Is this process `python -m stages...`? (sys.argv[0] is then a __main__.py inside the package)"""
    script = Path(sys.argv[0] if sys.argv else "").resolve()
    return script.name == "__main__.py" and script.is_relative_to(Path(__file__).resolve().parents[1])


if _is_stage_command():  # never in a process that merely imports kickoff (tests, notebooks, Snakemake)
    sys.excepthook = _one_line_interrupt


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors (an unknown argument, a missing or ill-typed value) are a ConfigError:
    one line through run_main, exit 2, naming what was received and the usage allowed."""

    def error(self, message: str) -> NoReturn:
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        raise ConfigError(f"{self.prog}: {message}; allowed: {usage}")


def no_arguments(prog: str, doc: str | None = None) -> ArgumentParser:
    """The parser of a stage that takes no arguments: `-h` prints its docstring, anything else is refused."""
    return ArgumentParser(prog=prog, description=(doc or "").strip().splitlines()[0] if doc else None)


def run_main(main: Callable[[], Any], what: str | None = None, lock: bool = True,
             parser: argparse.ArgumentParser | None = None) -> None:
    """Run a stage's main() holding its output lock (stages/core/lock.py: one run per output set): a
    KickoffError becomes one line on stderr and exit code 2; Ctrl-C one line and exit 130 (finished
    trials are journaled, so a rerun resumes). Before any lock file is made, the command line is checked
    against `parser` and a stage checks that it runs in the project root (params.yaml beside it), so a
    refused command writes nothing."""
    name = what or Path(sys.argv[0]).parent.name or "stage"
    job = " ".join([name, *sys.argv[1:]])
    try:
        if parser is not None:
            parser.parse_args(sys.argv[1:])
        if lock and not Path("params.yaml").is_file():  # e.g. run from reports/: no lock file made there
            raise ConfigError(f"params.yaml: {'a directory' if Path('params.yaml').is_dir() else 'not found'} in "
                              f"{Path.cwd()}; allowed: run the stages from the project root, where params.yaml is")
        keep_whole(temp_folders=folders())  # a cut dvc.lock put back (under `dvc repro`: then stop); temp files cleared
        if lock:  # a stage: one run at a time, none beside another tool's pipeline run, outputs all or none
            check_pipeline()
            with exclusive(lock_name(name, sys.argv[1:]), job), output_set(job, manifest_for_path):
                main()
        else:
            main()
    except KickoffError as e:
        print(f"kickoff: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(_interrupted_message(job), file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if e.errno not in _OS_FIXES:
            raise
        print(f"kickoff: error: {os_error_line(e, job, lock)}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        # Out of memory is the model or batch size the user chose (a 20-billion-parameter model on a laptop),
        # not a bug: one line. Only a stage that imported the device module trains, so no import here.
        device = sys.modules.get("stages.core.device")
        if device is None or not device.classify_exception(e):
            raise
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        print(f"kickoff: error: {job}: out of memory ({first}); allowed: a model (workload.kwargs) and batch size "
              f"that fit this device -- `python -m stages.probe` measures which do", file=sys.stderr)
        sys.exit(2)
