"""The workload interface, the built-ins, the one training step and the trial loop."""
from __future__ import annotations

import math

import pytest
import torch

from stages.core.config import OptimizerSettings
from stages.core.device import seed_everything
from stages.core.optim import build_optimizer
from stages.core.train import build_model, evaluate, train_step
from stages.search.trial import eval_schedule, train_to_target
from stages.workloads.base import (Workload, better_than_chance, has_batch_norm, make_workload, target_reached,
                             to_device)

CPU = torch.device("cpu")
SGD = OptimizerSettings(name="sgd", momentum=0.9)

# (name, kwargs, learning rate, batch size, steps): a few steps that must improve the metric
BUILTIN_RUNS = [
    ("digits_mlp", {"hidden": [32]}, 0.1, 32, 60),
    ("synthetic_cnn", {"width": 8, "depth": 1, "image_size": 8, "eval_examples": 256}, 0.05, 32, 80),
    ("nqm", {"dim": 20}, 0.1, 16, 60),
]


@pytest.mark.parametrize("name, kwargs, lr, batch_size, steps", BUILTIN_RUNS, ids=[r[0] for r in BUILTIN_RUNS])
def test_each_builtin_trains_a_few_steps_on_cpu_and_improves(name, kwargs, lr, batch_size, steps):
    torch.set_num_threads(2)
    workload = make_workload(name, kwargs)
    model = build_model(workload, seed=0, device=CPU)
    before = evaluate(model, workload, CPU)[workload.target_metric]
    optimizer = build_optimizer(model.parameters(), SGD, lr)
    data = workload.batches("train", batch_size, seed=0)
    for _ in range(steps):
        train_step(model, optimizer, workload, to_device(next(data), CPU))
    after = evaluate(model, workload, CPU)[workload.target_metric]
    improved = after > before + 0.05 if workload.target_direction == "above" else after < 0.7 * before
    assert improved, f"{name}: {workload.target_metric} went from {before:.4f} to {after:.4f}"
    assert better_than_chance(workload)


@pytest.mark.parametrize("name", ["digits_mlp", "synthetic_cnn", "nqm"])
def test_batches_and_fake_batches_have_the_requested_size(name):
    workload = make_workload(name, {})
    batch = next(workload.batches("train", 8, seed=1))
    fake = workload.fake_batch(8)
    assert all(t.shape[0] == 8 for t in batch) and all(t.shape[0] == 8 for t in fake)
    assert [t.shape for t in batch] == [t.shape for t in fake], "the fake batch must look like real data"
    model = workload.init_model()
    loss_sum, count = workload.loss(model, batch)
    assert count == 8 and loss_sum.ndim == 0 and torch.isfinite(loss_sum)


def losses(seed: int, name: str = "digits_mlp", steps: int = 15) -> list[float]:
    workload = make_workload(name, {})
    model = build_model(workload, seed, CPU)
    optimizer = build_optimizer(model.parameters(), SGD, 0.05)
    data = workload.batches("train", 16, seed)
    return [float(train_step(model, optimizer, workload, to_device(next(data), CPU))) for _ in range(steps)]


@pytest.mark.parametrize("name", ["digits_mlp", "synthetic_cnn", "nqm"])
def test_same_seed_gives_the_same_loss_sequence(name):
    assert losses(3, name, 8) == losses(3, name, 8)
    assert losses(3, name, 8) != losses(4, name, 8)


def test_digits_split_is_fixed_and_disjoint():
    a, b = make_workload("digits_mlp", {}), make_workload("digits_mlp", {})
    assert torch.equal(a.x_val, b.x_val)
    assert a.num_train_examples + a.x_val.shape[0] == 1797
    train_rows = {tuple(r) for r in a.x_train.tolist()}
    assert sum(tuple(r) in train_rows for r in a.x_val.tolist()) < 0.05 * a.x_val.shape[0]  # few exact duplicates in the raw data


def test_nqm_gradient_is_h_theta_plus_noise_with_covariance_h_over_b():
    workload = make_workload("nqm", {"dim": 4})
    model = workload.init_model()
    seed_everything(0)
    grads = []
    data = workload.batches("train", 50, seed=0)
    for _ in range(4000):
        model.zero_grad()
        s, n = workload.loss(model, next(data))
        (s / n).backward()
        grads.append(model.theta.grad.clone())
    g = torch.stack(grads)  # (draws, dim)
    h, theta = workload.h, model.theta.detach()
    assert torch.allclose(g.mean(0), h * theta, atol=0.02)
    assert torch.allclose(g.var(0), h / 50, rtol=0.1)
    assert workload.evaluate(model, CPU)["loss"] == pytest.approx(0.5 * float((h * theta ** 2).sum()))


