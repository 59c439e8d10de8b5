"""Issue 22 part 4: advice that fits. One classifier (stages/core/advice.py) says why nothing reached
the target and the one change that fits; the family stage, `scaling summarize` and select use it.
The classes on hand-made runs, then each through the family stage on a tiny workload (a few steps)."""
from __future__ import annotations

import math
import sys

import pytest
import yaml

from stages.core import outputs as out
from stages.core.advice import Limits, Run, Target, kind_of, why_not_reached
from stages.core.errors import StudyError
from stages.family.stage import main_choose, main_trial

ACC = Target("accuracy", 0.95, "above")
LIMITS = Limits("family.max_steps", 100, 0.01, 1.0)


def run(outcome: str, lr: float = 0.1, steps: float = 50, metric: float = 0.5, reason: str = "") -> Run:
    return Run(outcome, lr, steps, 100, metric, reason)


@pytest.mark.parametrize("runs, target, kind, action", [
    ([run("failed", reason="RuntimeError: boom")] * 3, ACC, "crashed", "fix it in the model, data or loss"),
    ([run("out_of_memory")] * 2, ACC, "out_of_memory", "lower family.batch_size"),
    ([run("not_reached", steps=100)], Target("accuracy", 90, "above"), "target_out_of_range",
     "set workload.kwargs.target within [0, 1]"),
    ([run("diverged", lr, 2, math.nan) for lr in (0.01, 0.1)], ACC, "diverged",
     "lower the learning-rate range (scaling.lr_min, scaling.lr_max; now 0.01..1)"),
    ([run("not_reached", 0.01, 100, 0.3), run("not_reached", 1.0, 100, 0.9)], ACC, "range_too_narrow_above",
     "raise scaling.lr_max (now 1)"),
    ([run("plateaued", 0.01, 60, 0.9), run("plateaued", 1.0, 60, 0.5)], ACC, "range_too_narrow_below",
     "lower scaling.lr_min (now 0.01)"),
    ([run("not_reached", 0.01, 100, 0.5), run("not_reached", 0.1, 100, 0.9), run("diverged", 1.0, 3, math.nan)],
     ACC, "too_few_steps", "raise family.max_steps (now 100)"),
    ([run("plateaued", 0.01, 60, 0.5), run("plateaued", 0.1, 60, 0.9), run("diverged", 1.0, 3, math.nan)],
     ACC, "plateaued", "a larger model (family.candidates) or an easier target (workload.kwargs.target)"),
])
def test_each_class_of_failure_gets_its_one_action(runs, target, kind, action):
    advice = why_not_reached(runs, target, LIMITS)
    assert advice.kind == kind and advice.action.startswith(action), advice
    assert kind_of(f"{advice.label}: {advice.message}") == kind  # a family candidate's reason reads back


def test_different_errors_are_listed_and_a_loss_target_below_zero_is_impossible():
    crashed = why_not_reached([run("failed", reason="A: x"), run("failed", reason="B: y")], ACC, LIMITS)
    assert crashed.kind == "crashed" and "(A: x; B: y)" in crashed.evidence
    below = why_not_reached([run("not_reached")], Target("loss", -1.0, "below"), LIMITS)
    assert below.kind == "target_out_of_range" and "loss is at least 0" in below.message


# ---------------------------------------------------------------------------- through the family stage

MODULE = '''\
import torch
from stages.workloads.nqm import NoisyQuadratic


class Broken(NoisyQuadratic):
    def loss(self, model, batch):
        if self.mode == "crash":
            raise ValueError("labels and outputs disagree")
        if self.mode == "oom":
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
        total, count = super().loss(model, batch)
        return (total * float("nan"), count) if self.mode == "nan" else (total, count)


class AsAccuracy(Broken):  # the NQM's loss, named accuracy: a target of 90 (percent) trains normally
    target_metric, target_direction = "accuracy", "above"

    def evaluate(self, model, device):
        return {"accuracy": super().evaluate(model, device)["loss"]}


def make(dim: int = 8, target: float = 0.3, mode: str = ""):
    w = (AsAccuracy if mode == "accuracy" else Broken)(dim=dim, target=1.0 if mode == "accuracy" else target)
    w.mode, w.target_value = mode, target
    return w
'''


