"""select: training time / resource use per batch size, the choice, the step budget, the stop rules.

Known answers from synthetic measurements: constant time per step -> the largest feasible size;
time per step a + b*B with S(B) = S_min (1 + B_c / B) -> training time S_min (a + b B_c + a B_c / B + b B),
minimised at sqrt(a B_c / b), so the choice is the studied feasible size nearest to it (log scale).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stages.core.config import SelectSettings
from stages.select.reasoning import reasoning_markdown
from stages.select.decide import (Measurements, NotReasonable, Study, Target, decision_table, readable_steps, select,
                              step_budget)

ROOT = Path(__file__).resolve().parent.parent
SIZES = [8, 16, 32, 64, 128, 256, 512, 1024]
STUDY = Study(max_steps=2000, lr_min=1.0e-3, lr_max=1.0)
TARGET = Target("accuracy", 0.95, "above", 0.1, True)


def synthetic(time_per_step, steps, *, max_fit=1024, sizes=SIZES, studied=None, useful=None,
              s_min=None, b_crit=None) -> Measurements:
    """Measurements as the earlier stages would record them: sizes above max_fit OOM and are not studied."""
    studied = [b for b in sizes if b <= max_fit] if studied is None else studied
    probe = pd.DataFrame({"batch_size": sizes, "status": ["fits" if b <= max_fit else "oom" for b in sizes],
                          "reason": ["" if b <= max_fit else "CUDA out of memory" for b in sizes]})
    fit = [b for b in sizes if b <= max_fit]
    throughput = pd.DataFrame({"batch_size": fit, "time_per_step_s": [time_per_step(b) for b in fit],
                               "regime": ["scaling"] * len(fit)})
    steps_frame = pd.DataFrame({"batch_size": studied, "best_learning_rate": [0.1] * len(studied),
                                "steps_to_target": [steps(b) for b in studied]})
    return Measurements(probe, max_fit, throughput, useful or max_fit, steps_frame,
                        critical_batch_size=b_crit, s_min=s_min, device="cpu")


def curve(s_min: float, b_crit: float):
    return lambda b: s_min * (1 + b_crit / b)


def chosen(sel) -> int:
    return int(sel.chosen["batch_size"])


@pytest.mark.parametrize("b_crit", [4.0, 100.0, 5000.0])
@pytest.mark.parametrize("max_fit", [64, 256, 1024])
def test_constant_time_per_step_largest_feasible_batch_wins(b_crit, max_fit):
    m = synthetic(lambda b: 0.01, curve(50, b_crit), max_fit=max_fit)
    sel = select(m, SelectSettings(), TARGET, STUDY)
    assert chosen(sel) == max_fit
    row = sel.table.set_index("batch_size").loc[max_fit]
    assert row["training_time_s"] == pytest.approx(0.01 * 50 * (1 + b_crit / max_fit))
    assert row["devices"] == 1 and row["chosen"]


def nearest_in_log(x: float, candidates: list[int]) -> int:
    return min(candidates, key=lambda b: abs(math.log(b / x)))


@pytest.mark.parametrize("a,b,b_crit,max_fit", [
    (0.01, 1e-5, 64, 1024),      # optimum sqrt(64000) = 253 -> 256
    (0.01, 1e-4, 400, 1024),     # optimum 200 -> 256 (nearer in log than 128)
    (0.002, 1e-4, 40, 1024),     # optimum 28.3 -> 32
    (0.05, 1e-6, 1000, 1024),    # optimum 7071, beyond the feasible range -> clipped to 1024
    (0.01, 1e-5, 64, 32),        # optimum 253, but only 32 fits -> 32
    (1e-4, 1e-3, 10, 1024),      # optimum 1, below the studied range -> clipped to 8
])
def test_linear_time_per_step_choice_is_sqrt_a_bcrit_over_b(a, b, b_crit, max_fit):
    m = synthetic(lambda bs: a + b * bs, curve(100, b_crit), max_fit=max_fit)
    sel = select(m, SelectSettings(), TARGET, STUDY)
    optimum = math.sqrt(a * b_crit / b)
    feasible = [s for s in SIZES if s <= max_fit]
    assert chosen(sel) == nearest_in_log(min(max(optimum, feasible[0]), feasible[-1]), feasible)


def test_resource_objective_with_more_devices_allowed():
    """Per-device max 64; 128/256/512 need 2/4/8 data-parallel devices at 90% efficiency."""
    tps, steps = (lambda b: 0.02), curve(100, 200)
    m = synthetic(tps, steps, max_fit=64, studied=SIZES[:7])  # steps measured up to 512 (e.g. on a larger machine)
    settings = SelectSettings(objective="resource", max_devices=8, scaling_efficiency=0.9, device_cost_per_hour=3.0)
    sel = select(m, settings, TARGET, STUDY)
    t = sel.table.set_index("batch_size")
    assert list(t.loc[[64, 128, 256, 512], "devices"]) == [1, 2, 4, 8]
    assert not t.loc[1024, "feasible"] and "more than select.max_devices (8)" in t.loc[1024, "why"]
    assert t.loc[256, "training_time_s"] == pytest.approx(0.02 / 0.9 * steps(256))
    assert t.loc[256, "resource_cost"] == pytest.approx(4 * 0.02 / 0.9 * steps(256) / 3600 * 3.0)
    # resource use: B/64 devices x steps that shrink less than B grows -> one device, its largest batch
    assert chosen(sel) == 64
    # the time objective buys speed with devices: the largest batch the allowed devices hold
    assert chosen(select(m, SelectSettings(objective="time", max_devices=8), TARGET, STUDY)) == 512
    assert chosen(select(m, SelectSettings(objective="time", max_devices=2), TARGET, STUDY)) == 128
    assert chosen(select(m, SelectSettings(objective="time", max_devices=1), TARGET, STUDY)) == 64


def test_sizes_beyond_useful_throughput_are_not_considered():
    m = synthetic(lambda b: 0.01, curve(50, 100), max_fit=1024, useful=256)
    sel = select(m, SelectSettings(), TARGET, STUDY)
    t = sel.table.set_index("batch_size")
    assert chosen(sel) == 256
    assert not t.loc[512, "considered"] and t.loc[512, "feasible"]
    assert t.loc[512, "why"] == "fits but throughput stops rising after 256, so it is not considered"


def test_unstudied_sizes_use_the_fitted_curve_and_are_never_chosen():
    m = synthetic(lambda b: 0.01, curve(50, 100), max_fit=1024, studied=[8, 32, 128, 512], s_min=50, b_crit=100)
    sel = select(m, SelectSettings(), TARGET, STUDY)
    t = sel.table.set_index("batch_size")
    for b in (16, 64, 256):
        assert t.loc[b, "interpolated"] and t.loc[b, "steps_source"] == "fitted curve"
        assert t.loc[b, "steps_to_target"] == pytest.approx(50 * (1 + 100 / b))
        assert not t.loc[b, "considered"] and "no tuned learning rate" in t.loc[b, "why"]
    assert t.loc[1024, "steps_source"] == "not studied"  # outside the measured range: no extrapolation
    assert chosen(sel) == 512


def test_reasoning_points_at_an_unstudied_size_the_fitted_curve_says_is_faster():
    m = synthetic(lambda b: 0.01 + 1e-4 * b, curve(50, 160), studied=[8, 32, 512], s_min=50, b_crit=160)
    sel = select(m, SelectSettings(), TARGET, STUDY)  # optimum sqrt(0.01 * 160 / 1e-4) = 126, not studied
    text = reasoning_markdown(sel, m, TARGET, SelectSettings(), STUDY, {"name": "sgd", "momentum": 0.9})
    assert chosen(sel) == 32
    assert "By that estimate 64, 128, 256 could beat the choice; add them to scaling.batch_sizes" in text
    assert "x0.53 (8->32)" in text  # (S(32) / S(8)) ** (1/2) = (300 / 1050) ** 0.5: per doubling


def test_without_a_b_crit_estimate_unstudied_sizes_interpolate_between_neighbours():
    m = synthetic(lambda b: 0.01, curve(50, 100), studied=[8, 32], s_min=50, b_crit=30)
    m = Measurements(**{**m.__dict__, "critical_batch_size_kind": "lower_bound"})
    t = decision_table(m, SelectSettings(), STUDY).set_index("batch_size")
    assert t.loc[16, "steps_source"] == "interpolated"
    assert t.loc[16, "steps_to_target"] == pytest.approx(math.sqrt(50 * (1 + 100 / 8) * 50 * (1 + 100 / 32)))


def test_sizes_the_scaling_study_skipped_say_why():
    m = synthetic(lambda b: 0.01, curve(50, 100), max_fit=1024)
    steps = m.steps.copy()
    steps["status"] = ["reached"] * 7 + ["skipped"]
    steps["reason"] = [""] * 7 + ["beyond the largest useful batch size"]
    steps.loc[7, "steps_to_target"] = math.nan
    t = decision_table(Measurements(**{**m.__dict__, "steps": steps}), SelectSettings(), STUDY).set_index("batch_size")
    assert t.loc[1024, "why"] == "skipped by the scaling study: beyond the largest useful batch size"
    assert not t.loc[1024, "considered"]


def test_nothing_studied_stops_naming_why():
    m = synthetic(lambda b: 0.01, lambda b: math.nan)
    m.steps["status"], m.steps["reason"] = "skipped", "above the probe's per-device maximum"
    with pytest.raises(NotReasonable, match=r"trained no batch size.*8: skipped by the scaling study: above the probe"):
        select(m, SelectSettings(), TARGET, STUDY)


def test_step_budget_is_readable_and_covers_the_margin():
    assert readable_steps(164.4) == 170
    assert readable_steps(1234) == 1300
    assert readable_steps(96) == 96
    assert readable_steps(9.2) == 10
    assert readable_steps(2000) == 2000
    for steps in (7, 37, 137, 1370, 23456):
        assert step_budget(steps, 1.2) >= steps * 1.2
        assert step_budget(steps, 1.2) <= steps * 1.2 * 1.1 + 1


def test_target_not_better_than_chance_stops():
    m = synthetic(lambda b: 0.01, curve(50, 100))
    with pytest.raises(NotReasonable, match=r"chance level is 0.1.*change the target"):
        select(m, SelectSettings(), Target("accuracy", 0.1, "above", 0.1, False), STUDY)


def test_target_never_reached_stops():
    m = synthetic(lambda b: 0.01, lambda b: math.nan)
    m.steps["status"], m.steps["reason"] = "not_reached", "no learning rate reached the target (diverged 3, not_reached 5)"
    with pytest.raises(NotReasonable, match=r"no batch size reached the target.*scaling.max_steps=2000.*scaling.lr_min"):
        select(m, SelectSettings(), TARGET, STUDY)
    table = decision_table(m, SelectSettings(), STUDY)
    assert (table["steps_source"] == "not reached").all()
    assert table["why"].str.endswith("(no learning rate reached the target (diverged 3, not_reached 5))").all()


# ---------------------------------------------------------------------------- the stage command

def digits_fixture(root: Path, *, steps: dict[int, float] | None = None) -> None:
    """Files the probe, throughput and scaling stages write, for digits_mlp on a CPU (realistic numbers)."""
    sizes = SIZES + [2048]
    probe = pd.DataFrame({"batch_size": sizes, "status": ["fits"] * 8 + ["capped"],
                          "reason": [""] * 8 + ["larger than the 1438 training examples"],
                          "peak_memory_bytes": [1e6 * b for b in SIZES] + [math.nan]})
    tps = {b: 0.002 + 2e-5 * b for b in SIZES}
    throughput = pd.DataFrame({"batch_size": SIZES, "examples_per_s": [b / tps[b] for b in SIZES],
                               "time_per_step_s": [tps[b] for b in SIZES],
                               "regime": ["scaling"] * 6 + ["saturated", "saturated"]})
    steps = steps or {8: 400, 16: 210, 32: 120, 64: 80, 128: 70, 256: 66, 512: 64, 1024: math.nan}
    lrs = {8: 0.03, 16: 0.1, 32: 0.1, 64: 0.3, 128: 0.3, 256: 1.0, 512: 1.0, 1024: math.nan}
    stt = pd.DataFrame({"batch_size": SIZES, "best_learning_rate": [lrs[b] for b in SIZES],
                        "steps_to_target": [steps[b] for b in SIZES],
                        "status": ["reached" if steps[b] == steps[b] else "not_reached" for b in SIZES],
                        "reason": ["" if steps[b] == steps[b] else "no learning rate reached the target (not_reached 8)"
                                   for b in SIZES],
                        "regime": ["perfect_scaling"] * 2 + ["diminishing_returns"] * 4 + ["no_further_gain"] * 2})
    trials = pd.DataFrame({"batch_size": SIZES, "learning_rate": [0.1] * 8, "seed": [0] * 8, "phase": ["search"] * 8,
                           "outcome": ["reached"] * 8, "steps_to_target": [100] * 8, "steps_run": [100] * 8,
                           "examples_run": [100 * b for b in SIZES], "max_steps": [2000] * 8, "seconds": [0.1] * 8,
                           "effective_learning_rate": [1.0] * 8, "reason": [""] * 8})
    files = {
        "probe/probe.csv": probe, "throughput/throughput.csv": throughput,
        "scaling/steps_to_target.csv": stt, "scaling/trials.csv": trials,
        "probe/metrics.json": {"max_batch_size": 1024, "memory_budget_bytes": 2**33, "device": "cpu"},
        "throughput/metrics.json": {"largest_useful_batch_size": 512, "device": "cpu", "threads": 2},
        "scaling/metrics.json": {"critical_batch_size": 60.0, "critical_batch_size_kind": "estimate",
                                 "ci_low": 40.0, "ci_high": 90.0, "s_min": 60.0, "perfect_scaling_up_to": 16,
                                 "batch_sizes": SIZES, "max_steps": 2000, "learning_rate_min_tried": 0.01,
                                 "learning_rate_max_tried": 2.0},
    }
    for name, data in files.items():
        path = root / "reports" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, pd.DataFrame):
            data.to_csv(path, index=False)
        else:
            path.write_text(json.dumps(data))
    (root / "params.yaml").write_text(yaml.safe_dump({"runtime": {"device": "cpu", "seed": 0}}))


def run_stage(module: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_select_stage_writes_the_initial_configuration(tmp_path):
    digits_fixture(tmp_path)
    proc = run_stage("stages.select", tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "reports/select"
    config = yaml.safe_load((out / "initial_config.yaml").read_text())
    # time per step 0.002 + 2e-5 B: 64 -> 0.00328 s x 80 steps = 0.262 s beats 0.317 s (32) and 0.319 s (128)
    assert config["batch_size"] == 64 and config["learning_rate"] == 0.3
    assert config["train_steps"] == 96  # 80 x 1.2
    assert config["optimizer"] == {"name": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}
    assert config["workload"]["name"] == "digits_mlp" and config["devices"] == 1 and config["seed"] == 0
    assert config["expected_training_time_s"] == pytest.approx(0.00328 * 96)
    assert config["objective"] == "time"
    table = pd.read_csv(out / "decision.csv").set_index("batch_size")
    assert table["chosen"].sum() == 1 and table.loc[64, "chosen"]
    assert "throughput stops rising after 512" in table.loc[1024, "why"]
    assert not table.loc[2048, "feasible"] and "1438 training examples" in table.loc[2048, "why"]
    assert table.loc[128, "why"].startswith("training time")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["batch_size"] == 64 and metrics["runner_up_batch_size"] == 32
    reasoning = (out / "reasoning.md").read_text()
    assert "64 minimises training time: 0.262 s vs 0.317 s for 32" in reasoning
    assert "1024 fits but throughput stops rising after 512" in reasoning
    assert "B_crit is about 60 (95% CI 40-90)" in reasoning
    assert "sizes up to 16 in the perfect-scaling regime" in reasoning
    assert table.loc[64, "scaling_regime"] == "diminishing_returns"
    for png in ("training_time.png", "resource_use.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("case", ["chance", "never_reached"])
def test_select_stage_stops_and_writes_nothing(tmp_path, case):
    if case == "chance":
        digits_fixture(tmp_path)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({"workload": {"kwargs": {"target": 0.05}}}))
        expected = "chance level is 0.1"
    else:
        digits_fixture(tmp_path, steps={b: math.nan for b in SIZES})
        expected = "no batch size reached the target (accuracy >= 0.95)"
    proc = run_stage("stages.select", tmp_path)
    assert proc.returncode == 2
    assert expected in proc.stderr and "select wrote no configuration" in proc.stderr
    assert not (tmp_path / "reports/select").exists()
