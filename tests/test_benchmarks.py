"""Smoke runs of the benchmarks with tiny arguments: each still runs end to end and prints its figures."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_nqm_runs_the_study_on_nqm_with_tiny_arguments():
    done = subprocess.run([sys.executable, "bench/bench_nqm.py", "--sizes", "16", "64", "256", "--dim", "5",
                           "--target", "0.1", "--max-steps", "300", "--seeds", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "search cost" in done.stdout and "largest single trial" in done.stdout
    assert "B_crit closed form" in done.stdout
