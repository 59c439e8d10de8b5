"""The adaptive descent (issue 20 part 3, scaling.adaptive): the study runs from the largest batch size
down, stops once two consecutive halvings are confirmed in perfect scaling, records the sizes below as
`predicted` (perfect scaling from the smallest measured size) without training them, and no later
stage takes a predicted size for a measurement: B_crit's fit leaves them out, select never chooses one."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from stages.core.config import SelectSettings
from stages.scaling import trials as scaling_trials
from stages.scaling.descent import descent_stop, halving_in_perfect_scaling
from stages.scaling.plan import not_trained
from stages.select.decide import Measurements, Study, decision_table

ROOT = Path(__file__).resolve().parent.parent
SIZES = [4, 8, 16, 32, 64, 128, 256, 512, 1024]


def truth(b_crit: float, s_min: float = 100.0):
    return lambda b: s_min * (1 + b_crit / b)


def test_a_halving_counts_as_perfect_scaling_from_the_ratio_per_halving():
    assert halving_in_perfect_scaling((64, 100), (32, 180), 1.8)
    assert not halving_in_perfect_scaling((64, 100), (32, 179), 1.8)
    assert halving_in_perfect_scaling((64, 100), (16, 324), 1.8)       # two halvings: 1.8 ** 2
    assert not halving_in_perfect_scaling((64, 100), (16, 323), 1.8)
    assert descent_stop([(64, 100), (32, 190)], 1.8) is None          # one halving is not two
    assert descent_stop([(64, 100), (32, 190), (16, 380)], 1.8)
    assert descent_stop([(64, 100), (32, None), (16, 380)], 1.8) is None  # a size without steps breaks the chain
    assert descent_stop([(128, 100), (64, 150), (32, 300), (16, 600)], 1.8)  # the last two count


def fake_descent(monkeypatch, steps_of, skipped=()):
    """descent() with each size's search replaced by the closed form; returns (searched sizes, run)."""
    searched: list[int] = []

    def search_size(ctx, b, replays=True, studied=None):
        searched.append(b)
        return [b]  # stands for the size's trials

    monkeypatch.setattr(scaling_trials, "search_size", search_size)
    monkeypatch.setattr(scaling_trials, "size_steps", lambda ctx, b, trials: steps_of(b))
    ctx = SimpleNamespace(params=SimpleNamespace(scaling=SimpleNamespace(batch_sizes=SIZES, adaptive_ratio=1.8)))
    reason_of = lambda b: "probe: oom" if b in skipped else None  # noqa: E731
    return searched, lambda b: scaling_trials.descent(ctx, b, reason_of)


