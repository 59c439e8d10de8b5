"""Params as one stage may see them: only the keys the pipeline declaration lists for it.

DVC and Snakemake rerun a stage when a key it declares changes, and only then. A stage that read an
undeclared key would silently keep a stale result when that key changes, so reading one is a bug in
kickoff: `UndeclaredParamError` (not a user error, so it keeps its traceback) names the stage, the key
and where to declare it. The whole file is still validated first (load_params); only access is narrowed.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from stages.core.config import SECTIONS, Params

DECLARATION = "stages/pipeline/declaration.py"


class UndeclaredParamError(RuntimeError):
    """A stage read a params key its declaration does not list (a kickoff bug, never the user's)."""


def _undeclared(stage: str, key: str) -> UndeclaredParamError:
    return UndeclaredParamError(
        f"stage {stage!r} read params key {key!r}, which {DECLARATION} does not list for it; add the key to "
        f"the stage's params there (and run `python -m stages.pipeline`), so DVC and Snakemake rerun the stage "
        f"when it changes")


class DeclaredSection:
    """A params section of which only some keys are declared; reading another raises."""
    __slots__ = ("_stage", "_name", "_section", "_keys")

    def __init__(self, stage: str, name: str, section: Any, keys: frozenset[str]):
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_section", section)
        object.__setattr__(self, "_keys", keys)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):  # copy/pickle probes: answer as a plain object would
            raise AttributeError(key)
        if key not in self._keys:
            raise _undeclared(self._stage, f"{self._name}.{key}")
        return getattr(self._section, key)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"params are read-only (tried to set {self._name}.{key})")

    def __reduce__(self):  # the probe ships its params to trial processes
        return DeclaredSection, (self._stage, self._name, self._section, self._keys)

    def __repr__(self) -> str:
        return f"DeclaredSection({self._name}: {', '.join(sorted(self._keys))})"


class DeclaredParams:
    """Params with only the declared sections and keys readable."""
    __slots__ = ("_stage", "_sections")

    def __init__(self, stage: str, sections: dict[str, Any]):
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_sections", sections)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._sections:
            if name in SECTIONS:
                raise _undeclared(self._stage, name)
            raise AttributeError(name)
        return self._sections[name]

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"params are read-only (tried to set {key})")

    def __reduce__(self):
        return DeclaredParams, (self._stage, self._sections)



def declares(params: Params | DeclaredParams, section: str) -> bool:
    """May these params (plain: all of them; narrowed: a stage's) read `section` as a whole?"""
    return not isinstance(params, DeclaredParams) or isinstance(params._sections.get(section), SECTIONS[section])


def replace_sections(params: Params | DeclaredParams, **sections: Any) -> Params | DeclaredParams:
    """The same params (plain or narrowed) with whole sections swapped."""
    if isinstance(params, DeclaredParams):
        return DeclaredParams(params._stage, {**params._sections, **sections})
    return dataclasses.replace(params, **sections)


def restrict(params: Params, keys: Iterable[str], stage: str) -> DeclaredParams:
    """`params` narrowed to `keys` ('section' for a whole section, 'section.key' for one key)."""
    whole, partial = set(), {}
    for key in keys:
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise ValueError(f"{stage}: declared params key {key!r} names no section of params.yaml")
        if name:
            partial.setdefault(section, set()).add(name)
        else:
            whole.add(section)
    sections: dict[str, Any] = {name: getattr(params, name) for name in whole}
    for name, names in partial.items():
        if name not in whole:
            sections[name] = DeclaredSection(stage, name, getattr(params, name), frozenset(names))
    return DeclaredParams(stage, sections)
