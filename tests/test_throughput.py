"""Throughput stage: statistics and classification on synthetic timings with known answers, the
stop rule on a fake clock, an input-bound workload (a data loader that sleeps), and smoke runs of
`python -m stages.throughput` in a temporary directory with fixture probe outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages.throughput import timing
from stages.core.config import ThroughputSettings

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------- statistics

def test_median_interval_known_answer():
    # n = 11 at 95%: P(Bin(11, .5) <= 1) = 0.0059 <= 0.025 < P(<= 2) = 0.0327, so the ranks are 2 and 10.
    assert timing.median_interval(range(1, 12), 0.95) == (6.0, 2.0, 10.0)
    assert timing.min_windows_for(0.95) == 6
    assert timing.median_interval([5, 1, 4, 2, 3, 6], 0.95) == (3.5, 1.0, 6.0)
    with pytest.raises(ValueError, match="need 6"):
        timing.median_interval([1, 2, 3, 4, 5], 0.95)


def test_median_interval_covers_the_true_median():
    rng = np.random.default_rng(0)
    true_median = 1.0  # median of a lognormal(0, s) is exp(0)
    hits = sum(lo <= true_median <= hi for lo, hi in
               (timing.median_interval(rng.lognormal(0, 0.3, 10), 0.95)[1:] for _ in range(600)))
    assert hits / 600 >= 0.93


def test_ratio_interval_known_ratio():
    rng = np.random.default_rng(1)
    base = 1000 * (1 + 0.01 * rng.standard_normal(20))
    r, lo, hi = timing.ratio_interval(2 * base[::-1], base)
    assert r == pytest.approx(2.0)
    assert lo < 2.0 < hi and hi - lo < 0.05


@pytest.mark.parametrize("low, high, regime", [(1.9, 2.1, "scaling"), (1.8, 1.95, "scaling"), (1.3, 1.9, "partial"),
                                               (0.9, 1.05, "saturated"), (1.0, 1.1, "saturated"),
                                               (1.0, 1.9, "inconclusive")])
def test_classify_uses_the_interval(low, high, regime):
    assert timing.classify(low, high, doubling_threshold=1.1, scaling_ratio=1.8) == regime


def synthetic(throughput_of, sizes, noise=0.01, windows=12, seed=0):
    """Window samples around a known throughput curve, with a compute-only time split."""
    rng = np.random.default_rng(seed)
    return [timing.SizeTiming(b, list(throughput_of(b) * (1 + noise * rng.standard_normal(windows))),
                              {"data_wait_s": 1e-5, "copy_s": 1e-6, "compute_s": b / throughput_of(b)})
            for b in sizes]


def test_doubling_analysis_finds_where_throughput_stops_growing():
    sizes = [1, 2, 4, 8, 16, 32, 64]
    doublings = timing.doubling_analysis(synthetic(lambda b: 1000.0 * min(b, 16), sizes), 1.1, 1.8)
    assert [d.regime for d in doublings] == ["reference"] + ["scaling"] * 4 + ["saturated"] * 2
    assert [d.doubling_from for d in doublings] == [None, 1, 2, 4, 8, 16, 32]
    assert doublings[1].doubling_ratio == pytest.approx(2.0, rel=0.02)
    assert doublings[1].doubling_ratio_low <= 2.0 <= doublings[1].doubling_ratio_high
    assert timing.largest_useful_batch_size(doublings) == 16
    assert doublings[5].grew_most == "compute_s"  # saturation shows up as compute growth


def test_partial_and_noisy_doublings():
    curve = {1: 1000.0, 2: 1400.0, 4: 1500.0}  # 1 -> 2 is a clear 1.4x (partial); 2 -> 4 is 1.07x
    doublings = timing.doubling_analysis(synthetic(curve.get, [1, 2, 4], noise=0.005), 1.1, 1.8)
    assert [d.regime for d in doublings] == ["reference", "partial", "saturated"]
    assert timing.largest_useful_batch_size(doublings) == 2
    # The same 1.15x gain with 30% noise cannot be told from "no gain": never decided on the point value.
    noisy = timing.doubling_analysis(synthetic({1: 1000.0, 2: 1150.0}.get, [1, 2], noise=0.3, windows=6), 1.1, 1.8)
    assert noisy[1].regime == "inconclusive"
    assert timing.largest_useful_batch_size(noisy, strict=True) == 1
    assert timing.largest_useful_batch_size(noisy) == 2  # no evidence either way: keep the larger size


def test_noise_after_a_clear_saturation_does_not_extend_the_useful_range():
    curve = {1: 1000.0, 2: 2000.0, 4: 2000.0, 8: 2300.0}
    doublings = timing.doubling_analysis(synthetic(curve.get, [1, 2, 4, 8], noise=0.005), 1.1, 1.8)
    doublings[3].regime = "inconclusive"  # as if 4 -> 8 had been measured on a noisy machine
    assert [d.regime for d in doublings[:3]] == ["reference", "scaling", "saturated"]
    assert timing.largest_useful_batch_size(doublings) == 2


def test_gap_of_two_doublings_is_normalised():
    doublings = timing.doubling_analysis(synthetic(lambda b: 500.0 * b, [4, 16]), 1.1, 1.8)
    assert doublings[1].doubling_ratio == pytest.approx(2.0, rel=0.02)
    assert doublings[1].regime == "scaling"


def test_diagnosis_names_the_phase_that_grew():
    sizes = synthetic(lambda b: 1000.0 * min(b, 2), [1, 2, 4])
    for st in sizes:
        st.split = {"data_wait_s": st.batch_size * 1e-3, "copy_s": 1e-6, "compute_s": 1e-4}
    doublings = timing.doubling_analysis(sizes, 1.1, 1.8)
    assert doublings[2].grew_most == "data_wait_s"
    text = timing.diagnose(doublings, {1: False, 2: False, 4: True}, {s.batch_size: s.split for s in sizes})
    assert "Input-bound at batch sizes [4]" in text
    assert "Doubling 2 -> 4" in text and "mostly data wait" in text


def test_diagnosis_blames_no_phase_when_none_grew():
    sizes = synthetic(lambda b: 1000.0 * min(b, 2), [1, 2, 4])
    for st in sizes:
        st.split = {"data_wait_s": 1e-5, "copy_s": 1e-6, "compute_s": 1e-3 / st.batch_size}  # shrinking
    doublings = timing.doubling_analysis(sizes, 1.1, 1.8)
    assert doublings[2].grew_most is None
    text = timing.diagnose(doublings, {}, {s.batch_size: s.split for s in sizes})
    assert "no phase in particular" in text and "outside the step" in text


# ---------------------------------------------------------------------------- timed windows on a fake clock

class FakeClock:
    """A clock that only moves when a fake step runs: step times are exactly known."""

    def __init__(self, step_seconds):
        self.now, self.step_seconds, self.calls = 0.0, step_seconds, 0

    def __call__(self):
        return self.now

    def step(self):
        self.now += self.step_seconds(self.calls)
        self.calls += 1


def test_stop_rule_precision_and_time_cap():
    clock = FakeClock(lambda i: 0.01)  # 100 steps/s, no noise: precise after min_windows
    m = timing.measure(clock.step, 8, 5, timing.StopRule(6, 0.02, 100.0), clock=clock)
    assert (m.windows, m.stop_reason, m.median) == (6, "precision", pytest.approx(800.0))
    assert m.seconds == pytest.approx(0.3)

    clock = FakeClock(lambda i: 0.01 if (i // 5) % 2 else 0.03)  # windows alternate 3x apart: never precise
    m = timing.measure(clock.step, 8, 5, timing.StopRule(6, 0.02, 1.0), clock=clock)
    assert m.stop_reason == "time_cap" and m.seconds >= 1.0 and m.windows >= 6
    assert m.ci_low < m.median < m.ci_high


def test_long_windows_shrink_and_streams_interleave():
    clock = FakeClock(lambda i: 0.01)
    m = timing.Measurement(100, 1, timing.StopRule(6, 0.02, 10.0), window_seconds=0.1)
    m.add(1.0)  # a window 10x the target: the next ones get a tenth of the steps
    assert m.steps_per_window == 10
    order = []
    streams = [(lambda k=k: (order.append(k), clock.step()), timing.Measurement(2, 1, timing.StopRule(6, 0.5, 10.0)))
               for k in "ab"]
    timing.measure_interleaved(streams, clock=clock)
    assert order[:6] == ["a", "a", "a", "b", "b", "b"]  # one settle step, then the window's 2 steps, per stream
    assert all(m.windows == 6 and m.stop_reason == "precision" for _, m in streams)


def test_a_window_on_a_machine_that_slowed_down_is_cut_short():
    clock = FakeClock(lambda i: 0.25)
    assert timing.bounded_window(clock.step, 100, lambda: None, 1.0, clock) == (1.25, 5)
    # 100 steps calibrated for 0.1 s windows, then every step takes 0.25 s (250x slower):
    # each window stops after its first step over 0.4 s, later windows get 1 step, the cap ends it.
    m = timing.Measurement(100, 4, timing.StopRule(6, 0.02, 3.0), window_seconds=0.1)
    timing.measure_interleaved([(clock.step, m)], clock=clock)
    assert m.steps[:2] == [2, 1] and m.stop_reason == "precision" and m.seconds < 3.0
    assert m.median == pytest.approx(4 / 0.25)


def test_split_steps_times_each_phase():
    clock = FakeClock(lambda i: 0.0)

    def advance(dt):
        def run(*_):
            clock.now += dt
            return "batch"
        return run

    times = timing.split_steps(advance(0.003), advance(0.001), advance(0.010), 4, clock=clock)
    assert {p: np.median(v) for p, v in times.items()} == pytest.approx(
        {"data_wait_s": 0.003, "copy_s": 0.001, "compute_s": 0.010})


def test_summarise_flags_input_bound_from_the_windows():
    from stages.throughput.stage import summarise

    rows = []
    for b, pipe, dev in [(2, 100.0, 400.0), (4, 200.0, 210.0)]:
        for mode, eps in (("pipeline", pipe), ("on_device", dev)):
            rows += [{"batch_size": b, "mode": mode, "window": i, "examples_per_s": eps * (1 + 0.001 * i),
                      "stop_reason": "precision"} for i in range(6)]
    extras = [{"batch_size": b, "steps_per_window": 10, "flops_per_example": 100.0, "data_wait_s": 0.01 * b,
               "copy_s": 0.0, "compute_s": 0.001} for b in (2, 4)]
    frame, decision = summarise(pd.DataFrame(rows), extras, ThroughputSettings(), 1e6, threads=2)
    assert frame.input_bound.tolist() == [True, False]
    assert frame.regime.tolist() == ["reference", "scaling"] and decision["largest_useful_batch_size"] == 4
    assert "Input-bound at batch sizes [2]" in decision["diagnosis"]
    assert frame.utilisation.iloc[0] == pytest.approx(100.0 * 100.0 / 1e6, rel=0.01)
    assert frame.time_per_step_s.iloc[1] == pytest.approx(4 / frame.examples_per_s.iloc[1])


# ---------------------------------------------------------------------------- the stage command

QUICK = {"warmup_steps": 2, "window_seconds": 0.02, "min_windows": 6, "max_seconds_per_size": 0.4,
         "split_steps": 5, "peak_seconds": 0.05}


def run_stage(tmp_path: Path, workload: dict, sizes: list[int], throughput: dict | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
    params = {"workload": workload, "runtime": {"device": "cpu", "threads": 1, "seed": 0},
              "throughput": {**QUICK, **(throughput or {})}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    probe = tmp_path / "reports" / "probe"
    probe.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"batch_size": b, "status": "fits", "reason": "", "peak_memory_bytes": 1000 * b, "steps_run": 3,
                   "seconds": 0.01} for b in sizes] + [{"batch_size": 2 * sizes[-1], "status": "oom",
                   "reason": "fake", "peak_memory_bytes": None, "steps_run": 0, "seconds": 0.0}]).to_csv(
        probe / "probe.csv", index=False)
    (probe / "metrics.json").write_text(json.dumps({"max_batch_size": sizes[-1], "device": "cpu"}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "stages.throughput"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_stage_smoke_on_a_tiny_workload(tmp_path):
    proc = run_stage(tmp_path, {"name": "digits_mlp", "kwargs": {"hidden": [8]}}, [1, 2, 4, 8],
                     {"max_batch_size": 4})
    out = tmp_path / "reports" / "throughput"
    frame = pd.read_csv(out / "throughput.csv")
    metrics = {**json.loads((out / "diagnostics.json").read_text()), **json.loads((out / "metrics.json").read_text())}
    assert frame.batch_size.tolist() == [1, 2, 4]  # capped by throughput.max_batch_size; the 16 (oom) never measured
    for col in ("examples_per_s", "examples_per_s_ci_low", "examples_per_s_ci_high", "time_per_step_s", "data_wait_s",
                "copy_s", "compute_s", "input_bound", "on_device_examples_per_s", "doubling_ratio", "doubling_ratio_low",
                "doubling_ratio_high", "regime", "flops_per_example", "achieved_flops_per_s", "utilisation", "windows"):
        assert col in frame.columns, col
    assert (frame.examples_per_s_ci_low <= frame.examples_per_s).all()
    assert (frame.examples_per_s <= frame.examples_per_s_ci_high).all() and (frame.windows >= 6).all()
    # digits_mlp with hidden [8]: forward matmuls 64*8 + 8*10 multiply-adds, backward twice that
    # (minus the input gradient of the first layer): 2*(512+80) + 2*(512+80) + 2*80 FLOPs per example.
    assert frame.flops_per_example.tolist() == pytest.approx([2528.0] * 3)
    assert metrics["feasible_batch_sizes"] == [1, 2, 4, 8] and metrics["threads"] == 1
    assert metrics["largest_useful_batch_size"] in (1, 2, 4)
    assert metrics["first_step_overhead_s"] >= 0  # the first step of a fresh model and optimizer, beyond a steady one
    notes = (out / "diagnosis.md").read_text()  # prose lives apart from the metrics
    assert notes.startswith("## Diagnosis\n\n") and "FlopCounterMode" in notes
    assert all(not isinstance(v, str) or len(v) <= 80 for v in metrics.values()), "metrics.json: numbers and short labels only"
    assert metrics["peak_flops_per_s"] > 0 and 0 < frame.utilisation.max() < 1
    windows = pd.read_csv(out / "windows.csv")
    assert set(windows["mode"]) == {"pipeline", "on_device"}
    for png in ("examples_per_s.png", "time_per_step.png", "time_split.png"):
        assert (out / png).stat().st_size > 1000
    assert proc.stderr.count("examples/s [") == 3  # one result line per size


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_slow_data_loader_is_input_bound(tmp_path):
    run_stage(tmp_path, {"name": "tests.throughput_fakes:factory", "kwargs": {"sleep_per_example_s": 4.0e-3}},
              [2, 4, 8])
    out = tmp_path / "reports" / "throughput"
    frame = pd.read_csv(out / "throughput.csv")
    metrics = {**json.loads((out / "diagnostics.json").read_text()), **json.loads((out / "metrics.json").read_text())}
    assert frame.input_bound.all(), frame[["batch_size", "examples_per_s", "on_device_examples_per_s"]]
    assert metrics["input_bound_batch_sizes"] == [2, 4, 8]
    assert (frame.examples_per_s < 250).all()  # 4 ms per example caps throughput at 250 examples/s
    assert (frame.on_device_examples_per_s > 2 * frame.examples_per_s).all()
    assert (frame.data_wait_s > frame.compute_s).all()
    notes = (out / "diagnosis.md").read_text()
    assert "Input-bound" in notes and "data wait" in notes and "diagnosis" not in metrics
    assert (frame.regime.iloc[1:] != "scaling").all()  # the loader's time grows with the batch: no 2x
    assert (frame.grew_most.iloc[1:] == "data_wait_s").all()


def test_bad_settings_stop_before_any_work(tmp_path, monkeypatch, capsys):
    from stages.core.cli import run_main
    from stages.throughput.stage import main

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"runtime": {"device": "cpu"},
                                                          "throughput": {"min_windows": 3}}))
    monkeypatch.chdir(tmp_path)  # no probe outputs either: the settings are checked first
    with pytest.raises(SystemExit) as exit_:
        run_main(main)
    assert exit_.value.code == 2
    assert "throughput.min_windows: received 3; allowed: at least 6" in capsys.readouterr().err


def test_no_phase_is_blamed_when_the_split_step_did_not_grow():
    """The split is timed apart from the windows: if its total shrank, it cannot explain a slower step,
    even if one phase (here the data wait) grew a little."""
    small = timing.SizeTiming(64, [1000.0] * 8, {"data_wait_s": 1.0e-5, "copy_s": 0.0, "compute_s": 3.0e-4})
    big = timing.SizeTiming(128, [1500.0] * 8, {"data_wait_s": 1.4e-5, "copy_s": 0.0, "compute_s": 2.9e-4})
    (_, d) = timing.doubling_analysis([small, big], doubling_threshold=1.1, scaling_ratio=1.8)
    assert d.regime == "partial" and d.grew_most is None
    assert "No phase of the step grew" in timing.diagnose([d], {64: False, 128: False},
                                                           {64: small.split, 128: big.split})
