"""The pipeline on a real SLURM scheduler (issue 27 part 2): the small profile through
`snakemake --profile` -- profiles/slurm with what belongs to the test cluster (bench/bench_cluster.py's
`cluster_profile`: no account, no GPU, job states from squeue) -- on a single-node SLURM with two job slots
started from Debian's packages (tests/slurm_cluster.py; installed where missing and possible, else every
test here is skipped with one line saying why).

Shown from the scheduler's own records (scontrol: each job's state, start and end): every kickoff job ran
as a SLURM job of its own; jobs of one wave -- jobs with no path between them in the declared DAG -- ran at
the same time; every job recorded itself, so `dvc status` is clean and Snakemake plans nothing. Every job
that measures no time (the scaling study's jobs, select, report) gives exactly what `dvc repro` gives from
the same journals: forced again with `dvc repro --force -s`, not a byte of its results or of dvc.lock
changes. A job cancelled with `scancel` mid-search loses no committed output, and the rerun completes.

    make test-slurm          # these tests and bench_cluster's smoke test: minutes, so left out of `make test`
"""
from __future__ import annotations

import io
import subprocess
import sys
import time

import pandas as pd
import pytest

from bench.bench_cluster import (cluster_profile, kickoff_jobs, overlapping, profile_partitions, project_params,
                                 snakemake_on, waves)
from bench.bench_staleness import dvc_stale, snakemake_plan
from stages.core import outputs as out
from stages.core import provenance
from stages.pipeline.freshness import all_jobs
from tests.conftest import make_project, run, tool_env
from tests.slurm_cluster import SlurmUnavailable, start

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

PROFILES = ["small"]  # the pull-request review's small configuration, on the default workload
# The jobs whose results include measured times (time per step, examples per second, peak memory, the
# baseline's clock): run twice, they differ. Every other job's results follow from its inputs and journals.
MEASURING = ("family_trial", "family", "probe", "throughput", "baseline")
TIMES = ["seconds", "train_seconds"]  # the columns of a trial's table and curve that hold its clock


def say(request, text: str) -> None:
    """A line in pytest's own output, shown although output is captured (the figures are for the reader)."""
    plugins = request.config.pluginmanager
    with plugins.get_plugin("capturemanager").global_and_fixture_disabled():
        plugins.get_plugin("terminalreporter").write_line(f"slurm: {text}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    try:
        cluster = start(tmp_path_factory.mktemp("slurm"), slots=2, partitions=profile_partitions())
    except SlurmUnavailable as e:
        pytest.skip(f"no SLURM to test on: {e}")
    say(request, f"scheduler (munged, slurmctld, slurmd) up in {cluster.started_s:.1f} s, 2 job slots")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def study(cluster, tmp_path_factory, request):
    """The small profile run once through SLURM in a committed project, its results committed."""
    root = make_project(tmp_path_factory.mktemp("project") / "kickoff", commit=False)
    run([sys.executable, "-m", "stages.pipeline", *(a for p in PROFILES for a in ("--profile", p))], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "project"], root)
    began = time.monotonic()
    snakemake_on(cluster, root, timeout=3600)
    wall = time.monotonic() - began
    jobs = kickoff_jobs(cluster)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "ran on SLURM"], root)
    makespan = (max(j.end for j in jobs.values()) - min(j.start for j in jobs.values())).total_seconds()
    say(request, f"the {' + '.join(PROFILES)} profile through SLURM: {wall:.0f} s wall (Snakemake), "
                 f"{makespan:.0f} s from the first job's start to the last one's end, {len(jobs)} jobs")
    return root, jobs, project_params(root)


def test_every_job_ran_as_its_own_slurm_job_and_recorded_itself_in_dvc_lock(study):
    root, jobs, params = study
    assert set(jobs) == set(all_jobs(params))  # one completed SLURM job per kickoff job, named by Snakemake's comment
    assert dvc_stale(root) == set()
    assert snakemake_plan(root) == set()


