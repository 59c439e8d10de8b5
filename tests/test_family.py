"""Stage `family` (issue 13): the smallest (or fastest) candidate model that reaches the target, the
choice applied downstream, and the pipeline unchanged when family.candidates is null."""
from __future__ import annotations

import sys
import textwrap

import pandas as pd
import pytest
import yaml

from stages.core import outputs as out
from stages.core.config import load_params, validate
from stages.core.context import setup
from stages.core.errors import ConfigError, InputError, StudyError
from stages.core.model_choice import apply_family_choice, check_candidates
from stages.family.choose import choose
from stages.family.stage import comparison_batch_size, main_choose, main_trial, parse_candidate
from stages.pipeline import declaration as pipeline
from tests.conftest import ROOT

COLUMNS = list(out.FAMILY_TABLE.columns)


def table(*rows: dict) -> pd.DataFrame:
    base = {c: None for c in COLUMNS} | {"batch_size": 64, "max_steps": 1000, "reason": "", "flops_per_example": 1.0}
    frame = pd.DataFrame([base | {"candidate": f"candidate{i}", "overrides": f"{{\"w\": {i}}}"} | r
                          for i, r in enumerate(rows)], columns=COLUMNS)
    return frame


def reached(parameters, steps, low, high, time_per_step_s=1.0):
    return {"status": "reached", "parameters": parameters, "steps_to_target": steps, "steps_low": low,
            "steps_high": high, "time_per_step_s": time_per_step_s, "time_to_target_s": steps * time_per_step_s,
            "learning_rate": 0.1}


MISSED = {"status": "not_reached", "parameters": 10, "reason": "no learning rate reached accuracy 0.95 within 1000 steps"}


# ---------------------------------------------------------------------------- the rules, on hand-made tables

def test_smallest_picks_the_fewest_parameters_among_those_that_reached_never_a_miss():
    t = table(MISSED, reached(400, 300, 280, 320), reached(100, 500, 450, 560), reached(900, 100, 90, 110))
    c = choose(t, "smallest")
    assert c.index == 2  # 100 parameters; the 10-parameter candidate missed the target
    assert "candidate0" in c.reasoning and "did not reach" in c.reasoning


def test_fastest_picks_the_least_time_and_breaks_overlaps_by_size():
    # candidate1: 300 steps x 1 s; candidate2: 200 steps x 2 s = 400 s; candidate3: 100 x 1 = 100 s
    t = table(MISSED, reached(400, 300, 280, 320), reached(100, 200, 190, 210, 2.0), reached(900, 100, 90, 110))
    assert choose(t, "fastest").index == 3
    # a range that overlaps the fastest's: the smaller of the two is chosen, and the tie is said
    t2 = table(reached(900, 100, 80, 120), reached(300, 110, 100, 130), reached(50, 400, 380, 420))
    c = choose(t2, "fastest")
    assert c.index == 1 and c.tied == ['candidate0 {"w": 0}'] and "cannot be told apart" in c.reasoning


def test_no_candidate_reaching_the_target_is_a_study_error_naming_each():
    t = table(MISSED, MISSED | {"status": "out_of_memory", "reason": "out of memory at batch size 64"})
    with pytest.raises(StudyError, match="no candidate reached.*candidate0.*not_reached.*candidate1.*out_of_memory"):
        choose(t, "smallest")


# ---------------------------------------------------------------------------- settings

def raw_params(**family) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["family"] = {**(raw.get("family") or {}), **family}
    return raw


@pytest.mark.parametrize("value, allowed", [([], "null .skip the family stage. or a non-empty list"),
                                            ([{"hidden": [16]}, {"hidden": [16]}], "distinct candidates"),
                                            ([{}], "a non-empty mapping"),
                                            ({"hidden": [16]}, "a list of a mapping or null")])
def test_bad_candidates_are_rejected_naming_the_key(value, allowed):
    with pytest.raises(ConfigError, match=f"family.candidates: received .*; allowed: {allowed}"):
        validate(raw_params(candidates=value))


def test_a_candidate_the_workload_does_not_accept_is_named_before_any_work():
    with pytest.raises(ConfigError, match=r"family.candidates\[1\] \({'depth': 2}\): .*does not accept"):
        check_candidates("digits_mlp", {"hidden": [64]}, [{"hidden": [16]}, {"depth": 2}])
    with pytest.raises(ConfigError, match=r"family.candidates\[0\].*workload.kwargs.hidden: received '16'"):
        check_candidates("digits_mlp", {}, [{"hidden": "16"}])


def test_candidate_names_and_the_comparison_batch_size():
    assert parse_candidate("candidate1", [{"a": 1}, {"a": 2}]) == 1
    with pytest.raises(ConfigError, match="--candidate: received 'candidate2'; allowed: candidate0 to candidate1"):
        parse_candidate("candidate2", [{"a": 1}, {"a": 2}])
    with pytest.raises(ConfigError, match="family.candidates is null"):
        parse_candidate("candidate0", None)
    assert comparison_batch_size(None, 1437) == 64 and comparison_batch_size(None, None) == 64
    assert comparison_batch_size(None, 100) == 16 and comparison_batch_size(32, 100) == 32


# ---------------------------------------------------------------------------- the stage, end to end on a tiny workload