@pytest.mark.parametrize("b_crit", [40.0, 300.0, 2000.0])
def test_the_descent_stops_after_two_halvings_in_perfect_scaling(monkeypatch, b_crit):
    steps = truth(b_crit)
    searched, descend = fake_descent(monkeypatch, steps)
    # where the closed form puts the stop: the first size below two halvings each >= 1.8x the steps
    ratio = {b: steps(b // 2) / steps(b) for b in SIZES[1:]}
    stop = next((b // 8 for b in sorted(SIZES, reverse=True)[:-2] if ratio[b] >= 1.8 and ratio[b // 2] >= 1.8), None)
    for b in SIZES:
        searched.clear()
        trials, prediction = descend(b)
        if stop is not None and b <= stop:
            smallest = 2 * stop
            assert prediction is not None and trials == [], b
            assert prediction.steps == pytest.approx(steps(smallest) * smallest / b)  # perfect scaling from it
            assert f"perfect scaling from bs {smallest}" in prediction.why and "scaling.adaptive" in prediction.why
            assert searched == [s for s in sorted(SIZES, reverse=True) if s >= smallest]  # never below the stop
        else:
            assert prediction is None and trials == [b]
            assert searched == [s for s in sorted(SIZES, reverse=True) if s >= b]  # largest first, down to itself
    # perfect scaling holds well below B_crit: the larger it is, the more sizes are predicted, not trained
    assert {40.0: None, 300.0: 8, 2000.0: 32}[b_crit] == stop


def test_sizes_the_earlier_stages_ruled_out_are_stepped_over(monkeypatch):
    searched, descend = fake_descent(monkeypatch, truth(2000.0), skipped=(1024, 512))
    _, prediction = descend(4)
    assert prediction is not None and 1024 not in searched and 512 not in searched and searched[0] == 256


def test_a_size_that_did_not_reach_the_target_keeps_the_descent_going(monkeypatch):
    steps = truth(300.0)
    searched, descend = fake_descent(monkeypatch, lambda b: None if b == 32 else steps(b))
    trials, prediction = descend(4)
    assert searched == [1024, 512, 256, 128, 64, 32, 16, 8, 4] and prediction is None


def test_the_plan_leaves_out_what_the_measured_sizes_already_predict():
    steps = truth(2000.0)  # 256 -> 128 -> 64 in perfect scaling (512 -> 256 is not: x1.80 short)
    measured = {b: steps(b) for b in (1024, 512, 256, 128)}  # 64 not yet known
    assert not_trained(SIZES, measured, 1.8) == set()
    measured[64] = steps(64)
    assert not_trained(SIZES, measured, 1.8) == {4, 8, 16, 32}
    assert not_trained(SIZES, {b: steps(b) for b in (512, 256, 128)}, 1.8) == set()  # a gap at the top: unknown


def test_select_never_chooses_a_predicted_size_even_where_it_would_be_fastest():
    sizes = [16, 32, 64, 128]
    steps = pd.DataFrame({"batch_size": sizes, "best_learning_rate": [math.nan, 0.1, 0.2, 0.3],
                          "steps_to_target": [math.nan, 400.0, 200.0, 110.0],
                          "status": ["predicted", "reached", "reached", "reached"],
                          "reason": ["predicted, not trained (scaling.adaptive): ...", "", "", ""],
                          "predicted_steps_to_target": [800.0, math.nan, math.nan, math.nan]})
    probe = pd.DataFrame({"batch_size": sizes, "status": ["fits"] * 4, "reason": [""] * 4})
    # time per step so small at 16 that its predicted steps would train fastest
    throughput = pd.DataFrame({"batch_size": sizes, "time_per_step_s": [1e-6, 0.01, 0.02, 0.04], "regime": ["scaling"] * 4})
    m = Measurements(probe, 128, throughput, 128, steps, device="cpu")
    t = decision_table(m, SelectSettings(), Study(max_steps=2000, lr_min=1e-3, lr_max=1.0)).set_index("batch_size")
    assert t.loc[16, "steps_source"] == "predicted" and t.loc[16, "steps_to_target"] == 800.0
    assert t.loc[16, "training_time_s"] < t.loc[32:, "training_time_s"].min()
    assert not t.loc[16, "considered"] and t.loc[16, "why"].startswith("not trained, so not a candidate")
    assert t.loc[32:, "considered"].all()


# ---------------------------------------------------------------------------- the stage, on a known curve

CURVE_SIZES = [16, 32, 64, 128]
PARAMS = {
    "workload": {"name": "tests.curve_workload:make", "kwargs": {"s_min": 1.0, "b_crit": 3000.0}},
    "optimizer": {"name": "sgd", "momentum": 0.0},
    "runtime": {"device": "cpu", "seed": 0, "threads": 1},
    "scaling": {"batch_sizes": CURVE_SIZES, "max_steps": 2000, "seeds": 1, "bootstrap": 20},
}


@pytest.fixture(scope="module")
def curve_study(tmp_path_factory):
    """The jobs in the order DVC runs them (smallest first): the first does the descent for all."""
    from stages.scaling import stage as scaling

    root = tmp_path_factory.mktemp("adaptive")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    cwd = Path.cwd()
    os.chdir(root)
    try:
        for b in CURVE_SIZES:
            scaling.main(["trials", "--batch-size", str(b)])
        scaling.main(["summarize"])
    finally:
        os.chdir(cwd)
    return root


def test_the_stage_predicts_the_sizes_below_two_perfect_halvings_and_trains_the_rest(curve_study):
    rows = pd.read_csv(curve_study / "reports/scaling/trials/bs_16.csv")
    assert list(rows["outcome"]) == ["predicted"] and rows["examples_run"].sum() == 0
    assert "perfect scaling from bs 32" in rows["reason"][0]
    for b in (32, 64, 128):  # trained, each once (the later jobs replayed the first one's searches)
        t = pd.read_csv(curve_study / f"reports/scaling/trials/bs_{b}.csv")
        assert (t["outcome"] != "predicted").all() and len(t) >= 3
    table = pd.read_csv(curve_study / "reports/scaling/steps_to_target.csv").set_index("batch_size")
    assert table.loc[16, "status"] == "predicted" and pd.isna(table.loc[16, "steps_to_target"])
    # perfect scaling from bs 32's measured steps, and close to the truth (S = 1 + 3000/B)
    assert table.loc[16, "predicted_steps_to_target"] == pytest.approx(table.loc[32, "steps_to_target"] * 2, abs=1)
    assert table.loc[16, "predicted_steps_to_target"] == pytest.approx(1 + 3000 / 16, rel=0.15)
    metrics = json.loads((curve_study / "reports/scaling/diagnostics.json").read_text())
    assert metrics["predicted_batch_sizes"] == [16] and metrics["predicted_examples_saved"] > 0
    assert 16 not in metrics["studied_batch_sizes"]
    notes = (curve_study / "reports/scaling/notes.md").read_text()
    assert "## Predicted, not trained" in notes and "Batch size 16 was predicted" in notes


def test_b_crit_is_fitted_on_measured_sizes_only(curve_study):
    from stages.scaling.tables import fit_rows

    trials = pd.read_csv(curve_study / "reports/scaling/trials.csv")
    table = pd.read_csv(curve_study / "reports/scaling/steps_to_target.csv")
    assert set(fit_rows(trials, table)["batch_size"]) == {32, 64, 128}
