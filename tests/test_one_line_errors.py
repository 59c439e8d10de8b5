"""Issue 22 part 5: one line for every user error. Each case runs the command a user runs in a temporary
copy of the project and checks one line on stderr, exit code 2, and nothing written."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run

TABLE = "batch_size,steps_to_target\n16,6650\n32,3500\n64,1930\n128,1120\n256,760\n"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """One committed copy of the project (no DVC: these commands run stages by hand)."""
    from tests.conftest import make_project

    return make_project(tmp_path_factory.mktemp("oneline") / "project", dvc=False)


def snapshot(root: Path, locks: bool = True) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".git" not in p.parts and "__pycache__" not in p.parts
            and (locks or not {"locks", "cache"} & set(p.parts))}  # .kickoff's bookkeeping: no output


def one_line(root: Path, args: list[str], cwd: Path | None = None, message: str = "", locks: bool = True) -> str:
    """Run `python -m ARGS`; assert one line on stderr, exit 2, nothing written (with `locks`, not even a
    lock file in .kickoff/locks or a passed render check in .kickoff/cache); return the line."""
    before = snapshot(root, locks)
    proc = run([sys.executable, "-m", *args], cwd or root, check=False, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("kickoff: error: "), proc.stderr
    assert message in lines[0], lines[0]
    assert snapshot(root, locks) == before
    return lines[0]


@pytest.mark.parametrize("stage", ["stages.select", "stages.probe", "stages.throughput", "stages.report", "stages"])
def test_unknown_arguments_are_refused_naming_what_is_allowed(root, stage):
    one_line(root, [stage, "--batch-size", "16"],
             message=f"python -m {stage}: unrecognized arguments: --batch-size 16; allowed: python -m {stage} [-h]")


@pytest.mark.parametrize("args, message", [
    (["stages.scaling", "coarse", "--batch-size", "x"], "argument --batch-size: invalid int value: 'x'; allowed: "
                                                        "python -m stages.scaling coarse [-h] --batch-size BATCH_SIZE"),
    (["stages.scaling", "summarize", "--bogus"], "unrecognized arguments: --bogus"),
    (["stages.family", "trial"], "the following arguments are required: --candidate"),
])
def test_a_subcommand_with_bad_arguments_is_one_line_before_any_lock(root, args, message):
    one_line(root, args, message=message)


@pytest.mark.parametrize("extra, message", [
    (["--bootstrap", "0"], "--bootstrap: received 0; allowed: a positive number of resamples"),
    (["--bootstrap", "-3"], "--bootstrap: received -3; allowed: a positive number of resamples"),
    (["--confidence", "2"], "--confidence: received 2; allowed: a level strictly between 0 and 1"),
    (["--confidence", "nan"], "--confidence: received nan; allowed: a level strictly between 0 and 1"),
    (["--confidence", "0"], "--confidence: received 0; allowed: a level strictly between 0 and 1"),
])
def test_scaling_fit_refuses_impossible_options(root, extra, message):
    (root / "table.csv").write_text(TABLE)
    try:
        one_line(root, ["stages.scaling", "fit", "table.csv", *extra], message=message)
    finally:
        (root / "table.csv").unlink()


def test_scaling_fit_on_a_binary_file_and_runs_anywhere_without_a_lock(root, tmp_path):
    (tmp_path / "table.bin").write_bytes(Path(sys.executable).read_bytes()[:4096])
    one_line(root, ["stages.scaling", "fit", str(tmp_path / "table.bin")], message="cannot read it as CSV (not text")
    (tmp_path / "table.csv").write_text(TABLE)
    proc = run([sys.executable, "-m", "stages.scaling", "fit", "table.csv"], tmp_path, env={"PYTHONPATH": str(root)})
    assert json.loads(proc.stdout)["kind"] and not (tmp_path / ".kickoff").exists()


@pytest.mark.parametrize("kind", ["directory", "binary", "nul"])
def test_a_binary_or_directory_params_yaml_is_one_line(root, kind):
    params = root / "params.yaml"
    saved = params.read_bytes()
    params.unlink()
    if kind == "directory":
        params.mkdir()
    else:
        params.write_bytes(Path(sys.executable).read_bytes()[:2048] if kind == "binary" else b"a: \x00\x01\n")
    try:
        # a file is read after the stage took its lock (.kickoff/locks/probe.lock: bookkeeping, no output)
        one_line(root, ["stages.probe"], message="params.yaml: ", locks=kind == "directory")
    finally:
        shutil.rmtree(params) if params.is_dir() else params.unlink()
        params.write_bytes(saved)


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_candidates_switched_to_null_without_re_rendering_say_the_command(root):
    """DVC itself then fails parsing dvc.yaml ("'Value' object is not iterable"): `python -m stages` and
    every stage name the cause and the command in one line instead."""
    params = root / "params.yaml"
    saved = params.read_text()
    raw = yaml.safe_load(saved)
    raw["family"]["candidates"] = None
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        for command in (["stages"], ["stages.select"]):
            one_line(root, command, message="dvc.yaml is out of date with params.yaml", locks=False)
    finally:
        params.write_text(saved)


def test_a_stage_run_from_a_subdirectory_leaves_nothing_there(root):
    (root / "reports").mkdir(exist_ok=True)
    line = one_line(root, ["stages.select"], cwd=root / "reports", message="params.yaml: not found in ")
    assert "allowed: run the stages from the project root" in line
    assert not (root / "reports" / ".kickoff").exists()


def by_hand(root: Path, cwd: Path, args: list[str]):
    """A stage run by hand in `cwd` (params.yaml and inputs only, no dvc.yaml to render), kickoff from `root`."""
    return run([sys.executable, "-m", *args], cwd, check=False, env={"PYTHONPATH": str(root)})


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_a_journal_line_with_a_wrong_typed_value_is_named(root, tmp_path):
    """A finished trial in the journal, hand-edited: the coarse job names the file, the line and the key."""
    from tests.test_scaling_stage import PARAMS, write_project

    write_project(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {**PARAMS, "scaling": {**PARAMS["scaling"], "batch_sizes": [4], "max_steps": 20, "lr_points": 3}}))
    assert by_hand(root, tmp_path, ["stages.scaling", "coarse", "--batch-size", "4"]).returncode == 0
    journal = next((tmp_path / ".kickoff" / "journal" / "scaling").glob("bs_4-*.jsonl"))
    rows = [json.loads(line) for line in journal.read_text().splitlines()]
    rows[1]["result"]["steps_run"] = "20"
    journal.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = snapshot(tmp_path, locks=False)
    proc = by_hand(root, tmp_path, ["stages.scaling", "coarse", "--batch-size", "4"])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"{journal.relative_to(tmp_path)}: line 2: result.steps_run: received '20'; allowed: int." in proc.stderr
    assert "delete that line (or the file) and rerun" in proc.stderr
    assert snapshot(tmp_path, locks=False) == before


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_a_model_that_cannot_be_allocated_is_one_line_in_scaling_trials_and_throughput(root, tmp_path):
    """80 GB of weights on this machine: the allocation fails at once (a real 20-billion-parameter model)."""
    from tests.test_scaling_stage import write_project

    write_project(tmp_path)  # the probe and throughput files the trials read
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"workload": {"name": "digits_mlp", "kwargs": {"hidden": [141421, 141421]}},
         "runtime": {"device": "cpu", "threads": 1}, "scaling": {"batch_sizes": [16]}}))
    for args in (["stages.scaling", "coarse", "--batch-size", "16"], ["stages.throughput"]):
        proc = by_hand(root, tmp_path, args)
        last = proc.stderr.strip().splitlines()[-1]  # after the stage's progress lines
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert ": out of memory (" in last and "allowed: a model (workload.kwargs) and batch size that fit" in last


def test_a_hand_edited_batch_size_beyond_the_training_set_is_one_line(root):
    """The committed reference results, with initial_config.yaml's batch size edited to 100000."""
    shutil.copytree(ROOT / "reports", root / "reports", dirs_exist_ok=True)
    config = root / "reports/select/initial_config.yaml"
    data = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**data, "batch_size": 100000}))
    try:
        proc = run([sys.executable, "-m", "stages.baseline"], root, check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "initial_config.yaml" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        shutil.rmtree(root / "reports")


# ---------------------------------------------------------------------------- the dataset workload

class BadItem(__import__("tests.dataset_fakes", fromlist=["Quadrants"]).Quadrants):
    """Quadrants whose example 100 (not among the five checked at build time) is text; 101 raises."""

    def __getitem__(self, i: int):
        if i == 101:
            raise KeyError("101.png")
        return ("oops", 3) if i == 100 else super().__getitem__(i)


def bad_item_train(**_) -> BadItem:
    return BadItem(256, 0)


DATASET = {"model": "tests.dataset_fakes:model", "train": "tests.dataset_fakes:train_set",
           "validation": "tests.dataset_fakes:validation_set", "target": 0.9}


@pytest.mark.parametrize("changes, message", [
    ({"target": 90}, "workload.kwargs.target: received 90 for accuracy; allowed: a value in [0, 1] (a fraction, not a "
                     "percentage)"),
    ({"target_metric": "loss", "target": -0.5}, "workload.kwargs.target: received -0.5 for loss; allowed: a value in "
                                                "[0, inf]"),
    ({"loss": "mse", "target_metric": "loss", "target": 0.1},
     "workload.kwargs.loss: 'mse' fails on the model's output [2, 4] float32 against the targets [2] int64 (ValueError: "
     "mse compares the model's outputs [2, 4] with the targets [2]: they must have the same shape (class labels: use "
     "cross_entropy))"),
])
def test_the_dataset_workload_refuses_a_target_or_loss_that_cannot_work_up_front(changes, message):
    from stages.core.errors import ConfigError
    from stages.workloads.base import make_workload

    with pytest.raises(ConfigError) as e:
        make_workload("dataset", {**DATASET, **changes})
    assert message in str(e.value)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_dataset_item_met_in_training_is_named_by_its_index(workers):
    from stages.core.config import DataSettings
    from stages.core.errors import ConfigError
    from stages.workloads.base import make_workload

    w = make_workload("dataset", {**DATASET, "train": "tests.test_one_line_errors:bad_item_train"})
    w.loader_settings = DataSettings(num_workers=workers)
    with pytest.raises(ConfigError) as e:
        batches = w.batches("train", 64, 0)
        for _ in range(8):  # two epochs: both bad examples are met
            next(batches)
    assert str(e.value) in (
        "workload.kwargs.train: example 100 is (str, int), but the examples checked are ([8] float32, [] int64); "
        "allowed: every example with the same shapes and dtypes, a tuple (inputs..., target) of tensors or numbers",
        "workload.kwargs.train: reading example 101 raised KeyError: '101.png'; allowed: a Dataset whose every index "
        "below its length returns an example")


# ---------------------------------------------------------------------------- issue 29 part 4: what a user meets

def with_params(root: Path, changes: dict):
    """params.yaml with `changes` merged in, for the block; put back after."""
    from tests.conftest import write_params

    class Changed:
        def __enter__(self):
            self.saved = (root / "params.yaml").read_text()
            write_params(root, changes)

        def __exit__(self, *exc):
            (root / "params.yaml").write_text(self.saved)

    return Changed()


@pytest.mark.slow  # several seconds: left out of `make test-fast`
@pytest.mark.parametrize("body, command, raised", [
    ("x = undefined_name + 1\n", ["stages.family", "trial", "--candidate", "candidate0"], "NameError: name 'undefined_name' is not defined (userwl/broken.py, line 3)"),
    ("def make(:\n", ["stages.probe"], "SyntaxError: invalid syntax (userwl/broken.py, line 3)"),
    ("open('missing.txt')\n", ["stages.scaling", "coarse", "--batch-size", "16"],
     "FileNotFoundError: [Errno 2] No such file or directory: 'missing.txt' (userwl/broken.py, line 3)"),
], ids=["NameError", "SyntaxError", "FileNotFoundError"])
def test_a_workload_module_that_raises_while_imported_is_one_line_naming_it_and_its_line(root, body, command, raised):
    package = root / "userwl"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "broken.py").write_text(f"import math\n\n{body}\n\ndef make(dim: int = 8):\n    return None\n")
    try:
        with with_params(root, {"workload": {"name": "userwl.broken:make", "kwargs": {}}}):
            line = one_line(root, command, locks=False, message=raised)
        assert "workload.name: received 'userwl.broken:make', but importing module 'userwl.broken'" in line
    finally:
        shutil.rmtree(package)


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_a_workload_name_typo_is_named_by_the_first_command_that_meets_it(root):
    """Not "dvc.yaml is out of date: run `python -m stages.pipeline`" -- which would then render it."""
    with with_params(root, {"workload": {"name": "digits_mpl"}}):
        for command in (["stages.probe"], ["stages.pipeline"]):
            one_line(root, command, locks=False, message="workload.name: received 'digits_mpl'; allowed: one of digits_mlp")


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_a_target_a_guessing_model_meets_is_refused_before_any_trial(root):
    with with_params(root, {"workload": {"name": "digits_mlp", "kwargs": {"hidden": [16], "target": 0.05}}}):
        for command in (["stages"], ["stages.family", "trial", "--candidate", "candidate0"]):  # the first job
            one_line(root, command, locks=False, message="workload.kwargs.target: received accuracy 0.05 (reached above "
                                                         "it), but chance level is 0.1")


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_a_yaml_syntax_error_names_the_file_and_line_in_the_stages_and_in_snakemake(root):
    params = root / "params.yaml"
    saved = params.read_text()
    params.write_text(saved + "runtime:\n  device: cpu\n seed: 0\n")
    line = len(saved.splitlines()) + 3
    try:
        one_line(root, ["stages.probe"], locks=False,
                 message=f"params.yaml: not valid YAML at line {line}, column 2: did not find expected key")
        proc = run([sys.executable, "-m", "snakemake", "-n"], root, check=False)
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "Config file is not valid JSON or YAML" not in text
        assert f"params.yaml: not valid YAML at line {line}, column 2: did not find expected key" in text
    finally:
        params.write_text(saved)


