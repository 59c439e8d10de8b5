"""Smoke runs of the benchmarks with tiny arguments: each still runs end to end and prints its figures."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_bench_nqm_runs_the_study_on_nqm_with_tiny_arguments():
    done = subprocess.run([sys.executable, "bench/bench_nqm.py", "--sizes", "16", "64", "256", "--dim", "5",
                           "--target", "0.1", "--max-steps", "300", "--seeds", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "search cost" in done.stdout and "largest single trial" in done.stdout
    assert "B_crit closed form" in done.stdout


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_bench_peers_compares_kickoff_and_optuna_with_tiny_arguments():
    pytest.importorskip("optuna", reason="bench_peers needs Optuna, the optional `bench` extra (pip install -e '.[bench]')")
    done = subprocess.run([sys.executable, "bench/bench_peers.py", "--sizes", "64", "--max-steps", "200",
                           "--optuna-trials", "3", "--repeats", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "kickoff_to_10pct" in done.stdout and "optuna_to_10pct" in done.stdout and "optuna_steps" in done.stdout


def test_bench_peers_counts_examples_to_the_first_trial_near_the_best_rate():
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_peers import examples_to_within, objective_value

    history = [(0.1, 100), (1.0, 50), (0.3, 20), (0.32, 10)]
    assert examples_to_within(history, 0.32) == 170  # 0.3 is within 10% of 0.32
    assert examples_to_within(history, 0.05) is None and examples_to_within(history, None) is None
    assert objective_value(120, 0.96, 0.95, 1000) == 120.0
    assert objective_value(None, 0.85, 0.95, 1000) == pytest.approx(1100.0)  # censored, closer ranks first


@pytest.mark.slow  # two tiny studies in two clones: left out of `make test-fast`
def test_bench_study_time_times_two_commits_side_by_side_with_tiny_arguments():
    done = subprocess.run([sys.executable, "bench/bench_study_time.py", "--old", "HEAD", "--new", "HEAD",
                           "--set", "scaling.batch_sizes=[512,1024]", "--set", "scaling.max_steps=150",
                           "--set", "scaling.seeds=1", "--set", "scaling.bootstrap=10"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 slot(s): new / old study wall time" in done.stdout and "same chosen configuration: yes" in done.stdout


@pytest.mark.slow  # three tiny studies: left out of `make test-fast`
def test_bench_rerun_compares_a_rerun_after_a_change_with_a_fresh_study_with_tiny_arguments():
    done = subprocess.run([sys.executable, "bench/bench_rerun.py", "--profile", "none",
                           "--change", "optimizer.weight_decay=1e-3", "--set", "scaling.batch_sizes=[64,256]",
                           "--set", "scaling.max_steps=200", "--set", "scaling.seeds=0", "--set", "scaling.lr_points=3",
                           "--set", "scaling.bootstrap=10"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "rerun / fresh examples:" in done.stdout
    rerun = next(line for line in done.stdout.splitlines() if line.startswith(" rerun:"))
    assert "started from the previous answer at bs [64, 256]" in rerun  # the rerun was seeded, the fresh one not
    fresh = next(line for line in done.stdout.splitlines() if line.startswith(" fresh:"))
    assert "previous answer" not in fresh


@pytest.mark.slurm  # a SLURM of its own and minutes of polling: `make test-slurm`, not `make test`
def test_bench_cluster_times_the_pipeline_on_one_and_two_slurm_slots_with_tiny_arguments():
    done = subprocess.run([sys.executable, "bench/bench_cluster.py", "--tiny", "--set", "family.candidates=null",
                           "--set", "scaling.batch_sizes=[4,8]"],
                          cwd=ROOT, capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    if done.stdout.startswith("bench_cluster: skipped:"):
        pytest.skip(done.stdout.strip())
    assert "critical path" in done.stdout and "ideal speed-up" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(rows) == 2 and rows[1].split("|")[4].strip() == "2"  # two jobs at once with two slots (the sizes' jobs)
