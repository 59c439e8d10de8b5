"""Issue 29 parts 1-3 through the real `dvc` and `snakemake`: an interrupt at the write of dvc.lock -- SIGINT,
SIGTERM or SIGKILL, in `dvc repro`'s own write or in the record step of a Snakemake job -- leaves a dvc.lock
kickoff puts back whole, and the plain rerun runs only the interrupted job; a killed Snakemake needs no
`--unlock` or `--rerun-incomplete`; a stuck DVC rwlock is named with the command that clears it; no temp
file stays where DVC hashes or git lists.

The interrupts land at a byte the test chooses, never by a sleep race: tests/faults/sitecustomize.py cuts
DVC's own write, and kickoff's writer honours KICKOFF_FAULT_AT_LOCK_WRITE (stages/core/dvc_lock.py).

One project for all: committed stand-in results (each output holds its own path, recorded by `dvc commit`,
as tests/test_robust_pipeline.py makes them), and the interrupted job is the report stage -- the last one,
which writes REPORT.md whatever it finds (here: notes that its inputs are stand-ins), in half a second --
after an edit of its own code.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stages.core.dvc_lock import CUT, FAULT_ENV
from tests.conftest import ROOT, make_project, run, tool_env, write_params
from tests.test_robust_pipeline import PARAMS, committed_results

pytestmark = pytest.mark.e2e

FAULTS = str(ROOT / "tests" / "faults")
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-c1"]


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("interrupts") / "project", PARAMS)
    committed_results(root)
    return root


@pytest.fixture
def project(committed) -> Path:
    """The committed project, given back as committed after each test (params, results, dvc.lock)."""
    yield committed
    run(["git", "checkout", "-q", "--", "."], committed)
    run(["git", "clean", "-fdq", "--", "reports"], committed)


_edits = iter(range(1000))


def change_report(root: Path) -> None:
    """An edit of the report stage's own code: `dvc status` lists the report job, and nothing else."""
    code = root / "stages/report/format.py"
    code.write_text(code.read_text() + f"# edit {next(_edits)}\n")


def entries(root: Path) -> dict:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]


def kickoff_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("kickoff:")]


def ran(stdout: str) -> list[str]:
    """The stages `dvc repro` ran."""
    return re.findall(r"^Running stage '([^']+)'", stdout, re.M)


def planned(proc: subprocess.CompletedProcess) -> list[str]:
    """The jobs Snakemake ran (not its target rule `all`)."""
    return [r for r in re.findall(r"^(?:local)?rule (\w+):$", proc.stdout + proc.stderr, re.M) if r != "all"]


def assert_only_report_changed(root: Path, before: dict) -> None:
    """No job lost its entry, and only the interrupted job's entry changed: it ran again, alone."""
    after = entries(root)
    assert set(after) == set(before)
    assert [job for job in before if after[job] != before[job]] == ["report"]
    assert "up to date" in run(["dvc", "status"], root).stdout


# ---------------------------------------------------------------------------- 1: dvc repro's own write

