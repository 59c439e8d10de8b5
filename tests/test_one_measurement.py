"""One coherent measurement (issue 21): one timer for every stage that reports a time per step, windows
of whole bursts of a DataLoader's workers, the noise-scale sizes within the study's, and the slow-Dataset
case end to end (the choice and the prediction use the recommended workers; baseline's receipt agrees).

The models here wait a fixed time in their forward pass (tests/dataset_fakes.py), so a step's time is
known and barely depends on how busy the machine is."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from stages.core import timer
from stages.core.config import OptimizerSettings
from stages.scaling.noise_scale import choose_sizes
from stages.workloads.base import make_workload

F = "tests.dataset_fakes"
CPU = torch.device("cpu")
SGD = OptimizerSettings(name="sgd", momentum=0.9)
STEP_S = 0.01  # the model's forward waits this long: a step of about 10 ms


def slow_model(**kwargs):
    return make_workload("dataset", {"model": f"{F}:model", "train": f"{F}:train_set", "validation": f"{F}:validation_set",
                                     "target": 0.99, "model_kwargs": {"step_s": STEP_S}, **kwargs})


# ---------------------------------------------------------------------------- the one timer

def test_windows_from_a_training_clock_leave_out_warm_up_and_merge_short_stretches():
    marks = [(1, 0.5), (2, 0.51), (3, 0.52), (5, 0.54), (6, 0.55), (8, 0.57), (12, 0.61), (20, 0.69), (40, 0.89)]
    # the first step's 0.5 s start-up is warm-up; stretches of < 0.05 s merge; every window is 10 ms per step
    windows = timer.windows_from_clock(marks, warmup_steps=5, window_seconds=0.05)
    assert [k for k, _ in windows] == [7, 8, 20] and all(abs(t / k - 0.01) < 1e-9 for k, t in windows)
    median, low, high = timer.rate_of_windows(windows, 4)
    assert median == pytest.approx(400) and low != low  # three windows: too few for a 95% interval
    assert timer.windows_from_clock([(1, 0.1), (2, 0.2)], warmup_steps=5) == []


def test_whole_bursts_a_window_of_two_workers_starts_after_a_wait_and_spans_whole_bursts():
    clock = [0.0]
    taken = [0]

    def step():  # batches j = 0, 2, 4, ... wait 20 ms (a burst of two arrives), the odd ones are ready
        clock[0] += 0.02 if taken[0] % 2 == 0 else 0.0
        taken[0] += 1

    aligned = timer.BurstAligned(step, 2)
    aligned()  # batch 0 (a wait) ...
    aligned()  # ... and batch 1, ready: a window starting here would time half a burst
    m = timer.Measurement(2, 8, timer.StopRule(6, 0.01, 10.0), multiple=2)
    timer.measure_interleaved([(aligned, m)], clock=lambda: clock[0])
    assert m.median == pytest.approx(8 / 0.01)  # 10 ms per step, exactly: no free half-burst
    assert all(k % 2 == 0 for k in m.steps)


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_family_throughput_and_baseline_time_the_same_step_alike(tmp_path, monkeypatch):
    """The same configuration (batch 8, a 10 ms step) timed by the family stage's measure, throughput's
    sweep and the baseline's training clock: one timer, so within 15% of each other (and of 10 ms)."""
    from stages.baseline.stage import steady_time_per_step
    from stages.core.config import ThroughputSettings
    from stages.core.context import Context
    from stages.core.config import validate
    from stages.search.trial import train_to_target
    from stages.family.measure import time_per_step_s
    from stages.throughput.stage import measure_sizes

    w = slow_model(model_kwargs={"step_s": STEP_S, "spin": True})  # a step of fixed length: no sleep overshoot
    params = validate({"workload": {"name": "dataset", "kwargs": w.hyperparameters()}, "runtime": {"device": "cpu"}})
    s = ThroughputSettings(warmup_steps=2, window_seconds=0.05, max_seconds_per_size=0.5, split_steps=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every stage runs (runtime.threads: 1): a busy core next door slows no thread pool
    try:
        for _attempt in range(3):  # a busy neighbour (the other test worker) only slows one of them down: try again
            family = time_per_step_s(w, SGD, 0.01, 8, CPU, 0)
            rows, _extras, _first, _drift = measure_sizes(Context(params, CPU, 1, w), [8], s)
            pipeline = [r for r in rows if r["mode"] == "pipeline"]
            throughput = 8 / sorted(r["examples_per_s"] for r in pipeline)[len(pipeline) // 2]
            result = train_to_target(w, SGD, 0.01, 8, 0, CPU, 60, stop_at_target=False)  # never reaches 0.99: all 60 steps
            baseline, low, high = steady_time_per_step(result, 8)
            times = {"family": family, "throughput": throughput, "baseline": baseline}
            if max(times.values()) / min(times.values()) < 1.15:
                break
    finally:
        torch.set_num_threads(threads)
    assert max(times.values()) / min(times.values()) < 1.15, times
    assert all(t > 0.009 for t in times.values()), times  # at least the model's wait
    assert low is not None and low <= baseline <= high


# ---------------------------------------------------------------------------- the noise scale within the probe's sizes

def test_the_noise_scale_uses_only_sizes_the_study_ran():
    # the study ran 16 and 64 (all the probe found feasible); 16 x 16 = 256 was never probed
    assert choose_sizes(None, [16, 64], [16, 64], 1000) == ((16, 64), "the smallest size that reached the target (16) "
                                                                      "and the largest studied size up to 16x it (64)")
    sizes, why = choose_sizes([8, 1024], [8, 16, 32, 64, 128, 256], [8, 16], 5000)
    assert sizes is None and "1024 is above the largest batch size the study ran (256" in why
    assert choose_sizes(None, [64], [64])[0] is None  # no multiple >= 2 of 64 was run: not measured, said so
    assert choose_sizes([8, 32], [8, 16, 32], [8])[0] == (8, 32)


# ---------------------------------------------------------------------------- the slow-Dataset case, end to end

@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_the_slow_dataset_case_is_measured_as_it_is_trained(tmp_path):
    """bench/bench_slow_dataset.py's quick case: a Dataset sleeping 2 ms per example with num_workers 0
    configured. Throughput recommends workers and times every size with them; select's configuration
    carries them; the baseline trained with them takes the predicted time per step and time to target;
    started with those workers configured, the choice is the same."""
    from bench.bench_slow_dataset import case, run

    def same_choice(figures: dict) -> bool:
        """Started with the recommended workers configured, the same choice -- or one select could not tell from it:
        on this input-bound task every size trains the same examples per second, so neighbouring sizes come within
        noise. The second throughput run may even find throughput flat from a smaller size on, so that the first
        choice is not considered at all; its predicted time to target is compared all the same (every size has one).
        Where that leaves no size the first run's study could use, select refuses (the bench's second select reads
        the first study: the pipeline would rerun the study on the new verdict) -- and it must say it is that: the
        first choice past the new largest useful size, a doubling within noise on this task."""
        chosen, again = figures["batch_size"], figures["batch_size_when_started_with_them"]
        if again is None:
            useful = figures["largest_useful_when_started_with_them"]
            return (useful is not None and chosen > useful
                    and f"{chosen}: fits but throughput stops rising after {useful}" in figures["refused_when_started_with_them"])
        times = figures["predicted_time_to_target_by_size_when_started_with_them"]
        return again == chosen or chosen in (figures["tied_batch_sizes_when_started_with_them"] or []) or (
            chosen in times and again in times and times[chosen] <= 1.15 * times[again])

    def timings_hold(figures: dict) -> bool:
        """What timings taken apart decide (each asserted below, the same bounds on both tries)."""
        return 0.7 <= figures["time_per_step_ratio"] <= 1.4 and same_choice(figures) and (
            figures["steps_to_target_ratio"] != 1 or 0.85 <= figures["time_to_target_ratio"] <= 1.15)

    figures = run(case(2.0e-3, [8, 16, 32], 256, quick=True), tmp_path, log=lambda *_: None)
    if not timings_hold(figures):
        # one more run when a busy neighbour (CI's 2 shared cores) slowed one of the two timings apart:
        # the assertions are the same; seen once in five suite runs (0.82), never on an idle machine
        tmp_path = tmp_path / "again"
        tmp_path.mkdir()
        figures = run(case(2.0e-3, [8, 16, 32], 256, quick=True), tmp_path, log=lambda *_: None)
    assert figures["recommended_num_workers"] == 2 == figures["measured_with_num_workers"]
    assert figures["data"]["num_workers"] == 2 and figures["data"]["persistent_workers"] is True
    assert 0.7 <= figures["time_per_step_ratio"] <= 1.4, figures  # a budget of under 20 steps: a few windows
    if figures["steps_to_target_ratio"] == 1:  # the prediction's steps came true: its time must too
        assert 0.85 <= figures["time_to_target_ratio"] <= 1.15, figures
    assert same_choice(figures), figures
    report = (tmp_path / "reports/throughput/diagnosis.md").read_text()
    assert report.startswith("## Diagnosis\n\n**The input pipeline is the limit.**")


# ---------------------------------------------------------------------------- words that say what was measured

def test_wordings_say_exactly_what_was_measured(tmp_path):
    from stages.report.format import fmt
    from stages.report.stage import closing_summary
    from stages.throughput import timing

    # a gap of two doublings: the raw gain and the gain per doubling, both said
    d = timing.Doubling(64, 16, 1.4666, 1.4, 1.5, "partial", "compute_s", {"compute_s": 0.001})
    text = timing.diagnose([timing.Doubling(16, None, float("nan"), float("nan"), float("nan"), "reference", None, {}), d],
                           {16: True, 64: True}, {16: {"data_wait_s": 0.01, "copy_s": 0.0, "compute_s": 0.001},
                                                  64: {"data_wait_s": 0.04, "copy_s": 0.0, "compute_s": 0.002}},
                           loader="num_workers 2, persistent workers")
    assert "Going 16 -> 64 (2 doublings) raised throughput 2.15x in all, 1.47x per doubling" in text
    assert text.startswith("**The input pipeline is the limit.**") and "not an input bottleneck" not in text
    # larger sizes input-bound, a smaller doubling compute-bound: said as such, no contradiction
    text = timing.diagnose([timing.Doubling(64, None, float("nan"), float("nan"), float("nan"), "reference", None, {}),
                            timing.Doubling(128, 64, 1.7, 1.65, 1.75, "partial", "compute_s", {"compute_s": 0.001})],
                           {64: False, 128: False, 256: True},
                           {256: {"data_wait_s": 0.0001, "copy_s": 0.0, "compute_s": 0.0005}})
    assert "at 64 -> 128 a hardware limit, not the input pipeline (which limits only the sizes named above)" in text
    assert "not an input bottleneck" not in text
    # numbers for reading: 3 significant figures; counts exact
    assert fmt(0.010000000000000004, "learning_rate") == "0.01" and fmt(52440.7) == "52,400" and fmt(15001709) == "15,001,709"
    # the closing line: the recommendation and where to read it
    (tmp_path / "reports/select").mkdir(parents=True)
    (tmp_path / "reports/select/initial_config.yaml").write_text(yaml.safe_dump({
        "batch_size": 16, "learning_rate": 0.010000000000000004, "train_steps": 120, "expected_time_to_target_s": 2.2049,
        "expected_training_time_s": 3.1, "workload": {"name": "digits_mlp", "kwargs": {"hidden": [16]}},
        "data": {"num_workers": 2}}))
    line = closing_summary(tmp_path)
    assert line.startswith("recommended: digits_mlp (hidden [16]), batch size 16, learning rate 0.01, 120 steps, "
                           "num_workers 2; expected 2.2 s to the target") and line.endswith("reports/REPORT.md")