def test_jobs_of_one_wave_ran_at_the_same_time(study, request):
    """Waves from the declared DAG (jobs of equal depth: none reads from another), times from the
    scheduler: in every wave of two jobs or more, two of its jobs ran at once (two slots)."""
    root, jobs, params = study
    wide = [wave for wave in waves(params) if len(wave) > 1]
    assert wide  # today: the family's candidates, the scaling study's sizes
    for wave in wide:
        ran = [jobs[j] for j in wave]
        assert overlapping(ran) == 2, [(j.kickoff_job, j.start, j.end) for j in ran]
        first_end = min(j.end for j in ran)
        together = sum(max(0.0, (min(a.end, b.end) - max(a.start, b.start)).total_seconds())
                       for i, a in enumerate(ran) for b in ran[i + 1:])
        say(request, f"wave {', '.join(wave)}: {len(wave)} jobs, {together:.0f} s of pairs running at once; "
                     f"the first to end ran {(first_end - min(j.start for j in ran)).total_seconds():.0f} s")


def test_every_job_that_measures_no_time_gives_what_dvc_repro_gives_from_the_same_journals(study):
    """`dvc repro --force -s` of every job whose results follow from its inputs and journals (the scaling
    trials replay from .kickoff/journal): its results and dvc.lock come out byte for byte as SLURM's."""
    root, jobs, params = study
    replayed = [j for j in all_jobs(params) if j.partition("@")[0] not in MEASURING]
    assert any(j.startswith("scaling_trials@") for j in replayed)
    proc = run(["dvc", "repro", "--force", "-s", *replayed], root, timeout=1800)
    assert all(f"Running stage '{j}'" in proc.stdout for j in replayed)
    assert run(["git", "status", "--porcelain"], root).stdout == ""


def test_a_job_cancelled_with_scancel_loses_no_committed_output_and_the_rerun_completes(study, cluster, monkeypatch):
    """A scaling job forced to search again (`snakemake -f`, its journal cut to its first trial), cancelled
    with scancel once it has trained a trial: its committed results, every other output and dvc.lock are as
    committed, Snakemake reports the failure; run again, it resumes and completes: the same trials, each
    to the last metric (only their clock differs), recorded in dvc.lock."""
    root, jobs, params = study
    journals = {path: len(path.read_text().splitlines()) for path in (root / ".kickoff/journal/scaling").glob("bs_*.jsonl")}
    journal, trials = max(journals.items(), key=lambda kv: kv[1])
    assert trials >= 4, journals  # a search of several trials: cancelled after its second, most are still to run
    size = int(journal.name.split("-")[0].removeprefix("bs_"))
    job = f"scaling_trials@{size}"
    journal.write_text(journal.read_text().splitlines(keepends=True)[0])  # the first trial kept: it resumes there
    target = str(provenance.stamp_path(job))

    before = {j.id for j in cluster.jobs()}
    snakemake = subprocess.Popen([sys.executable, "-m", "snakemake", "--profile", cluster_profile(root), "-f", target],
                                 cwd=root, env=tool_env(cluster.env), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 1200
        slurm_job = None
        while slurm_job is None or len(journal.read_text().splitlines()) < 2:  # a trial trained in this job
            assert snakemake.poll() is None, snakemake.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the job never trained a trial"
            slurm_job = next((j for j in cluster.jobs() if j.id not in before and j.kickoff_job == job
                              and j.state == "RUNNING"), None)
            time.sleep(0.2)
        cluster.command("scancel", slurm_job.id)
        log = snakemake.communicate(timeout=600)[0]
    finally:
        if snakemake.poll() is None:
            snakemake.kill()
    assert snakemake.returncode != 0, log[-3000:]
    assert next(j for j in cluster.jobs() if j.id == slurm_job.id).state == "CANCELLED"
    assert run(["git", "status", "--porcelain", "--", "reports", "dvc.lock"], root).stdout == ""
    assert dvc_stale(root) == set()
    monkeypatch.chdir(root)
    assert set(out.read_csv(out.SCALING_TRIALS, batch_size=size)["batch_size"]) == {size}  # whole, as its manifest says

    snakemake_on(cluster, root, "-f", target, timeout=1800)  # the rerun: resumes from the journal, completes
    stale = dvc_stale(root)  # recorded; as after `dvc repro --force -s`, its reader is stale (the trials' clock)
    assert job not in stale and stale <= {"scaling"}, stale
    assert len(journal.read_text().splitlines()) == trials
    for output in (out.SCALING_TRIALS, out.SCALING_TRIAL_CURVES):  # the same trials, to the last metric
        path = str(output.at(batch_size=size))
        committed = pd.read_csv(io.StringIO(run(["git", "show", f"HEAD:{path}"], root).stdout))
        pd.testing.assert_frame_equal(out.read_csv(output, batch_size=size).drop(columns=TIMES, errors="ignore"),
                                      committed.drop(columns=TIMES, errors="ignore"))