def test_synthetic_cnn_batch_norm_is_optional_and_detected():
    assert has_batch_norm(make_workload("synthetic_cnn", {"batch_norm": True}).init_model())
    assert not has_batch_norm(make_workload("synthetic_cnn", {}).init_model())


def test_target_reached_is_directional_and_never_true_for_nan():
    assert target_reached(0.96, 0.95, "above") and not target_reached(0.94, 0.95, "above")
    assert target_reached(0.09, 0.1, "below") and not target_reached(0.11, 0.1, "below")
    assert not target_reached(math.nan, 0.1, "below") and not target_reached(math.inf, 0.95, "above")


def test_eval_schedule_resolves_any_step_within_five_percent():
    schedule = eval_schedule(2000, 0.05)
    assert schedule[0] == 1 and schedule[-1] == 2000
    assert all((b - a) <= max(1, 0.05 * a + 1) for a, b in zip(schedule, schedule[1:]))
    assert len(schedule) < 200


def test_train_to_target_reports_each_outcome():
    workload = make_workload("digits_mlp", {})
    reached = train_to_target(workload, SGD, 0.3, 64, 0, CPU, max_steps=300)
    assert reached.outcome == "reached" and reached.steps_to_target == reached.steps_run < 300
    assert reached.examples_run == 64 * reached.steps_run and reached.curve[-1]["step"] == reached.steps_run
    nqm = make_workload("nqm", {"dim": 10})  # lr * h_max > 2 / (1 + momentum): the iterates blow up
    diverged = train_to_target(nqm, SGD, 50.0, 64, 0, CPU, max_steps=2000)
    assert diverged.outcome == "diverged" and diverged.steps_to_target is None and "non-finite" in diverged.reason
    censored = train_to_target(workload, SGD, 1.0e-4, 64, 0, CPU, max_steps=20)
    assert censored.outcome == "not_reached" and censored.steps_run == 20
    early = train_to_target(workload, SGD, 1.0e-3, 64, 0, CPU, max_steps=300, give_up_after=10)
    assert early.outcome == "stopped_early" and early.steps_run == 10


class _Tiny(Workload):
    name = "tiny"
    target_metric = "accuracy"
    target_value = 0.5
    chance_score = 0.5

    def init_model(self): return torch.nn.Linear(2, 2)
    def batches(self, split, batch_size, seed): yield from ()
    def loss(self, model, batch): return torch.zeros(()), 1
    def evaluate(self, model, device): return {"accuracy": 0.5}
    def fake_batch(self, batch_size): return (torch.zeros(batch_size, 2),)


def make_tiny(**kwargs):
    return _Tiny()


def test_user_workload_by_import_path_goes_through_the_same_registry():
    workload = make_workload("tests.test_workloads:make_tiny", {})
    assert isinstance(workload, _Tiny)
    assert not better_than_chance(workload), "a target equal to chance is not 'clearly better than chance'"


def test_the_own_model_example_workload_works_as_documented(tmp_path, monkeypatch, fresh_my_project):
    """docs/own-model.md's example, copied verbatim, plugs in by import path and trains to its target."""
    import re
    import sys
    from pathlib import Path

    section = (Path(__file__).resolve().parent.parent / "docs/own-model.md").read_text()
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    params = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    (tmp_path / "my_project").mkdir()
    (tmp_path / "my_project" / "__init__.py").write_text("")
    (tmp_path / "my_project" / "workload.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    import yaml

    from stages.core.config import validate

    monkeypatch.chdir(tmp_path)
    p = validate({"workload": yaml.safe_load(params)["workload"]})
    workload = make_workload(p.workload.name, p.workload.kwargs)
    assert workload.num_train_examples == 455 and better_than_chance(workload)
    result = train_to_target(workload, SGD, 0.1, 32, 0, CPU, max_steps=500)
    assert result.outcome == "reached", result.reason
    sys.modules.pop("my_project.workload", None)
    sys.modules.pop("my_project", None)


def test_digits_are_read_from_scikit_learns_file_exactly_as_load_digits_returns_them():
    """digits_mlp reads digits.csv.gz itself (importing scikit-learn costs every stage process 0.8 s):
    the same pixels and labels, in the same order."""
    from sklearn.datasets import load_digits

    from stages.workloads.digits_mlp import _digits_file, _load_digits

    assert _digits_file() is not None
    x, y = _load_digits()
    bunch = load_digits()
    assert torch.equal(x, torch.tensor(bunch.data, dtype=torch.float32) / 16.0)
    assert torch.equal(y, torch.tensor(bunch.target, dtype=torch.long))
