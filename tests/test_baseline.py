"""baseline: the selected configuration trained once on the default workload reaches the target."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stages.baseline.stage import eval_steps, read_initial_config
from stages.core.errors import InputError
from tests.test_select import digits_fixture, run_stage


def test_select_then_baseline_reaches_the_target_on_the_default_workload(tmp_path):
    """digits_mlp, batch 64, lr 0.3, SGD momentum 0.9: known to reach 95% validation accuracy in ~30 steps."""
    digits_fixture(tmp_path)
    assert run_stage("stages.select", tmp_path).returncode == 0
    config = yaml.safe_load((tmp_path / "reports/select/initial_config.yaml").read_text())
    assert (config["batch_size"], config["learning_rate"], config["train_steps"], config["seed"]) == (64, 0.3, 96, 0)
    # baseline trains from the seed select wrote, not from params.yaml (whose runtime.seed it does not declare)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"runtime": {"device": "cpu", "seed": 5}}))
    proc = run_stage("stages.baseline", tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "reports/baseline"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reached_target"] is True
    assert 1 <= metrics["steps_to_target"] <= 96
    assert metrics["accuracy"] > 0.9  # the target metric's final value, under its own name
    assert metrics["best_accuracy"] == pytest.approx(curve_max := pd.read_csv(out / "curve.csv")["accuracy"].max())
    assert metrics["final_meets_target"] == (metrics["accuracy"] >= 0.95) and curve_max >= 0.95
    assert metrics["train_steps"] == 96 and metrics["batch_size"] == 64 and metrics["learning_rate"] == 0.3
    assert metrics["seed"] == 0
    assert metrics["train_seconds"] > 0 and 0 < metrics["seconds_to_target"] <= metrics["train_seconds"]
    curve = pd.read_csv(out / "curve.csv")
    assert list(curve.columns[:3]) == ["step", "train_loss", "accuracy"]
    assert curve["step"].iloc[-1] == 96  # trained the whole budget, not stopped at the target
    assert curve["train_loss"].iloc[-1] < curve["train_loss"].iloc[0]
    first_reached = curve.loc[curve["accuracy"] >= 0.95, "step"].iloc[0]
    assert first_reached == metrics["steps_to_target"]
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_baseline_without_a_selection_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"initial_config.yaml: does not exist; rerun .*`python -m stages.select`"):
        read_initial_config()


@pytest.mark.parametrize("change,message", [
    ({"optimizer": {"name": "sgd", "momentum": 1.5}}, "optimizer.momentum: received 1.5"),
    ({"workload": {"name": "nope"}}, "workload.name: received 'nope'"),
    ({"train_steps": 0}, "train_steps: received 0; allowed: a positive integer"),
    ({"learning_rate": None}, "learning_rate: received None"),
    ({"seed": -1}, "seed: received -1; allowed: a non-negative integer"),
    ({"seed": None}, "seed: received None"),
])
def test_baseline_rejects_a_bad_initial_config(tmp_path, monkeypatch, change, message):
    monkeypatch.chdir(tmp_path)
    config = {"batch_size": 64, "learning_rate": 0.3, "train_steps": 10, "seed": 0,
              "optimizer": {"name": "sgd", "momentum": 0.9}, "workload": {"name": "digits_mlp"}, **change}
    path = tmp_path / "reports/select/initial_config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(InputError, match=re.escape(message) + r".*rerun the stage that writes it \(`python -m stages.select`"):
        read_initial_config()


def test_baseline_names_a_missing_key_and_select(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "reports/select/initial_config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump({"batch_size": 64, "learning_rate": 0.3, "train_steps": 10,
                                    "optimizer": {"name": "sgd"}, "workload": {"name": "digits_mlp"}}))
    with pytest.raises(InputError, match=r"lacks key\(s\) seed; rerun .*python -m stages.select"):
        read_initial_config()


@pytest.mark.parametrize("steps,every,expected", [(10, 4, [4, 8, 10]), (6, 2, [2, 4, 6])])
def test_eval_steps_every_n_include_the_last_step(steps, every, expected):
    assert eval_steps(steps, every) == expected


def test_default_eval_steps_resolve_steps_to_target_within_5_percent():
    steps = eval_steps(1000, None)
    assert steps[0] == 1 and steps[-1] == 1000
    assert all(b <= max(a + 1, a * 1.05 + 1) for a, b in zip(steps, steps[1:]))
