"""Issue 15 through the real `dvc` and `snakemake` in a temporary git repository: a params typo never
deletes committed results (case 1), a second run of a running stage through either tool changes
nothing (case 10), and a fresh clone of a project with committed results is up to date for both
tools (case 13).

The committed results are stand-ins (each output holds its own path): these tests are about which
files the tools keep, remove or plan to rerun, not about what the stages compute, so no stage has
to train. `dvc commit` records them in dvc.lock exactly as a finished run would.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages.pipeline import declaration as pipeline
from tests.conftest import make_project, run, write_params

pytestmark = pytest.mark.e2e

BATCH_SIZES = [16, 64]
PARAMS = {"workload": {"name": "nqm", "kwargs": {"dim": 8, "target": 0.3}},
          "family": {"candidates": None},  # the family stage skipped: no candidate jobs
          "runtime": {"device": "cpu", "seed": 0, "threads": 1},
          "scaling": {"batch_sizes": BATCH_SIZES}}


def output_paths() -> list[str]:
    """Every declared output of PARAMS's pipeline (each wave's jobs: only its own sizes)."""
    params = {"scaling": {"batch_sizes": BATCH_SIZES, "adaptive": True}}
    return sorted({o.path.replace("{batch_size}", str(b)) for s in pipeline.STAGES if not s.indexed
                   for b in (pipeline.items_of(s, params) if s.foreach else [None]) for o in s.outputs})


def committed_results(root: Path) -> dict[str, bytes]:
    """Write a stand-in for every output -- the settings stage's own, which the others track their keys
    in, for real -- record them in dvc.lock, commit; return path -> bytes."""
    settings = {o.path for o in pipeline.stage("settings").outputs}
    for path in output_paths():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        if path not in settings:
            (root / path).write_text(f"committed result {path}\n")
    run([sys.executable, "-m", "stages.settings"], root)
    run(["dvc", "commit", "--force", "--quiet"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "reference results"], root)
    assert "up to date" in run(["dvc", "status"], root).stdout
    return {path: (root / path).read_bytes() for path in output_paths()}


def assert_untouched(root: Path, before: dict[str, bytes]) -> None:
    after = {path: (root / path).read_bytes() if (root / path).exists() else None for path in before}
    assert after == before
    changed = run(["git", "status", "--porcelain", "--", "reports"], root).stdout
    assert changed == "", changed


@pytest.fixture(scope="module")
def results_project(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    root = make_project(tmp_path_factory.mktemp("robust") / "project", PARAMS)
    return root, committed_results(root)


# ---------------------------------------------------------------------------- 1: a typo keeps results

TYPOS = [({"optimizer": {"name": "rmsprop"}}, "optimizer.name: received 'rmsprop'"),
         ({"workload": {"kwargs": {"dim": "8", "target": 0.3}}}, "workload.kwargs.dim: received '8' (str)")]


@pytest.mark.parametrize("typo,message", TYPOS, ids=["optimizer-name", "kwargs-type"])
def test_a_typo_under_dvc_repro_keeps_the_committed_results(results_project, typo, message):
    root, before = results_project
    original = (root / "params.yaml").read_text()
    try:
        write_params(root, typo)
        proc = run(["dvc", "repro", "probe"], root, check=False)
        assert proc.returncode != 0
        assert message in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
        assert_untouched(root, before)
    finally:
        (root / "params.yaml").write_text(original)


def test_a_typo_under_snakemake_stops_before_any_job_and_keeps_the_committed_results(results_project):
    """Snakemake removes a job's outputs before running it: the Snakefile checks what the stage would
    (here a type error in the workload's kwargs) before any job starts."""
    root, before = results_project
    original = (root / "params.yaml").read_text()
    try:
        write_params(root, TYPOS[1][0])
        proc = run([sys.executable, "-m", "snakemake", "-c1", "--forcerun", "probe", "--", "probe"], root, check=False)
        assert proc.returncode != 0
        assert TYPOS[1][1] in proc.stderr + proc.stdout and "Error in rule" not in proc.stderr  # no job ran
        assert_untouched(root, before)
    finally:
        (root / "params.yaml").write_text(original)


def test_dvc_yaml_marks_every_output_persistent():
    rendered = pipeline.render_dvc({"scaling": {"batch_sizes": BATCH_SIZES}})
    for body in rendered["stages"].values():
        body = body.get("do", body)
        for section in ("outs", "metrics"):
            for entry in body.get(section, []):
                (options,) = entry.values()
                assert options["persist"] is True, entry


# ---------------------------------------------------------------------------- 10: two tools at once

def test_while_a_stage_runs_a_second_run_through_either_tool_stops_and_changes_nothing(results_project):
    """`dvc repro` and `snakemake` on the same stage at once: the second waits for nothing and
    mixes nothing -- it names the run that holds the stage and fails, the outputs stay as they are."""
    from tests.test_robust import hold_lock

    root, before = results_project
    holder = hold_lock(root, "select", [])
    try:
        for cmd in (["dvc", "repro", "--single-item", "--force", "select"],
                    [sys.executable, "-m", "snakemake", "-c1", "--forcerun", "select", "--", "select"]):
            proc = run(cmd, root, check=False)
            assert proc.returncode != 0, cmd
            assert f"select is already running (pid {holder.pid}," in proc.stderr + proc.stdout, cmd
            assert_untouched(root, before)
    finally:
        holder.kill()
        holder.wait()


def _holding(root: Path, code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code + "\nprint('holding', flush=True)\ntime.sleep(120)"], cwd=root,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "holding\n"
    return proc


def test_one_pipeline_run_per_clone_across_the_two_tools(results_project):
    """Issue 22 part 3: Snakemake refuses to start while `dvc repro` holds DVC's lock (zc.lockfile, as
    DVC takes it), and a stage that `dvc repro` starts refuses while Snakemake holds the pipeline."""
    root, before = results_project
    dvc = _holding(root, "import time, zc.lockfile; lock = zc.lockfile.LockFile('.dvc/tmp/lock')")
    try:
        proc = run([sys.executable, "-m", "snakemake", "-c1", "--forcerun", "select", "--", "select"], root, check=False)
        assert proc.returncode != 0
        assert f"dvc is running in this clone (pid {dvc.pid};" in proc.stderr + proc.stdout
        assert_untouched(root, before)
    finally:
        dvc.kill()
        dvc.wait()
    snakemake = _holding(root, "import time; from stages.core.lock import hold_pipeline; fd = hold_pipeline('snakemake')")
    try:
        proc = run(["dvc", "repro", "--single-item", "--force", "select"], root, check=False)
        assert proc.returncode != 0
        message = [ln for ln in proc.stderr.splitlines() if ln.startswith("kickoff: error:")]
        assert len(message) == 1 and f"the pipeline is running in this clone (pid {snakemake.pid}, `snakemake`" in message[0]
        assert_untouched(root, before)
    finally:
        snakemake.kill()
        snakemake.wait()


# ---------------------------------------------------------------------------- 13: a fresh clone

def planned_jobs(root: Path, *args: str) -> set[str]:
    out = run([sys.executable, "-m", "snakemake", "-n", *args], root).stdout
    return set(re.findall(r"^(?:local)?rule (\w+):$", out, re.M)) - {"all"}


@pytest.fixture
def fresh_clone(results_project, tmp_path) -> Path:
    """A `git clone` whose code and params are newer than the committed results, as a checkout can
    leave them (git does not keep file times; here the worst case, made certain)."""
    root, _ = results_project
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    later = time.time() + 60
    for path in [clone / "params.yaml", *(clone / "stages").rglob("*.py")]:
        os.utime(path, (later, later))
    return clone


def test_a_fresh_clone_with_committed_results_plans_nothing_in_either_tool(fresh_clone, results_project):
    assert "up to date" in run(["dvc", "status"], fresh_clone).stdout
    assert planned_jobs(fresh_clone) == set()  # the documented invocation: plain `snakemake`
    # dvc.lock decides, not file times: the same without the project's default profile
    assert planned_jobs(fresh_clone, "--workflow-profile", "none") == set()
    assert_untouched(fresh_clone, results_project[1])


def test_in_a_fresh_clone_a_code_edit_reruns_the_same_stages_in_both_tools(fresh_clone):
    """The edited file no longer has dvc.lock's md5: `dvc status` lists select, and Snakemake plans
    it and what reads its outputs."""
    path = fresh_clone / "stages/select/decide.py"
    path.write_text(path.read_text() + "\n# an edit\n")
    stale = run(["dvc", "status"], fresh_clone).stdout
    assert re.findall(r"^(\w+):", stale, re.M) == ["select"]
    assert planned_jobs(fresh_clone) == {"select", "baseline", "report"}
