"""The family stage's choice, applied: the stages that train the model (probe, throughput, scaling,
select) build the workload with workload.kwargs overridden by the candidate reports/family/model.yaml
names -- after checking that the file was chosen from the current candidates, rule and workload (a
stale choice would silently study another model than the one the params describe).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from stages.core import outputs as out
from stages.core.errors import ConfigError, InputError
from stages.workloads.base import workload_factory


def candidate_key(index: int) -> str:
    """The name of candidate `index` in file names and job names (DVC's name for a matrix item)."""
    return f"candidate{index}"


def merged_kwargs(base: dict, overrides: dict) -> dict:
    return {**(base or {}), **overrides}


def check_candidates(name: str, kwargs: dict, candidates: list[dict] | None) -> None:
    """Every candidate's keyword arguments are accepted by the workload factory (names and types),
    without building anything: cheap enough to run before any job. Raises ConfigError."""
    for i, overrides in enumerate(candidates or []):
        try:
            workload_factory(name, merged_kwargs(kwargs, overrides))
        except ConfigError as e:
            raise ConfigError(f"family.candidates[{i}] ({overrides!r}): {e}") from None


def read_choice(params: Any) -> dict:
    """reports/family/model.yaml, validated against the current params (InputError when it is
    missing, malformed or chosen from other candidates / another rule / another workload)."""
    choice = out.read_yaml(out.FAMILY_MODEL)
    path, rerun = out.FAMILY_MODEL.at(), out.FAMILY_MODEL.rerun()
    current = {"workload": params.workload.name, "base_kwargs": dict(params.workload.kwargs),
               "candidates": params.family.candidates, "rule": params.family.rule}
    recorded = {"workload": choice.get("workload"), "base_kwargs": choice.get("base_kwargs"),
                "candidates": choice.get("candidates"), "rule": choice.get("rule")}
    stale = [k for k in current if recorded[k] != current[k]]
    if stale:
        raise InputError(path, f"was chosen for other {', '.join(stale)} than params.yaml's "
                               f"({'; '.join(f'{k}: {recorded[k]!r} there, {current[k]!r} now' for k in stale)}); "
                               f"rerun the family stage", rerun)
    if not isinstance(choice.get("overrides"), dict):
        raise InputError(path, f"holds overrides {choice.get('overrides')!r}; allowed: a mapping of workload keyword arguments", rerun)
    if params.family.candidates is not None and choice["overrides"] not in params.family.candidates:
        raise InputError(path, f"names overrides {choice['overrides']!r}, which is none of family.candidates", rerun)
    return choice


def apply_family_choice(params: Any) -> Any:
    """`params` with workload.kwargs overridden by the chosen candidate (unchanged when
    family.candidates is null: the stage is skipped and workload.kwargs is the model)."""
    from stages.core import provenance
    from stages.core.declared import replace_sections

    if params.family.candidates is not None:
        choice = read_choice(params)
        workload = dataclasses.replace(params.workload, kwargs=merged_kwargs(params.workload.kwargs, choice["overrides"]))
        params = replace_sections(params, workload=workload)
    # the model this job is run for: in its manifests, and compared with those of what it reads
    provenance.note("model", {"workload": params.workload.name, "kwargs": dict(params.workload.kwargs)})
    return params
