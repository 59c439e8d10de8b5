"""Resume, never restart (issue 26 part 3): a trial stopped at a rung, or at its first crossing, goes
on from where it stood -- in the same process (its random-number state restored, whatever other trials
drew in between) or rebuilt from a checkpoint on disk (the next wave's job) -- bit-identical to a run
of the same seed that never stopped: the same parameters, the same evaluations, the same outcome."""
from __future__ import annotations

import io

import pytest
import torch

from stages.core.config import OptimizerSettings
from stages.search.trial import LiveTrial, eval_schedule, train_to_target
from stages.workloads.digits_mlp import DigitsMLP


class DropoutDigits(DigitsMLP):
    """digits_mlp with dropout: its training draws from torch's global random stream every step, so a
    resume that did not restore that stream would train differently."""

    def init_model(self) -> torch.nn.Module:
        model = super().init_model()
        return torch.nn.Sequential(torch.nn.Dropout(0.2), model)


pytestmark = pytest.mark.slow  # a few hundred training steps each

CPU = torch.device("cpu")
SGD = OptimizerSettings(name="sgd", momentum=0.9)
ADAMW = OptimizerSettings(name="adamw", weight_decay=0.01)


def params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def same_params(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def comparable(result) -> list[dict]:
    """The evaluations without their clock readings."""
    return [{k: v for k, v in row.items() if k != "train_seconds"} for row in result.curve]


@pytest.fixture(scope="module")
def workload():
    return DropoutDigits(hidden=[16], target=0.9)


@pytest.mark.parametrize("optimizer", [SGD, ADAMW], ids=["sgd-momentum", "adamw"])
def test_a_paused_trial_goes_on_exactly_as_one_that_never_stopped(workload, optimizer):
    lr = 0.1 if optimizer.name == "sgd" else 3e-3
    straight = LiveTrial(workload, optimizer, lr, 32, 0, CPU, 120)
    whole = straight.advance()
    rung = next(s for s in eval_schedule(120) if s >= 40)  # the search pauses at evaluation steps
    paused = LiveTrial(workload, optimizer, lr, 32, 0, CPU, 120)
    first = paused.advance(rung)
    assert first.outcome == "paused" and first.steps_run == rung and paused.paused
    other = LiveTrial(workload, optimizer, 0.5, 32, 1, CPU, 120)  # another trial draws in between
    other.advance(30)
    torch.rand(1000)  # and so does anything else in the process
    resumed = paused.advance()
    assert (resumed.outcome, resumed.steps_to_target, resumed.steps_run) == (whole.outcome, whole.steps_to_target,
                                                                             whole.steps_run)
    assert comparable(resumed) == comparable(whole)
    assert same_params(params(paused.model), params(straight.model))
    assert resumed.examples_run == whole.examples_run and resumed.seconds > first.seconds


def test_a_checkpoint_on_disk_goes_on_bit_identically(workload):
    straight = LiveTrial(workload, SGD, 0.1, 16, 3, CPU, 200)
    whole = straight.advance()
    paused = LiveTrial(workload, SGD, 0.1, 16, 3, CPU, 200)
    paused.advance(next(s for s in eval_schedule(200) if s >= 60))
    buffer = io.BytesIO()
    torch.save(paused.state_dict(), buffer)
    del paused
    torch.manual_seed(1234)  # a new process starts from some other random state
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    rebuilt = LiveTrial.from_state(state, workload, SGD, CPU, 200)
    resumed = rebuilt.advance()
    assert comparable(resumed) == comparable(whole) and resumed.outcome == whole.outcome
    assert same_params(params(rebuilt.model), params(straight.model))


@pytest.mark.parametrize("lr", [0.03, 0.1], ids=["holds", "falls-back-then-holds"])
def test_a_trial_held_after_its_crossing_equals_one_held_from_the_start(workload, lr):
    held = train_to_target(workload, SGD, lr, 64, 0, CPU, 400, hold_factor=2.0)
    assert held.outcome == "reached" and "held to step" in held.reason
    trial = LiveTrial(workload, SGD, lr, 64, 0, CPU, 400, hold_factor=1.0)
    crossed = trial.advance()
    assert crossed.outcome == "reached" and crossed.steps_run == crossed.steps_to_target <= held.steps_to_target
    trial.hold(2.0)
    later = trial.advance()
    assert (later.outcome, later.steps_to_target, later.steps_run) == (held.outcome, held.steps_to_target, held.steps_run)
    assert comparable(later) == comparable(held) and later.reason == held.reason


def test_a_give_up_point_that_moves_between_rungs_is_the_one_in_force(workload):
    """A paused trial goes on under the give-up point of its next advance (the best steps found since)."""
    trial = LiveTrial(workload, SGD, 0.01, 32, 0, CPU, 500)
    trial.advance(20, give_up_after=400)
    result = trial.advance(give_up_after=45)
    assert result.outcome == "stopped_early" and result.steps_run == 45


def test_a_crossing_after_a_give_up_point_learnt_late_cannot_beat_it():
    """Paused at step 56 just after falling back from a crossing at 47, the trial learns that the best
    reached at 53: its recrossing at its next evaluation (59) cannot beat that -- stopped there, not
    counted as reached at 59 and held on."""
    from tests.scripted_workload import ScriptedWorkload

    w = ScriptedWorkload(lambda s: 0.96 if 47 <= s < 56 or s >= 59 else 0.9)
    trial = LiveTrial(w, SGD, 0.01, 4, 0, CPU, 500, hold_factor=1.25, resolution=0.05)
    paused = trial.advance(56)
    assert (paused.outcome, paused.fell_back_at) == ("paused", 56)
    result = trial.advance(give_up_after=53)
    assert (result.outcome, result.steps_to_target) == ("stopped_early", None)
    assert result.steps_run == 59 and "crossed the target only at step 59, past 53 steps" in result.reason