def test_a_stage_run_by_a_python_without_kickoffs_packages_is_one_line(root):
    base = Path(getattr(sys, "_base_executable", "") or "")
    if not base.is_file() or run([str(base), "-c", "import torch"], root, check=False).returncode == 0:
        pytest.skip("needs a Python without torch beside this environment (the venv's base interpreter)")
    proc = run([str(base), "-m", "stages.probe"], root, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"kickoff: error: probe: the package 'torch' is not installed for {base}; allowed: the project's environment "
        f"-- `. .venv/bin/activate` (`make setup` makes it), then rerun"], proc.stderr


# ---------------------------------------------------------------------------- OS errors: full, not writable, read-only

def root_only(why: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {why}")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs at tmp_path/disk (root only), unmounted after."""
    root_only("mounts a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def report_project(dest: Path) -> dict[str, bytes]:
    """A project whose report stage runs (it writes REPORT.md whatever it finds: here, that its inputs are missing --
    half a second, the cheapest stage) with stand-ins of its outputs in place; returns the stand-ins."""
    (dest / "params.yaml").write_text("runtime:\n  device: cpu\n")
    stand_ins = {}
    for output in ("reports/REPORT.md", "reports/report.manifest.json"):
        (dest / output).parent.mkdir(parents=True, exist_ok=True)
        (dest / output).write_text(f"committed {output}\n")
        stand_ins[output] = (dest / output).read_bytes()
    return stand_ins


def files(root: Path, names) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in names}


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_a_full_disk_while_a_stage_writes_is_one_line_and_every_output_stays(root, small_disk):
    stand_ins = report_project(small_disk)
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # fill the disk, then give back 16 KiB: the lock file fits, not the outputs
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    os.truncate(filler, filler.stat().st_size - 16384)
    proc = by_hand(root, small_disk, ["stages.report"])
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert re.match(r"kickoff: error: report: reports/(REPORT\.md|report\.manifest\.json): No space left on device; "
                    r"kept: every output already in place is as it was", last), last  # the file, not its temp file
    assert last.endswith("allowed: free space on that disk, then rerun")
    assert files(small_disk, stand_ins) == stand_ins and list((small_disk / ".kickoff/tmp").glob("*")) == []
    filler.unlink()  # space again: the same command finishes
    assert by_hand(root, small_disk, ["stages.report"]).returncode == 0


def test_a_read_only_disk_is_one_line(root, small_disk):
    stand_ins = report_project(small_disk)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    proc = by_hand(root, small_disk, ["stages.report"])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Read-only file system; kept: every output already in place is as it was" in proc.stderr
    assert "allowed: a writable filesystem (this one is mounted read-only), then rerun" in proc.stderr
    assert files(small_disk, stand_ins) == stand_ins


@pytest.mark.parametrize("folder", [".kickoff/locks", "reports"])
def test_a_folder_that_may_not_be_written_is_one_line_naming_it(root, tmp_path, folder):
    """The lock folder, or the folder an output goes to: immutable (chattr +i) as root, who may write any mode;
    read-only by its mode otherwise."""
    stand_ins = report_project(tmp_path)
    target = tmp_path / folder
    target.mkdir(parents=True, exist_ok=True)
    immutable = os.geteuid() == 0
    subprocess.run(["chattr", "+i", str(target)], check=True) if immutable else target.chmod(0o555)
    try:
        proc = by_hand(root, tmp_path, ["stages.report"])
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=True) if immutable else target.chmod(0o755)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and last.startswith("kickoff: error: "), proc.stderr
    assert folder in last and ("not writable" in last or "Operation not permitted" in last or "Permission denied" in last)
    assert files(tmp_path, stand_ins) == stand_ins