USER_MODULE = '''\
from stages.workloads.nqm import NoisyQuadratic


class Crashing(NoisyQuadratic):
    def loss(self, model, batch):
        raise RuntimeError("the candidate's forward pass failed")


def make(dim: int = 8, target: float = 0.3, crash: bool = False):
    return (Crashing if crash else NoisyQuadratic)(dim=dim, target=target)
'''


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    (tmp_path / "famwl.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    params = {"workload": {"name": "famwl:make", "kwargs": {"dim": 8, "target": 0.3}, "sources": ["famwl.py"]},
              "family": {"candidates": [{"crash": True}, {"dim": 16}, {"dim": 4}], "rule": "smallest",
                         "batch_size": 8, "max_steps": 300},
              "runtime": {"device": "cpu", "seed": 0, "threads": 1},
              "scaling": {"lr_min": 0.01, "lr_max": 0.5, "lr_points": 3, "lr_refine_trials": 1, "seeds": 1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    yield tmp_path
    sys.modules.pop("famwl", None)


def test_the_stage_records_every_candidate_and_the_later_stages_train_the_choice(tiny):
    for i in range(3):
        main_trial(f"candidate{i}")
    crashed = out.read_csv(out.FAMILY_TRIAL, candidate="candidate0").iloc[0]
    assert crashed["status"] == "failed" and "RuntimeError: the candidate's forward pass failed" in crashed["reason"]
    main_choose()
    model = out.read_yaml(out.FAMILY_MODEL)
    rows = out.read_csv(out.FAMILY_TABLE)
    assert list(rows["status"]) == ["failed", "reached", "reached"]
    assert model["chosen"] == "candidate2" and model["overrides"] == {"dim": 4}  # fewest parameters that reached it
    assert model["kwargs"] == {"dim": 4, "target": 0.3}
    assert (tiny / out.FAMILY_PLOT.path).stat().st_size > 0
    # probe, throughput, scaling, select build the chosen model
    assert setup().workload.hyperparameters()["dim"] == 4
    # a choice made from other candidates is refused, naming the file and the difference
    raw = yaml.safe_load((tiny / "params.yaml").read_text())
    raw["family"]["candidates"] = [{"dim": 4}, {"dim": 32}]
    (tiny / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match=r"model.yaml.*was chosen for other candidates.*rerun the family stage"):
        setup()
    with pytest.raises(InputError, match=r"candidate0.csv.*holds the result for candidate candidate0 .*crash.*stale"):
        main_choose()


def test_null_candidates_leave_the_workload_as_given(tiny):
    raw = yaml.safe_load((tiny / "params.yaml").read_text())
    raw["family"]["candidates"] = None
    (tiny / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params()
    assert apply_family_choice(params) is params  # no file read, nothing changed
    main_choose()
    model = out.read_yaml(out.FAMILY_MODEL)
    assert model["chosen"] is None and model["kwargs"] == {"dim": 8, "target": 0.3}
    assert setup().workload.hyperparameters()["dim"] == 8


def test_null_candidates_render_the_pipeline_without_candidate_jobs():
    raw = raw_params(candidates=None)
    rendered = pipeline.render_dvc(raw)["stages"]
    assert "family_trial" not in rendered
    assert "reports/family/trials" not in rendered["family"]["deps"]
    with_list = pipeline.render_dvc(raw_params(candidates=[{"hidden": [16]}, {"hidden": [32]}]))["stages"]
    assert with_list["family_trial"]["matrix"] == {"candidate": "${family.candidates}"}
    assert with_list["family_trial"]["cmd"] == "python -m stages.family trial --candidate ${key}"
    # every stage that trains the chosen model reads model.yaml and the keys it was chosen from
    for name in ("probe", "throughput", "scaling_trials", "scaling", "select"):
        s = pipeline.stage(name)
        assert out.FAMILY_MODEL in s.inputs and {"family.candidates", "family.rule"} <= set(s.params), name


def test_a_candidates_search_shows_progress_with_an_eta():
    """Issue 21 part 4: each family trial is a progress line -- 'trial i/n' of at most n (the search's bound),
    the time so far, the ETA, the trial in words; a fake clock of one second per reading."""
    from types import SimpleNamespace

    from stages.core.config import ScalingSettings
    from stages.core.progress import Progress
    from stages.family.stage import candidate_progress, most_trials

    s = ScalingSettings()
    assert most_trials(s) >= s.lr_points + s.lr_refine_trials + s.rerun_top
    now, lines = [0.0], []

    def clock() -> float:
        now[0] += 1.0
        return now[0]

    progress = Progress("family", "candidate0 bs 64: trial (of at most 4)", 4, every_s=0.0, clock=clock,
                        say=lambda stage, text: lines.append(text))
    result = SimpleNamespace(outcome="reached", steps_to_target=93, steps_run=120, examples_run=7680, seconds=0.05)
    on_trial = candidate_progress(progress)
    for _ in range(2):
        on_trial(SimpleNamespace(phase="coarse", learning_rate=0.1, seed=0, result=result, resumed=False))
    assert lines == ["candidate0 bs 64: trial (of at most 4) 1/4 (25%), 1 s so far, about 3 s left -- coarse lr 0.1 "
                     "seed 0: reached at step 93 (7680 examples, 0.05 s)",
                     "candidate0 bs 64: trial (of at most 4) 2/4 (50%), 2 s so far, about 2 s left -- coarse lr 0.1 "
                     "seed 0: reached at step 93 (7680 examples, 0.05 s)"]