@pytest.fixture
def family(tmp_path, monkeypatch):
    """A family study of two tiny NQM candidates, a few steps each: family(workload kwargs, family, scaling)."""
    (tmp_path / "advwl.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)

    def study(kwargs: dict, family: dict | None = None, scaling: dict | None = None) -> str:
        params = {"workload": {"name": "advwl:make", "kwargs": {"dim": 8, "target": 0.3, **kwargs}, "sources": ["advwl.py"]},
                  "family": {"candidates": [{"dim": 4}, {"dim": 16}], "batch_size": 8, "max_steps": 40,
                             **(family or {})},
                  "runtime": {"device": "cpu", "seed": 0, "threads": 1},
                  "scaling": {"lr_min": 0.05, "lr_max": 0.5, "lr_points": 3, "lr_refine_trials": 1, "seeds": 1,
                              **(scaling or {})}}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for i in range(2):
            main_trial(f"candidate{i}")
        with pytest.raises(StudyError) as e:
            main_choose()
        assert not out.FAMILY_MODEL.at().exists()  # nothing chosen, nothing written
        return str(e.value)

    yield study
    sys.modules.pop("advwl", None)


def test_every_candidate_crashing_with_the_same_error_says_fix_it(family):
    message = family({"mode": "crash"})
    assert message.endswith("In short, every candidate crashed with the same error (ValueError: labels and outputs "
                            "disagree): fix it in the model, data or loss (workload.kwargs) -- no step or "
                            "learning-rate setting can help")


def test_an_out_of_memory_candidate_is_out_of_memory_not_failed(family):
    message = family({"mode": "oom"})
    assert list(out.read_csv(out.FAMILY_TRIAL, candidate="candidate0")["status"]) == ["out_of_memory"]
    assert message.endswith("every candidate ran out of memory: lower family.batch_size")


def test_every_trial_diverging_says_lower_the_learning_rate_range(family):
    message = family({"mode": "nan"})
    assert "diverged (non-finite loss)" in message
    assert message.endswith("every candidate diverged at every learning rate: lower the learning-rate range "
                            "(scaling.lr_min, scaling.lr_max)")
    assert "(scaling.lr_min, scaling.lr_max; now 0.05..0.5)" in message  # each candidate's own reason
    assert "raise family.max_steps" not in message


def test_a_target_beyond_the_metric_is_refused_before_any_candidate_trains(family, tmp_path):
    """Issue 29 part 4: not after the study (every candidate then 'cannot meet the target'), but by the first job."""
    from stages.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"workload.kwargs.target: received 90 for accuracy, which is never above 1; "
                                          r"allowed: a value in \[0, 1\] \(a fraction, not a percentage\)"):
        family({"mode": "accuracy", "target": 90})  # a percentage where a fraction is meant
    assert not (tmp_path / "reports").exists()  # no candidate trained


def test_trials_stopped_by_the_step_cap_say_raise_max_steps(family):
    message = family({"target": 0.01}, {"max_steps": 5}, {"lr_max": 50.0})  # the largest rate diverges
    assert "was still training when the step cap stopped it at 5 steps; raise family.max_steps (now 5)" in message
    assert message.endswith("was stopped by the step cap: raise family.max_steps (now 5)"), message


def test_a_range_whose_largest_rate_came_closest_without_diverging_says_raise_lr_max(family):
    # no widening past the range (lr_widen_factor 1): the largest rate the search may try is lr_max itself
    message = family({"target": 0.01}, {"max_steps": 5}, {"lr_min": 0.005, "lr_max": 0.05, "lr_widen_factor": 1.0})
    assert message.endswith("came closest at the largest rate tried: raise scaling.lr_max: a larger rate may get "
                            "there"), message


# ---------------------------------------------------------------------------- scaling summarize and select

@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_scaling_summarize_says_the_change_that_fits_instead_of_study_more_sizes(tmp_path):
    from tests.test_scaling_stage import PARAMS, run_cli, write_project

    root = write_project(tmp_path)
    params = {**PARAMS, "workload": {"name": "nqm", "kwargs": {"dim": 10, "target": 0.001}},
              "scaling": {**PARAMS["scaling"], "batch_sizes": [4, 16], "max_steps": 5, "lr_min": 0.05, "lr_max": 50.0,
                          "lr_points": 3}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for args in (["coarse", "--batch-size", "4"], ["coarse", "--batch-size", "16"], ["gaps"], ["contenders"],
                 ["trials", "--batch-size", "4"], ["trials", "--batch-size", "16"]):
        assert run_cli(args, root).returncode == 0
    proc = run_cli(["summarize"], root)
    assert proc.returncode == 0, proc.stderr
    notes = (root / out.SCALING_NOTES.path).read_text()
    assert "no batch size reached the target, so B_crit is undetermined: no trial reached loss <= 0.001" in notes
    assert "raise scaling.max_steps (now 5)" in notes and "study more batch sizes" not in notes
    assert "raise scaling.max_steps (now 5)" in proc.stderr
