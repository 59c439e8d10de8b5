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
from stages.pipeline import declaration as pipeline
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

    # the study's three waves (stages/scaling/waves.py), each size's job submitted as a cluster job of its own
    rules = ["scaling_wave1", "scaling_gaps", "scaling_wave2", "scaling_contenders", "scaling_trials"]
    targets = [str(provenance.stamp_path(f"scaling_trials@{b}")) for b in SIZES]  # each job's one declared output
    proc = run([sys.executable, "-m", "snakemake", "--profile", "profiles/local-cluster",
                "--allowed-rules", *rules, "--", *targets], root, timeout=300)
    log = proc.stdout + proc.stderr
    submitted = re.findall(r"Submitted job \d+ with external jobid '([^']+)'", log)
    first, second = pipeline.wave_sizes(SIZES)
    assert len(submitted) == len(first) + len(second) + 2 + len(SIZES), log[-3000:]  # one cluster job per job
    # wave 3's jobs, one per size, were in flight together: both submitted before the first of them finished
    ids = {int(jobid): m.group(1) for m in re.finditer(r"rule (\w+):\n((?:    .*\n)*)", log)
           for jobid in re.findall(r"^    jobid: (\d+)$", m.group(2), re.M)}
    wave3 = [i for i, rule in ids.items() if rule == "scaling_trials"]
    assert len(wave3) == len(SIZES), log[-3000:]
    submits = [log.index(f"Submitted job {i} ") for i in wave3]
    finishes = [log.index(f"Finished jobid: {i} ") if f"Finished jobid: {i} " in log else log.index(f"Finished job {i}.")
                for i in wave3]
    assert max(submits) < min(finishes), "the sizes' jobs of the last wave were in flight together"

    jobs = root / ".cluster-jobs"
    pids = set()
    for job_id in submitted:  # each ran as its own process, to the end, and said which size it was
        assert (jobs / f"{job_id}.exit").read_text().strip() == "0"
        pids.add((jobs / f"{job_id}.pid").read_text().strip())
    assert len(pids) == len(submitted)
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
    assert not {f"scaling_wave1@{b}" for b in first} & set(status), status
