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


class StudyError(KickoffError):
    """The measurements cannot support a decision (e.g. no batch size reached the target)."""
