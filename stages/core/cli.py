"""How a stage process starts and ends: `run_main` holds the stage's output lock (core/lock.py) and its
output set (core/provenance.py: every output written together at the end, the manifest last),
turns a KickoffError (core/errors.py) into one line and exit code 2, and Ctrl-C into one line and
exit 130 -- also while the stage is still importing (the hook below)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from stages.core.errors import KickoffError
from stages.core.lock import check_pipeline, exclusive, lock_name
from stages.core.provenance import output_set

def _interrupted_message(job: str) -> str:
    return (f"kickoff: interrupted {job}; outputs already written are complete, and rerunning resumes "
            f"from the finished trials")


def _one_line_interrupt(exc_type, exc, tb, _previous=sys.excepthook) -> None:
    """A Ctrl-C before run_main starts (while a stage imports torch, seconds) is one line too -- also
    when the interrupted import then failed otherwise (numpy's lazy imports recurse)."""
    seen, e = set(), exc
    while e is not None and id(e) not in seen and not isinstance(e, KeyboardInterrupt):
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    if isinstance(e, KeyboardInterrupt):
        print(_interrupted_message(" ".join([Path(sys.argv[0]).parent.name or "stage", *sys.argv[1:]])),
              file=sys.stderr)
        return
    _previous(exc_type, exc, tb)


def _is_stage_command() -> bool:
    """Is this process `python -m stages...`? (sys.argv[0] is then a __main__.py inside the package)"""
    script = Path(sys.argv[0] if sys.argv else "").resolve()
    return script.name == "__main__.py" and script.is_relative_to(Path(__file__).resolve().parents[1])


if _is_stage_command():  # never in a process that merely imports kickoff (tests, notebooks, Snakemake)
    sys.excepthook = _one_line_interrupt


def run_main(main: Callable[[], Any], what: str | None = None, lock: bool = True) -> None:
    """Run a stage's main() holding its output lock (stages/core/lock.py: one run per output set): a
    KickoffError becomes one line on stderr and exit code 2; Ctrl-C one line and exit 130 (finished
    trials are journaled, so a rerun resumes)."""
    name = what or Path(sys.argv[0]).parent.name or "stage"
    job = " ".join([name, *sys.argv[1:]])
    try:
        if lock:  # a stage: one run at a time, none beside another tool's pipeline run, outputs all or none
            check_pipeline()
            with exclusive(lock_name(name, sys.argv[1:]), job), output_set(job):
                main()
        else:
            main()
    except KickoffError as e:
        print(f"kickoff: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(_interrupted_message(job), file=sys.stderr)
        sys.exit(130)
