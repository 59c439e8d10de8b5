"""Issue 15: nothing lost, nothing silently wrong. Each case runs the command a user runs and checks
the one-line message, the exit code, and that finished outputs are untouched.

The end-to-end cases that need the real `dvc` / `snakemake` live in tests/test_robust_pipeline.py."""
from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stages.core import io
from stages.core.config import validate
from stages.core.errors import ConfigError
from stages.core.io import content_hash
from stages.workloads.base import make_workload
from tests.test_scaling_stage import PARAMS, write_project

ROOT = Path(__file__).resolve().parent.parent


def stage_cli(module: str, args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, **kw)


def params_project(root: Path, params: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


# ---------------------------------------------------------------------------- 7: NaN and infinity

@pytest.mark.parametrize("section,key", [("scaling", "lr_min"), ("scaling", "lr_max"),
                                         ("probe", "safety_margin"), ("optimizer", "momentum")])
@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf"])
def test_nan_and_infinity_are_rejected_naming_the_key(section, key, text):
    raw = yaml.safe_load(f"{section}:\n  {key}: {text}\n")  # what a user writes, as YAML reads it
    with pytest.raises(ConfigError, match=rf"params.yaml: {section}.{key}: received -?(nan|inf); allowed: a finite number"):
        validate(raw)


def test_a_stage_refuses_nan_before_any_work(tmp_path):
    root = params_project(tmp_path, {"scaling": {"lr_max": float("inf")}})
    proc = stage_cli("stages", [], root)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "scaling.lr_max: received inf; allowed: a finite number" in proc.stderr
    assert not (root / "reports").exists()


# ---------------------------------------------------------------------------- 8: workload kwargs types

@pytest.mark.parametrize("name,kwargs,message", [
    ("digits_mlp", {"hidden": "64"}, "workload.kwargs.hidden: received '64' (str); allowed: Sequence[int]"),
    ("digits_mlp", {"hidden": [64, "32"]}, "workload.kwargs.hidden: received [64, '32'] (list)"),
    ("digits_mlp", {"target": "0.9"}, "workload.kwargs.target: received '0.9' (str); allowed: a finite number"),
    ("digits_mlp", {"target": float("nan")}, "workload.kwargs.target: received nan (float); allowed: a finite number"),
    ("synthetic_cnn", {"width": 16.5}, "workload.kwargs.width: received 16.5 (float); allowed: an integer"),
    ("synthetic_cnn", {"batch_norm": 1}, "workload.kwargs.batch_norm: received 1 (int); allowed: true/false"),
])
def test_workload_kwargs_are_checked_against_the_factorys_annotations(name, kwargs, message):
    with pytest.raises(ConfigError) as e:
        make_workload(name, kwargs)
    assert message in str(e.value)


def test_well_typed_kwargs_still_build():
    assert make_workload("digits_mlp", {"hidden": [32, 16], "target": 1}).hidden == [32, 16]  # an int is a number
    assert make_workload("synthetic_cnn", {"width": 8, "batch_norm": True}).width == 8


def test_hidden_as_text_stops_the_stage_instead_of_building_a_6_4_mlp(tmp_path):
    root = params_project(tmp_path, {"workload": {"name": "digits_mlp", "kwargs": {"hidden": "64"}}})
    proc = stage_cli("stages", [], root)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "workload.kwargs.hidden: received '64' (str)" in proc.stderr


# ---------------------------------------------------------------------------- 9: folders in workload.sources

def test_a_folder_hash_covers_its_files_names_and_contents_but_not_pycache(tmp_path):
    lib = tmp_path / "mylib"
    (lib / "sub").mkdir(parents=True)
    (lib / "a.py").write_text("A = 1\n")
    (lib / "sub" / "b.py").write_text("B = 2\n")
    first = content_hash(lib)
    (lib / "__pycache__").mkdir()
    (lib / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\x00junk")
    assert content_hash(lib) == first
    (lib / "sub" / "b.py").write_text("B = 3\n")
    changed = content_hash(lib)
    assert changed != first
    (lib / "sub" / "b.py").rename(lib / "sub" / "c.py")
    assert content_hash(lib) != changed
    assert content_hash(tmp_path / "nothing") == "absent"
    assert content_hash("mylib", base=tmp_path) == content_hash(lib)


def test_the_journal_identity_hashes_code_that_exists():
    """Paths that went stale in a reorganisation would hash as "absent" and stop invalidating journals."""
    from stages.core.imports import ROOT, code_deps
    from stages.search.tune import TRIAL_CODE

    files = code_deps(TRIAL_CODE)  # what the identity's code hash covers: derived from the imports, never typed
    assert {"stages/core/train.py", "stages/core/optim.py", "stages/workloads/base.py", "stages/core/device.py"} <= set(files)
    assert all((ROOT / f).is_file() for f in files), files


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_scaling_trials_with_a_folder_in_sources_runs_and_a_change_in_it_starts_a_new_journal(tmp_path):
    root = write_project(tmp_path / "p")
    (root / "mylib").mkdir()
    (root / "mylib" / "model.py").write_text("WIDTH = 1\n")
    params = {**PARAMS, "workload": {**PARAMS["workload"], "sources": ["mylib"]},
              "scaling": {**PARAMS["scaling"], "lr_points": 2, "seeds": 0}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    proc = stage_cli("stages.scaling", ["coarse", "--batch-size", "4"], root)
    assert proc.returncode == 0, proc.stderr
    journals = set((root / ".kickoff/journal/scaling").glob("bs_4-*.jsonl"))
    assert len(journals) == 1
    (root / "mylib" / "model.py").write_text("WIDTH = 2\n")  # the user's model changed: old trials do not count
    proc = stage_cli("stages.scaling", ["coarse", "--batch-size", "4"], root)
    assert proc.returncode == 0, proc.stderr
    assert "resuming" not in proc.stderr
    assert len(set((root / ".kickoff/journal/scaling").glob("bs_4-*.jsonl"))) == 2


# ---------------------------------------------------------------------------- 11: permissions

def test_atomic_writes_give_the_permissions_a_plain_write_gives(tmp_path):
    old = os.umask(0o022)
    try:
        io.write_text(tmp_path / "new.txt", "x")
        assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o644
        os.umask(0o002)
        io.write_json(tmp_path / "group.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "group.json").stat().st_mode) == 0o664
        (tmp_path / "kept.txt").write_text("old")
        os.chmod(tmp_path / "kept.txt", 0o640)  # an existing file keeps its mode, as open("w") keeps it
        io.write_text(tmp_path / "kept.txt", "new")
        assert stat.S_IMODE((tmp_path / "kept.txt").stat().st_mode) == 0o640
        assert (tmp_path / "kept.txt").read_text() == "new"
    finally:
        os.umask(old)


def test_stage_outputs_are_readable_by_others_under_the_usual_umask(tmp_path):
    root = write_project(tmp_path / "p")
    proc = stage_cli("stages.scaling", ["coarse", "--batch-size", "256"], root,  # skipped: ruled out by probe
                     preexec_fn=lambda: os.umask(0o022))
    assert proc.returncode == 0, proc.stderr
    for path in (root / "reports/scaling/wave1").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# ---------------------------------------------------------------------------- 5: scaling fit input

@pytest.mark.parametrize("rows,message", [
    ("16,100\n64,abc\n256,20\n", "row 3, column steps_to_target: received 'abc'; allowed: positive numbers, or empty"),
    ("16,100\nbig,30\n256,20\n", "row 3, column batch_size: received 'big'; allowed: positive integers"),
    ("16,100\n64.5,30\n256,20\n", "row 3, column batch_size: received 64.5; allowed: positive integers"),
    ("16,100\n64,-3\n256,20\n", "row 3, column steps_to_target: received -3"),
    ("16,100\n64,inf\n256,20\n", "row 3, column steps_to_target: received inf"),
])
def test_scaling_fit_rejects_text_and_impossible_values(tmp_path, rows, message):
    (tmp_path / "t.csv").write_text("batch_size,steps_to_target\n" + rows)
    proc = stage_cli("stages.scaling", ["fit", "t.csv"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"t.csv: {message}" in proc.stderr and proc.stdout == ""


def test_scaling_fit_still_treats_an_empty_cell_as_not_reached(tmp_path):
    # S(B) = 100 (1 + 64 / B) exactly, plus one size that never reached the target
    rows = "".join(f"{b},{100 * (1 + 64 / b):.6f}\n" for b in (8, 16, 32, 64, 128, 256)) + "512,\n"
    (tmp_path / "t.csv").write_text("batch_size,steps_to_target\n" + rows)
    proc = stage_cli("stages.scaling", ["fit", "t.csv", "--bootstrap", "20"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["critical_batch_size"] == pytest.approx(64, rel=1e-3)


# ---------------------------------------------------------------------------- 10: one run per output set

HOLD = ("import sys, time\n"
        "sys.argv = ['{argv0}', *{args!r}]\n"
        "from stages.core.cli import run_main\n"
        "run_main(lambda: (print('holding', flush=True), time.sleep(120)), {stage!r})\n")


def hold_lock(root: Path, stage: str, args: list[str]) -> subprocess.Popen:
    """A run of `stage args` that holds its lock (sleeping instead of working) until killed."""
    code = HOLD.format(argv0=f"stages/{stage}/__main__.py", args=args, stage=stage)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "holding\n"
    return proc


def test_a_second_run_of_a_stage_says_who_holds_it_and_changes_nothing(tmp_path):
    root = params_project(tmp_path, {"runtime": {"device": "cpu"}})
    out = root / "reports/select"
    out.mkdir(parents=True)
    (out / "reasoning.md").write_text("the finished run's reasoning\n")
    holder = hold_lock(root, "select", [])
    try:
        proc = stage_cli("stages.select", [], root)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith(f"kickoff: error: select is already running (pid {holder.pid}, `python")
        assert "started 20" in proc.stderr and ".kickoff/locks/select.lock" in proc.stderr
        assert (out / "reasoning.md").read_text() == "the finished run's reasoning\n"
    finally:
        holder.kill()
        holder.wait()
    # killed without any clean-up: the kernel released the lock, so the next run goes ahead
    proc = stage_cli("stages.select", [], root)
    assert "already running" not in proc.stderr


def test_scaling_jobs_of_different_batch_sizes_run_side_by_side_but_not_the_same_one(tmp_path):
    root = write_project(tmp_path / "p")
    holder = hold_lock(root, "scaling", ["coarse", "--batch-size", "4"])
    try:
        same = stage_cli("stages.scaling", ["coarse", "--batch-size", "4"], root)
        assert same.returncode == 2 and "scaling coarse --batch-size 4 is already running" in same.stderr
        other = stage_cli("stages.scaling", ["coarse", "--batch-size", "256"], root)  # skipped size: quick
        assert other.returncode == 0, other.stderr
    finally:
        holder.kill()
        holder.wait()
    assert not (root / "reports/scaling/wave1/bs_4.csv").exists()


# ---------------------------------------------------------------------------- 12: Ctrl-C

def interrupt_when(proc: subprocess.Popen, marker: str) -> str:
    """Read stderr until `marker`, then Ctrl-C as a terminal sends it (SIGINT to the process group)."""
    seen = ""
    while marker not in seen:
        line = proc.stderr.readline()
        assert line, f"ended before {marker!r}:\n{seen}"
        seen += line
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    return seen + rest


def popen_stage(module: str, args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_ctrl_c_during_the_scaling_study_prints_one_line_and_a_rerun_resumes(tmp_path):
    root = write_project(tmp_path / "p")
    proc = popen_stage("stages.scaling", ["coarse", "--batch-size", "4"], root)
    err = interrupt_when(proc, "bs 4 rung ")  # the progress line of the first rung
    assert proc.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1].startswith("kickoff: interrupted scaling coarse --batch-size 4; ")
    assert not (root / "reports/scaling/wave1/bs_4.csv").exists()
    rerun = stage_cli("stages.scaling", ["coarse", "--batch-size", "4"], root)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stderr  # the advances that had finished are replayed, not trained


@pytest.mark.parametrize("when", ["starting", "trials"])
@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_ctrl_c_during_the_probe_leaves_no_child_traceback(tmp_path, when):
    """Early (the stage still importing torch: tests/faults/sitecustomize.py sends the Ctrl-C as the import
    starts, not a timer) or during the trials: one line. The trials are long enough (1000 steps each) that the
    stage is still at work when Ctrl-C comes."""
    root = params_project(tmp_path, {"runtime": {"device": "cpu", "threads": 1},
                                     "probe": {"batch_sizes": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512], "steps": 1000}})
    if when == "starting":
        proc = popen_stage("stages.probe", [], root, {"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests' / 'faults'}",
                                                       "KICKOFF_TEST_CTRL_C_AT_IMPORT": "stages.probe:torch"})
        err = proc.stderr.read()
        proc.wait(timeout=60)
    else:
        proc = popen_stage("stages.probe", [], root)
        err = interrupt_when(proc, "-- batch size 1:")  # the trial server is up and forking trials
    assert proc.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err and "Error" not in err, err
    assert err.strip().splitlines()[-1].startswith("kickoff: interrupted probe; ")
    assert not (root / "reports").exists()


# ---------------------------------------------------------------------------- 6: NaN from step 1

def diverged_study(root: Path, outcomes: list[str]) -> None:
    """The select fixture, with no size reaching the target and trials with these outcomes (at step 1)."""
    from tests.test_select import SIZES, digits_fixture

    digits_fixture(root, steps={b: math.nan for b in SIZES})
    rows = [{"batch_size": b, "learning_rate": lr, "seed": 0, "phase": "coarse", "outcome": outcome,
             "steps_to_target": None, "steps_run": (steps := 1 if outcome == "diverged" else 2000),
             "examples_run": steps * b, "max_steps": 2000, "seconds": 0.01, "effective_learning_rate": lr * 10,
             "reason": "non-finite train loss at step 1" if outcome == "diverged" else "target not reached"}
            for b in SIZES for lr, outcome in zip((0.01, 0.1), outcomes)]
    pd.DataFrame(rows).to_csv(root / "reports/scaling/trials.csv", index=False)


def test_select_says_every_trial_diverged_instead_of_advising_an_easier_target(tmp_path):
    diverged_study(tmp_path, ["diverged", "diverged"])
    proc = stage_cli("stages.select", [], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "every one of the 16 scaling trials diverged (non-finite loss) within 1 steps" in proc.stderr
    assert "even at the smallest learning rate 0.01" in proc.stderr
    assert "Check the loss and the model first" in proc.stderr and "lower the learning-rate range" in proc.stderr
    assert "Change one of: an easier target" not in proc.stderr
    assert not (tmp_path / "reports/select").exists()


def test_select_advises_more_steps_when_the_closest_trials_ran_to_the_step_cap(tmp_path):
    diverged_study(tmp_path, ["not_reached", "diverged"])  # 0.01 ran its 2000 steps, 0.1 diverged
    proc = stage_cli("stages.select", [], tmp_path)
    assert proc.returncode == 2
    assert "still training when the step cap stopped it at 2000 steps; raise scaling.max_steps (now 2000)" in proc.stderr
    assert "diverged (non-finite" not in proc.stderr and "easier target" not in proc.stderr


# ---------------------------------------------------------------------------- 4: a model too big for memory

def test_the_auto_budget_reads_this_processs_own_cgroup_v2_walking_up(tmp_path):
    from stages.probe.memory import cgroup_memory_limit

    leaf = tmp_path / "system.slice" / "job_42" / "step_0"
    leaf.mkdir(parents=True)
    (tmp_path / "system.slice" / "memory.max").write_text("max\n")          # no limit there
    (tmp_path / "system.slice" / "job_42" / "memory.max").write_text("4294967296\n")  # the SLURM job: 4 GiB
    (leaf / "memory.high").write_text("2147483648\n")                       # the step: 2 GiB, tighter
    (leaf / "memory.max").write_text("max\n")
    assert cgroup_memory_limit("0::/system.slice/job_42/step_0\n", str(tmp_path)) == (2**31, str(leaf / "memory.high"))
    assert cgroup_memory_limit("0::/system.slice/job_42\n", str(tmp_path)) == (
        2**32, str(tmp_path / "system.slice/job_42/memory.max"))
    assert cgroup_memory_limit("0::/\n", str(tmp_path)) is None  # the top level has no limit file


def test_the_auto_budget_reads_a_cgroup_v1_memory_controller(tmp_path):
    from stages.probe.memory import cgroup_memory_limit

    job = tmp_path / "memory" / "slurm" / "uid_0" / "job_7"
    job.mkdir(parents=True)
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    (job / "memory.limit_in_bytes").write_text("1073741824\n")
    text = "12:pids:/slurm/uid_0/job_7\n5:memory:/slurm/uid_0/job_7\n1:name=systemd:/x\n"
    assert cgroup_memory_limit(text, str(tmp_path)) == (2**30, str(job / "memory.limit_in_bytes"))


def test_training_state_is_parameters_gradients_and_optimizer_state():
    from stages.core.config import OptimizerSettings
    from stages.core.optim import state_copies
    from stages.probe.memory import training_state_bytes

    assert [state_copies(OptimizerSettings(name=n, momentum=m)) for n, m in
            [("sgd", 0.0), ("sgd", 0.9), ("adam", 0.9), ("adamw", 0.9)]] == [0, 1, 2, 2]
    assert training_state_bytes(4000, 2) == 16000


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_a_model_too_big_for_the_budget_is_refused_before_any_trial_builds_it(tmp_path):
    # 64 -> 20000 -> 20000 -> 10: 401,520,010 float32 parameters; SGD with momentum keeps one more copy
    params = 64 * 20000 + 20000 + 20000 * 20000 + 20000 + 20000 * 10 + 10
    root = params_project(tmp_path, {"workload": {"name": "digits_mlp", "kwargs": {"hidden": [20000, 20000]}},
                                     "runtime": {"device": "cpu"}, "probe": {"memory_budget": "1GiB"}})
    proc = stage_cli("stages.probe", [], root)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    need_gib = params * 4 * 3 / 2**30
    assert (f"probe.memory_budget: received '1GiB' (1.0 GiB, limit 921.6 MiB after the 10% margin), but the "
            f"model's {params:,} parameters need {need_gib:.1f} GiB before any batch") in proc.stderr
    assert "1 optimizer-state copy (sgd)" in proc.stderr and "batch size" not in proc.stderr  # no trial ran
    assert not (root / "reports").exists()


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_a_cpu_trial_cannot_grow_past_the_budget_and_fails_alone(tmp_path):
    # batch 2048 of 3x64x64 images through 32-channel convolutions: ~1 GiB per activation, over the limit
    root = params_project(tmp_path, {"workload": {"name": "synthetic_cnn",
                                                  "kwargs": {"width": 32, "image_size": 64, "depth": 2}},
                                     "runtime": {"device": "cpu", "threads": 1},
                                     "probe": {"memory_budget": "1GiB", "batch_sizes": [2, 2048], "steps": 1}})
    proc = stage_cli("stages.probe", [], root)
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(root / "reports/probe/probe.csv").set_index("batch_size")
    assert rows.loc[2, "status"] == "fits"
    assert rows.loc[2048, "status"] == "oom" and rows.loc[2048, "rule"] == "message:cpu", rows.loc[2048].to_dict()
    assert json.loads((root / "reports/probe/metrics.json").read_text())["max_batch_size"] == 2