def test_the_closing_recommendation_is_checked_like_report_md(tmp_path, monkeypatch):
    """`dvc repro`'s last line quotes initial_config.yaml only as select wrote it: a hand edit is named instead."""
    from stages.core import outputs as out
    from stages.core.io import write_text
    from stages.core.provenance import output_set
    from stages.report.format import Inputs
    from stages.report.stage import closing_summary

    monkeypatch.chdir(tmp_path)
    config = {"batch_size": 16, "learning_rate": 0.01, "train_steps": 120, "expected_time_to_target_s": 2.2,
              "expected_training_time_s": 3.1, "workload": {"name": "digits_mlp", "kwargs": {"hidden": [16]}}}
    with output_set("select", out.manifest_for_path):  # as the select stage writes it, with its manifest
        write_text(out.SELECT_CONFIG.path, yaml.safe_dump(config))
    assert closing_summary(Path(".")).startswith("recommended: digits_mlp (hidden [16]), batch size 16, ")
    path = Path(out.SELECT_CONFIG.path)
    path.write_text(yaml.safe_dump({**config, "batch_size": 4096}))  # edited by hand
    line = closing_summary(Path("."))
    assert line.startswith("no recommendation: reports/select/initial_config.yaml differs from what its job wrote "
                           "(reports/select/manifest.json): cut, edited by hand, or written by another run"), line
    inputs = Inputs(Path("."))
    assert inputs.yaml(out.SELECT_CONFIG.path, "select") is None and "differs from what its job wrote" in inputs.problems[0]
