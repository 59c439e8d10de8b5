"""The cluster path, exercised (issue 14 part 3): Snakemake's generic cluster executor submits the scaling
fan-out -- one job per batch size -- through profiles/local-cluster/submit.sh, which starts each job as a
background process of its own; status.sh answers the polls; Snakemake collects the outputs. The same path a
SLURM or Kubernetes run takes, on one machine. probe and throughput ran first (`dvc repro throughput`, so
dvc.lock records them and Snakemake plans them as done), so only the per-size jobs run, on the noisy
quadratic model (no data), and each records itself in dvc.lock from its own process."""
from __future__ import annotations

import json
import re
import sys

import pytest

from stages.core import outputs as out
from stages.core import provenance
from tests.conftest import make_project, run

SIZES = [4, 16]
PARAMS = {"workload": {"name": "nqm", "kwargs": {"dim": 10, "target": 0.05}}, "family": {"candidates": None},
          "optimizer": {"name": "sgd", "momentum": 0.0},
          "runtime": {"device": "cpu", "seed": 0, "threads": 1},
          "scaling": {"batch_sizes": SIZES, "lr_min": 0.05, "lr_max": 50.0, "lr_points": 3, "lr_refine_trials": 0,
                      "max_steps": 100, "seeds": 0},
          "probe": {"min_batch_size": 4, "max_batch_size": 16, "steps": 1},
          "throughput": {"warmup_steps": 1, "window_seconds": 0.01, "min_windows": 6, "max_seconds_per_size": 0.2,
                         "split_steps": 3, "peak_seconds": 0.05}}


@pytest.mark.e2e
def test_scaling_fan_out_runs_as_separate_cluster_jobs(tmp_path, monkeypatch):
    pytest.importorskip("snakemake_executor_plugin_cluster_generic",
                        reason="pip install -e '.[cluster]' (the generic cluster executor plugin)")
    root = make_project(tmp_path / "kickoff", PARAMS)
    run(["dvc", "repro", "throughput"], root, timeout=300)  # family (skipped), probe, throughput: recorded in dvc.lock

    targets = [str(provenance.stamp_path(f"scaling_trials@{b}")) for b in SIZES]  # each job's one declared output
    proc = run([sys.executable, "-m", "snakemake", "--profile", "profiles/local-cluster",
                "--allowed-rules", "scaling_trials", "--", *targets], root, timeout=300)
    log = proc.stdout + proc.stderr
    submitted = re.findall(r"Submitted job \d+ with external jobid '([^']+)'", log)
    assert len(submitted) == len(SIZES), log[-3000:]  # one cluster job per batch size, nothing else
    last_submitted = log.rindex("with external jobid")
    assert last_submitted < log.index("Finished jobid"), "the sizes' jobs were in flight together"

    jobs = root / ".cluster-jobs"
    pids = set()
    for job_id in submitted:  # each ran as its own process, to the end, and said which size it was
        assert (jobs / f"{job_id}.exit").read_text().strip() == "0"
        pids.add((jobs / f"{job_id}.pid").read_text().strip())
    assert len(pids) == len(SIZES)
    polls = (jobs / "polls.log").read_text().splitlines()  # Snakemake learnt of each end from status.sh
    assert {f"{job_id} success" for job_id in submitted} <= set(polls)
    job_logs = " ".join((jobs / f"{job_id}.log").read_text() for job_id in submitted)
    for b in SIZES:
        assert f"--batch-size {b}" in job_logs
    monkeypatch.chdir(root)
    for b in SIZES:  # written in place and complete (the reader checks the contract)
        frame = out.read_csv(out.SCALING_TRIALS, batch_size=b)
        assert set(frame["batch_size"]) == {b} and len(frame) >= 1
    # each cluster job recorded itself in dvc.lock: DVC sees the sizes' jobs as up to date
    status = json.loads(run(["dvc", "status", "--json"], root).stdout or "{}")
    assert not {f"scaling_trials@{b}" for b in SIZES} & set(status), status
