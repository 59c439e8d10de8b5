"""The scaling study in waves (issue 26 part 1, issue 27 part 1): which sizes each wave searches, which
it predicts and which wave 3 refines -- as pure decisions, and as the stage's jobs run on a workload
whose steps to target are known in closed form, in any order."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stages.pipeline.declaration import wave_sizes
from stages.scaling.waves import Answer, halving_in_perfect_scaling, plan_contenders, plan_gaps


def test_the_first_wave_spreads_over_the_range_and_the_second_fills_it():
    assert wave_sizes([4, 8, 16, 32, 64, 128, 256, 512, 1024]) == ([4, 16, 64, 256, 1024], [8, 32, 128, 512])
    assert wave_sizes([32, 64, 128, 256, 512, 1024]) == ([64, 256, 1024], [32, 128, 512])
    assert wave_sizes([64]) == ([64], [])
    assert wave_sizes([8, 16, 32], adaptive=False) == ([8, 16, 32], [])


def test_a_halving_counts_as_perfect_scaling_from_the_ratio_per_halving():
    assert halving_in_perfect_scaling((64, 100.0), (32, 190.0), 1.8)
    assert not halving_in_perfect_scaling((64, 100.0), (32, 170.0), 1.8)
    assert halving_in_perfect_scaling((64, 100.0), (16, 330.0), 1.8)  # two halvings: 1.8^2 = 3.24
    assert not halving_in_perfect_scaling((64, 100.0), (16, 300.0), 1.8)


def answers(**steps) -> dict[int, Answer]:
    return {int(b[2:]): Answer(int(b[2:]), None if s is None else 0.1 * math.sqrt(int(b[2:]) / 16), s)
            for b, s in steps.items()}


def test_wave2_predicts_a_size_its_neighbours_confirm_in_perfect_scaling_and_searches_the_rest_from_them():
    first = answers(bs16=1000.0, bs64=250.0, bs256=80.0)  # 16 -> 64: x4 (perfect); 64 -> 256: x3.1 (not)
    plans = plan_gaps(first, [32, 128], adaptive=True, ratio=1.8)
    assert plans[32]["action"] == "predict" and plans[32]["steps"] == pytest.approx(500.0)  # from bs 64, perfect scaling
    assert "perfect scaling" in plans[32]["why"] and "never chosen" in plans[32]["why"]
    assert plans[128]["action"] == "search"
    prior = plans[128]["prior"]  # log-log between its neighbours
    assert prior["rate"] == pytest.approx(0.1 * math.sqrt(128 / 16)) and prior["steps"] == pytest.approx(math.sqrt(250 * 80))
    assert "between bs 64" in prior["source"] and "bs 256" in prior["source"]
    # without scaling.adaptive nothing is predicted; with lr_start centre nothing is borrowed
    assert plan_gaps(first, [32, 128], adaptive=False, ratio=1.8)[32]["action"] == "search"
    assert plan_gaps(first, [32, 128], adaptive=True, ratio=1.8, use_neighbours=False)[128]["prior"] is None


def test_wave2_predicts_a_size_that_cannot_win_between_two_slow_ones():
    first = answers(bs16=400.0, bs64=250.0, bs256=80.0, bs1024=60.0)
    timing = {16: 0.001, 64: 0.0011, 256: 0.0015, 1024: 0.006}  # times: 0.4, 0.275, 0.12, 0.36
    plans = plan_gaps(first, [32, 128, 512], adaptive=True, ratio=1.8, time_per_step_s=timing, factor=1.5)
    assert plans[32]["action"] == "predict" and "cannot win" in plans[32]["why"]   # 16 and 64 both > 1.5x bs 256's
    assert plans[128]["action"] == "search" and plans[512]["action"] == "search"  # next to the best
    assert plans[32]["steps"] == pytest.approx(math.sqrt(400 * 250))


def table(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame([{"batch_size": b, "status": st, "steps_to_target": s, "best_learning_rate": 0.1}
                         for b, st, s in rows])


def test_wave3_refines_what_can_still_win_and_where_b_crits_fit_bends():
    coarse = table([(64, "reached", 400.0), (128, "reached", 200.0), (256, "reached", 110.0), (512, "reached", 80.0),
                    (1024, "reached", 70.0), (32, "not_reached", math.nan)])
    timing = {64: 0.001, 128: 0.0011, 256: 0.0012, 512: 0.0016, 1024: 0.003}  # 0.4, 0.22, 0.132, 0.128, 0.21
    plans = plan_contenders(coarse, timing, factor=1.5, adaptive=True, b_crit=150.0)
    assert {b for b, p in plans.items() if p["candidate"]} == {256, 512}
    assert all(plans[b]["refine"] and plans[b]["seeds"] for b in (256, 512))
    assert plans[128]["refine"] and not plans[128]["seeds"] and not plans[128]["candidate"]  # next to B_crit ~150
    assert "B_crit's fit" in plans[128]["why"]
    # the ends of the curve (E_min at 64, S_min at 1024) are refined for the fit too, never candidates
    for b, end in ((64, "smallest"), (1024, "largest")):
        assert plans[b]["refine"] and not plans[b]["seeds"] and not plans[b]["candidate"], b
        assert f"B_crit's fit -- it is the {end} size that reached the target" in plans[b]["why"]
    assert not plans[32]["refine"]
    inside = table([(64, "reached", 400.0), (128, "reached", 200.0), (256, "reached", 110.0), (512, "reached", 80.0),
                    (1024, "reached", 70.0), (2048, "reached", 66.0)])
    plans = plan_contenders(inside, {**timing, 2048: 0.006}, factor=1.5, adaptive=True, b_crit=150.0)
    assert not plans[1024]["refine"] and "beyond scaling.contender_factor" in plans[1024]["why"]  # neither end nor bend
    every = plan_contenders(coarse, timing, factor=1.5, adaptive=False)
    assert all(p["refine"] for b, p in every.items() if b != 32)


# ---------------------------------------------------------------------------- the jobs, on a known curve

SIZES = [8, 16, 32, 64, 128, 256, 512, 1024]
S_MIN, B_CRIT = 30.0, 60.0
PARAMS = {
    "workload": {"name": "tests.curve_workload:make", "kwargs": {"s_min": S_MIN, "b_crit": B_CRIT}},
    "optimizer": {"name": "sgd", "momentum": 0.0},
    "runtime": {"device": "cpu", "seed": 0, "threads": 1},
    "scaling": {"batch_sizes": SIZES, "max_steps": 4000, "seeds": 1, "bootstrap": 50, "fit_refine_trials": 0},
}


def time_per_step(b: int) -> float:
    return 1e-3 * (1 + b / 256)  # a device that starts to fill at 256


def run_study(root: Path, order) -> Path:
    """Every job of the study, each wave's jobs in `order` (a function of the wave's sizes), as a cluster
    or DVC may run them; a throughput table so that wave 3 weighs time."""
    from stages.scaling import stage as scaling

    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (root / "reports/throughput").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"batch_size": SIZES, "examples_per_s": [b / time_per_step(b) for b in SIZES],
                  "time_per_step_s": [time_per_step(b) for b in SIZES], "regime": "scaling"}
                 ).to_csv(root / "reports/throughput/throughput.csv", index=False)
    first, second = wave_sizes(SIZES)
    cwd = Path.cwd()
    os.chdir(root)
    try:
        for b in order(first):
            scaling.main(["coarse", "--batch-size", str(b)])
        scaling.main(["gaps"])
        for b in order(second):
            scaling.main(["fill", "--batch-size", str(b)])
        scaling.main(["contenders"])
        for b in order(SIZES):
            scaling.main(["trials", "--batch-size", str(b)])
        scaling.main(["summarize"])
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return run_study(tmp_path_factory.mktemp("waves") / "up", sorted)




@pytest.mark.slow
def test_the_jobs_of_a_wave_give_the_same_results_in_any_order(study, tmp_path):
    other = run_study(tmp_path / "down", lambda sizes: sorted(sizes, reverse=True))
    for name in ("wave2.json", "contenders.json", "steps_to_target.csv", "trials.csv"):
        a, b = (study / "reports/scaling" / name).read_text(), (other / "reports/scaling" / name).read_text()
        if name.endswith(".csv"):  # the seconds are clock readings
            a, b = (pd.read_csv(study / "reports/scaling" / name), pd.read_csv(other / "reports/scaling" / name))
            a, b = (x.drop(columns=[c for c in x.columns if "second" in c]) for x in (a, b))
            pd.testing.assert_frame_equal(a, b)
        else:
            assert a == b, name


@pytest.mark.slow
def test_the_study_predicts_what_it_can_refines_only_contenders_and_finds_b_crit(study):
    plan = json.loads((study / "reports/scaling/wave2.json").read_text())["sizes"]
    contenders = json.loads((study / "reports/scaling/contenders.json").read_text())["sizes"]
    table = pd.read_csv(study / "reports/scaling/steps_to_target.csv").set_index("batch_size")
    trials = pd.read_csv(study / "reports/scaling/trials.csv")
    truth = {b: S_MIN * (1 + B_CRIT / b) for b in SIZES}
    times = {b: truth[b] * time_per_step(b) for b in SIZES}
    fastest = min(times, key=times.get)
    # a predicted size is never trained, and its steps are close to the truth
    for b, p in plan.items():
        if p["action"] == "predict":
            assert table.loc[int(b), "status"] == "predicted"
            assert trials[trials["batch_size"] == int(b)]["examples_run"].sum() == 0
            assert table.loc[int(b), "predicted_steps_to_target"] == pytest.approx(truth[int(b)], rel=0.35)
    # wave 3 spent seeds only where a size can win -- the truly fastest among them -- and nothing elsewhere
    seeded = set(trials.loc[trials["phase"] == "seed", "batch_size"].astype(int))
    candidates = {int(b) for b, p in contenders.items() if p.get("candidate")}
    assert seeded == candidates and fastest in candidates
    for b in SIZES:
        if not contenders[str(b)].get("refine"):
            assert set(trials.loc[trials["batch_size"] == b, "phase"].dropna()) <= {"coarse", "widen", "refine"}
    # a size refined only for B_crit's fit spends at most scaling.fit_refine_trials on its rate (it cannot win;
    # here none, where lr_refine_trials would bisect)
    fit_only = [int(b) for b, p in contenders.items() if p.get("refine") and not p.get("seeds")]
    assert fit_only
    for b in fit_only:
        wave = "wave1" if (study / f"reports/scaling/wave1/bs_{b}.csv").exists() else "wave2"
        coarse = pd.read_csv(study / f"reports/scaling/{wave}/bs_{b}.csv")
        in_wave3 = (trials.loc[trials["batch_size"] == b, "phase"] == "refine").sum() - (coarse["phase"] == "refine").sum()
        assert in_wave3 <= PARAMS["scaling"]["fit_refine_trials"], b
    # every measured size is within 15% of the closed form (the grid's and refinement's resolution)
    for b in table.index[table["status"] == "reached"]:
        assert table.loc[b, "steps_to_target"] == pytest.approx(truth[b], rel=0.15)
    metrics = json.loads((study / "reports/scaling/metrics.json").read_text())
    assert metrics["ci_low"] <= B_CRIT <= metrics["ci_high"]
    notes = (study / "reports/scaling/notes.md").read_text()
    assert "## Refined where it matters" in notes and "## Where each search started" in notes


@pytest.mark.slow
def test_select_never_chooses_a_size_wave3_left_coarse(study):
    from stages.core.config import SelectSettings
    from stages.select.decide import Measurements, Study, decision_table

    steps = pd.read_csv(study / "reports/scaling/steps_to_target.csv")
    probe = pd.DataFrame({"batch_size": SIZES, "status": ["fits"] * len(SIZES), "reason": [""] * len(SIZES)})
    throughput = pd.read_csv(study / "reports/throughput/throughput.csv")
    t = decision_table(Measurements(probe, 1024, throughput, 1024, steps, device="cpu"), SelectSettings(),
                       Study(max_steps=4000, lr_min=1e-2, lr_max=2.0)).set_index("batch_size")
    left = steps[steps["candidate"].eq(False) & (steps["status"] == "reached")]["batch_size"]
    assert len(left)
    for b in left:
        assert not t.loc[b, "considered"] and t.loc[b, "why"].startswith("not a candidate (scaling.adaptive)")


# ---------------------------------------------------------------------------- scaling.budget_seconds

def test_a_budget_below_the_pilot_is_refused_and_the_coarse_waves_share_the_rest_by_cost():
    from stages.core.config import ScalingSettings
    from stages.scaling.plan import COARSE_SHARE, check_budget, coarse_allowance

    timing = {64: 0.001, 256: 0.002, 1024: 0.006}
    s = ScalingSettings(budget_seconds=0.5, lr_points=6)
    why = check_budget([64, 256, 1024], timing, 16, s)  # the pilot: 6 rates x 16 steps x (0.001 + 0.002 + 0.006)
    assert why and why.startswith("scaling.budget_seconds: received 0.5; allowed: at least 0.864 s")
    s = ScalingSettings(budget_seconds=100.0)
    assert check_budget([64, 256, 1024], timing, 16, s) is None
    shares = {b: coarse_allowance(b, [64, 256, 1024], {}, timing, s) for b in timing}
    assert sum(shares.values()) == pytest.approx(COARSE_SHARE * 100.0)
    assert shares[1024] == pytest.approx(6 * shares[64])  # in proportion to the estimated cost
    assert coarse_allowance(64, [64], {}, timing, ScalingSettings()) is None  # no budget, no limit


def test_wave3_shares_what_the_coarse_waves_left_and_says_when_nothing_was():
    from stages.scaling.waves import share_budget

    plans = {256: {"refine": True, "seeds": True, "candidate": True, "why": "refined: can still win -- ..."},
             512: {"refine": True, "seeds": True, "candidate": True, "why": "refined: can still win -- ..."},
             1024: {"refine": False, "candidate": False, "why": "not refined: ..."}}
    shared = share_budget({k: dict(v) for k, v in plans.items()}, 30.0, {256: 10.0, 512: 20.0})
    assert (shared[256]["budget_seconds"], shared[512]["budget_seconds"]) == (10.0, 20.0)
    spent = share_budget({k: dict(v) for k, v in plans.items()}, -1.0, {256: 10.0, 512: 20.0})
    assert not spent[256]["refine"] and "budget_seconds was spent by the coarse search" in spent[256]["why"]
    assert spent[256]["candidate"]  # it may still be chosen, on its coarse answer (the report says so)


def test_the_race_stops_where_its_share_of_the_budget_runs_out_and_says_so():
    import torch

    from stages.core.config import OptimizerSettings
    from stages.search.coarse import Target, rung_search
    from stages.search.pool import TrialPool
    from stages.search.trial import LiveTrial
    from tests.scripted_workload import ScriptedWorkload

    w = ScriptedWorkload(lambda step: min(0.96, 0.1 + step / 300))
    pool = TrialPool(lambda lr, seed: LiveTrial(w, OptimizerSettings(momentum=0.0), lr, 1, seed, torch.device("cpu"),
                                                1000, hold_factor=1.25))
    rungs_seen = []
    trials = rung_search(pool, [0.01, 0.1, 1.0], 0, Target("accuracy", 0.95, "above"), first_rung=16,
                         max_steps=1000, resolution=0.05, margin=0.5, widen_step=3.0, low_limit=0.01, high_limit=1.0,
                         on_rung=lambda k, t: rungs_seen.append(k),
                         out_of_budget=lambda t: max(x.result.steps_run for x in t) >= 60)  # "spent" by step 60
    assert rungs_seen == [16, 33, 66] and all(t.result.steps_run <= 66 for t in trials)
    cut = [t for t in trials if t.result.outcome == "paused"]
    assert cut and all("stopped by scaling.budget_seconds at step" in t.result.reason for t in cut)