@pytest.mark.parametrize("signal, where", [("SIGINT", "entries"), ("SIGTERM", "line"), ("SIGKILL", "key")])
def test_dvc_repro_cut_at_its_lock_write_is_put_back_and_the_rerun_runs_only_the_interrupted_job(project, signal, where):
    """`entries`: valid YAML, the later jobs' entries gone (`dvc status` would list them all) -- the plain rerun here
    is the other tool's, `snakemake -c1`: its Snakefile puts the file back before it asks `dvc status`, and runs the
    report alone; `line`: it stops in the middle of a hash, and the first stage the plain `dvc repro` starts puts
    it back and stops; `key`: it is no YAML at all, DVC fails on it before any kickoff code runs, and
    `python -m stages` puts it back. Put back, dvc.lock is byte for byte what it was before the interrupted run,
    so the next run does exactly what that run set out to do: `dvc status` lists the report alone."""
    root = project
    whole, before = (root / "dvc.lock").read_bytes(), entries(root)
    change_report(root)
    proc = run(["dvc", "repro"], root, check=False,
               env={"PYTHONPATH": FAULTS, "KICKOFF_TEST_CUT_DVC_LOCK": f"{signal}:{where}"})
    assert proc.returncode != 0 and ran(proc.stdout) == ["report"], proc.stdout + proc.stderr
    cut = (root / "dvc.lock").read_bytes()
    assert len(cut) < len(whole)

    if where == "entries":
        proc = run(SNAKEMAKE, root)
        (line,) = [ln for ln in kickoff_lines(proc.stderr) if "dvc.lock" in ln and "put back" in ln]
        assert line.startswith("kickoff: dvc.lock lost the entries of ")
        assert planned(proc) == ["report"]
        assert (root / CUT).read_bytes() == cut
        assert_only_report_changed(root, before)
        return
    proc = run(["dvc", "repro"], root, check=False)  # the plain rerun
    assert proc.returncode != 0
    if where == "key":  # DVC refuses the file itself; the documented command puts it back
        assert "dvc.lock" in proc.stderr and ran(proc.stdout) == [] and (root / "dvc.lock").read_bytes() == cut
        proc = run([sys.executable, "-m", "stages"], root)
        lines = kickoff_lines(proc.stderr)
        assert len(lines) == 1, lines
        (line,) = lines
        assert line.startswith("kickoff: dvc.lock ends in the middle of a line") and "put back the last whole" in line
    else:  # the first stage DVC starts puts it back and stops: DVC planned from the cut file
        (line,) = kickoff_lines(proc.stderr)
        assert line.startswith("kickoff: error: dvc.lock ends in the middle of a line") and "put back the last " \
               "whole version" in line and line.endswith("rerun `dvc repro`, and only the interrupted job runs again")
    assert (root / "dvc.lock").read_bytes() == whole and (root / CUT).read_bytes() == cut
    assert re.findall(r"^(\w+):$", run(["dvc", "status"], root).stdout, re.M) == ["report"]  # the interrupted job


# ---------------------------------------------------------------------------- 1: kickoff's own write (Snakemake)

@pytest.mark.parametrize("signal", ["SIGINT", "SIGTERM"])
def test_the_record_step_interrupted_at_its_lock_write_leaves_the_old_lock(project, signal):
    """What every Snakemake job runs after its stage (`python -m stages.pipeline.record JOB`), interrupted half-way
    through writing dvc.lock: the old file stays, whole; its temp file is gone (SIGINT) or waits in .kickoff/tmp/
    for the next start (SIGTERM; SIGKILL, through Snakemake, below)."""
    root = project
    whole = (root / "dvc.lock").read_bytes()
    change_report(root)
    proc = run([sys.executable, "-m", "stages.pipeline.record", "report"], root, check=False, env={FAULT_ENV: signal})
    assert proc.returncode == (130 if signal == "SIGINT" else -15), proc.stderr
    assert (root / "dvc.lock").read_bytes() == whole
    if signal == "SIGINT":
        assert kickoff_lines(proc.stderr) == ["kickoff: interrupted record report; outputs already written are "
                                              "complete, and rerunning resumes from the finished trials"]
    assert re.findall(r"^(\w+):$", run(["dvc", "status"], root).stdout, re.M) == ["report"]  # still to record


def test_a_snakemake_job_killed_at_its_lock_write_leaves_the_old_lock_and_the_rerun_runs_only_it(project):
    root = project
    whole, before = (root / "dvc.lock").read_bytes(), entries(root)
    change_report(root)
    proc = run(SNAKEMAKE, root, check=False, env={FAULT_ENV: "SIGKILL"})
    assert proc.returncode != 0 and "Error in rule report" in proc.stdout + proc.stderr
    assert (root / "dvc.lock").read_bytes() == whole  # written through a temp file: the old one, whole
    (left,) = (root / ".kickoff/tmp").glob("*")  # the killed writer's temp file, named by its machine and process
    assert left.name.split(".")[0].rsplit("-", 1)[1].isdigit() and left.name.endswith(".dvc.lock")

    proc = run(SNAKEMAKE, root)
    assert planned(proc) == ["report"]
    assert list((root / ".kickoff/tmp").glob("*")) == []  # a killed writer's temp file: removed at the next start
    assert_only_report_changed(root, before)


