"""The cluster path, exercised (issue 14 part 3): Snakemake's generic cluster executor submits the scaling
fan-out -- one job per batch size -- through profiles/local-cluster/submit.sh, which starts each job as a
background process of its own; status.sh answers the polls; Snakemake collects the outputs. The same path a
SLURM or Kubernetes run takes, on one machine. probe and throughput are given (their outputs written here,
`--allowed-rules scaling_trials`), so only the per-size jobs run, on the noisy quadratic model (no data)."""
from __future__ import annotations

import json
import re
import sys

import pytest

from stages.core import outputs as out
from tests.conftest import make_project, run

SIZES = [4, 16]
PARAMS = {"workload": {"name": "nqm", "kwargs": {"dim": 10, "target": 0.05}}, "family": {"candidates": None},
          "optimizer": {"name": "sgd", "momentum": 0.0},
          "runtime": {"device": "cpu", "seed": 0, "threads": 1},
          "scaling": {"batch_sizes": SIZES, "lr_min": 0.05, "lr_max": 50.0, "lr_points": 3, "lr_refine_trials": 0,
                      "max_steps": 100, "seeds": 0}}


@pytest.mark.e2e
def test_scaling_fan_out_runs_as_separate_cluster_jobs(tmp_path, monkeypatch):
    pytest.importorskip("snakemake_executor_plugin_cluster_generic",
                        reason="pip install -e '.[cluster]' (the generic cluster executor plugin)")
    root = make_project(tmp_path / "kickoff", PARAMS, dvc=False)
    (root / "reports/probe").mkdir(parents=True)
    (root / out.PROBE_CSV.path).write_text("batch_size,status,peak_memory_bytes,reason\n4,fits,4000,\n16,fits,16000,\n")
    (root / out.PROBE_METRICS.path).write_text(json.dumps({"max_batch_size": 16}))
    (root / "reports/throughput").mkdir(parents=True)
    (root / out.THROUGHPUT_METRICS.path).write_text(json.dumps({"largest_useful_batch_size": 16}))
    run([sys.executable, "-m", "stages.family", "choose"], root)  # family skipped: model.yaml says so

    targets = [str(out.SCALING_TRIALS.at(batch_size=b)) for b in SIZES]
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
    for b in SIZES:  # collected: every output in place and complete (the reader checks the contract)
        frame = out.read_csv(out.SCALING_TRIALS, batch_size=b)
        assert set(frame["batch_size"]) == {b} and len(frame) >= 1
