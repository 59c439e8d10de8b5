"""The one error family. A user error -- bad params, a missing or corrupt input, a study that cannot
reach its target -- is a `KickoffError` whose message says what is wrong, where, and what to do;
`stages.core.cli.run_main` prints it on one line and exits 2. Anything else is a bug and keeps its traceback.

This module sits at the bottom of the package (it imports nothing from `stages`), so config,
device and workloads share the family without importing each other.
"""
from __future__ import annotations

from pathlib import Path


class KickoffError(Exception):
    """Bad user input or a state the user must fix; never a bug in kickoff."""


class ConfigError(KickoffError, ValueError):
    """A params.yaml value (or a command-line argument): names the key, what was received, what is allowed."""


class InputError(KickoffError):
    """A file another stage writes is missing, unreadable or inconsistent."""

    def __init__(self, path: str | Path, problem: str, producer: str | None = None):
        fix = (f"rerun the stage that writes it (`{producer}`, or `dvc repro` / `snakemake`)" if producer
               else "rerun the stage that writes it (`dvc repro` or `snakemake`)")
        super().__init__(f"{path}: {problem}; {fix}")
        self.path = str(path)
        self.problem = problem


class StudyError(KickoffError):
    """The measurements cannot support a decision (e.g. no batch size reached the target)."""


def yaml_error(path: str | Path, exc: Exception) -> str:
    """The one line for a YAML file that does not parse: the file, the line and column, the problem -- e.g.
    "params.yaml: not valid YAML at line 4, column 9: mapping values are not allowed here". PyYAML's own first
    line holds no line number; a file that is not text says so. Used by kickoff's one reader of params.yaml
    and the profiles, which the Snakefile reads with too (Snakemake's own loader said only "Config file is
    not valid JSON or YAML")."""
    if isinstance(exc, UnicodeDecodeError):
        return f"{path}: not valid YAML: not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r})"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    context = getattr(exc, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{path}: not valid YAML{where}: {problem}{f' ({context})' if context else ''}"