# ---------------------------------------------------------------------------- 2: the plain rerun after a kill

def _group_alive(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def test_after_snakemake_itself_was_killed_the_plain_rerun_needs_no_unlock(project):
    """Snakemake SIGKILLed while its job runs: the job finishes as an orphan and records itself; Snakemake's
    lock and the job's incomplete mark stay. The plain rerun clears them (no Snakemake holds the pipeline)."""
    root = project
    before = entries(root)
    change_report(root)
    proc = subprocess.Popen(SNAKEMAKE, cwd=root, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=tool_env({"PYTHONPATH": FAULTS, "KICKOFF_TEST_KILL_SNAKEMAKE": "stages.report"}))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == -9, out
    deadline = time.monotonic() + 300
    while _group_alive(proc.pid):  # the orphaned job: wait until it has finished (polled: it takes what it takes)
        assert time.monotonic() < deadline, "the orphaned job never finished"
        time.sleep(0.1)
    assert list((root / ".snakemake" / "locks").glob("*")) and any((root / ".snakemake" / "incomplete").rglob("*"))

    proc = run(SNAKEMAKE, root)
    (line,) = [ln for ln in kickoff_lines(proc.stderr) if "leftovers" in ln]
    assert "cleared: its lock and the incomplete marks of 1 job" in line
    assert_only_report_changed(root, before)  # the orphan recorded it; nothing ran twice


def test_a_stuck_dvc_rwlock_is_named_with_the_command_that_clears_it(project):
    """A full disk empties .dvc/tmp/rwlock; then every dvc command fails until it is removed."""
    root = project
    rwlock = root / ".dvc/tmp/rwlock"
    rwlock.write_text("")
    try:
        for cmd in ([sys.executable, "-m", "stages"], [*SNAKEMAKE, "-n"]):
            proc = run(cmd, root, check=False)
            text = proc.stdout + proc.stderr
            assert proc.returncode != 0
            assert ".dvc/tmp/rwlock: DVC's record of the dvc commands running here is empty" in text
            assert "clear it with `rm .dvc/tmp/rwlock`" in text and "Traceback" not in text
    finally:
        rwlock.unlink()
    assert "up to date" in run(["dvc", "status"], root).stdout  # cleared as the line says: DVC works again


# ---------------------------------------------------------------------------- 3: no temp files where DVC hashes

def test_leftover_temp_files_are_removed_at_the_next_start_and_no_folder_hashes_one(project):
    import socket

    root = project
    host = re.sub(r"[^A-Za-z0-9_]+", "_", socket.gethostname())
    old = root / "reports/probe/.probe.csv.k2j4_x9a.tmp.csv"             # an older kickoff's, beside its file
    dead = root / f".kickoff/tmp/{host}-999999999.abcdefgh.probe.csv"     # a writer here that no longer runs
    mine = root / f".kickoff/tmp/{host}-{os.getpid()}.abcdefgh.probe.csv"  # one a running writer still needs
    elsewhere = root / ".kickoff/tmp/node7-12.abcdefgh.probe.csv"          # another machine's, on a shared disk
    for f in (old, dead, mine, elsewhere):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("half")
    check = [sys.executable, "-m", "stages.pipeline", "--check"]  # any kickoff command cleans up first
    run(check, root)
    assert not old.exists() and not dead.exists() and mine.exists() and elsewhere.exists()
    os.utime(elsewhere, (time.time() - 2 * 86400,) * 2)  # two days old: its writer is long gone
    run(check, root)
    assert not elsewhere.exists() and mine.exists()
    mine.unlink()
    # one left where a folder output lies: DVC leaves it out of the folder's hash
    ignored = run(["dvc", "check-ignore", "reports/family/trials/.candidate0.csv.k2j4_x9a.tmp.csv",
                   "reports/scaling/trials/.bs_16.csv.x8d_1ka2.tmp"], root)
    assert len(ignored.stdout.split()) == 2
