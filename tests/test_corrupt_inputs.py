"""Corrupt or incomplete inputs stop a stage with one line naming the file and the command that
rewrites it, exit 2, and nothing written (issue 15 part 2). The readers in stages/core/outputs.py
first, on hand-made damage; then the stage commands a user runs. (The scaling study's own case --
a trials CSV cut mid-row into `summarize` -- is in test_scaling_stage.py, on a real study.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stages.core import outputs as out
from stages.core.errors import InputError
from tests.test_select import digits_fixture

ROOT = Path(__file__).resolve().parent.parent
TRIALS_HEADER = ("batch_size,learning_rate,seed,phase,order,outcome,steps_to_target,steps_run,examples_run,max_steps,"
                 "give_up_after,seconds,final_metric,effective_learning_rate,reason\n")
ROW = "64,0.34,0,search,0,reached,57,57,3648,1000,,0.05,0.951,3.4,\n"
NOT_REACHED = "64,0.05,0,search,1,not_reached,,1000,64000,1000,,0.9,0.61,0.5,\n"


def write(root: Path, output: out.Output, text: str, **wildcards) -> None:
    path = root / output.at(**wildcards)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_complete_trials_file_reads_with_numbers(project):
    write(project, out.SCALING_TRIALS, TRIALS_HEADER + ROW + NOT_REACHED, batch_size=64)
    frame = out.read_csv(out.SCALING_TRIALS, batch_size=64, expect_batch_sizes=[64], allow_repeats=True)
    assert frame["outcome"].tolist() == ["reached", "not_reached"]
    assert frame["steps_to_target"].iloc[0] == 57 and pd.isna(frame["steps_to_target"].iloc[1])


@pytest.mark.parametrize("text, problem", [
    (TRIALS_HEADER + ROW + NOT_REACHED[:-8], "ends in the middle of a row (the file was cut off)"),
    (TRIALS_HEADER + ROW + "64,0.05,0,search,1,reache\n", "line 3 has 6 fields, the header has 15"),
    (TRIALS_HEADER + ROW.replace(",reached,", ",reache,"), "column outcome holds 'reache' in row 1; allowed: reached, "
                                                          "not_reached, diverged, stopped_early, plateaued, pruned, "
                                                          "paused, skipped, predicted"),
    (TRIALS_HEADER + ROW.replace(",57,57,", ",abc,57,"), "column steps_to_target holds 'abc' in row 1; allowed: numbers"),
    (TRIALS_HEADER.replace("outcome,", "result,") + ROW, "lacks column(s) outcome"),
    (TRIALS_HEADER + ROW.replace("64,", "32,", 1), "no row for batch size(s) [64]; unexpected batch size(s) [32]"),
    ("", "is empty"),
])
def test_a_damaged_trials_file_is_refused_naming_it_and_its_job(project, text, problem):
    write(project, out.SCALING_TRIALS, text, batch_size=64)
    with pytest.raises(InputError) as error:
        out.read_csv(out.SCALING_TRIALS, batch_size=64, expect_batch_sizes=[64], allow_repeats=True)
    message = str(error.value)
    assert message.startswith("reports/scaling/trials/bs_64.csv: ") and problem in message, message
    assert "rerun the stage that writes it (`python -m stages.scaling trials --batch-size 64`" in message


def test_one_row_per_batch_size_means_one(project):
    header = "batch_size,status,best_learning_rate,steps_to_target,regime\n"
    write(project, out.SCALING_STEPS, header + "8,reached,0.1,40,perfect_scaling\n8,reached,0.1,40,perfect_scaling\n")
    with pytest.raises(InputError, match=r"no row for batch size\(s\) \[16\]; more than one row for \[8\]"):
        out.read_csv(out.SCALING_STEPS, expect_batch_sizes=[8, 16])


@pytest.mark.parametrize("text, problem", [
    ('{"max_batch_size": 10', "is not valid JSON"),
    ("[1, 2]", "holds a list, not a JSON object of named values"),
    ('{"device": "cpu"}', "lacks key(s) max_batch_size"),
])
def test_a_damaged_metrics_file_is_refused(project, text, problem):
    write(project, out.PROBE_METRICS, text)
    with pytest.raises(InputError) as error:
        out.read_json(out.PROBE_METRICS)
    assert str(error.value).startswith(f"reports/probe/metrics.json: {problem}")
    assert "`python -m stages.probe`" in str(error.value)


def test_a_missing_file_says_which_command_writes_it(project):
    with pytest.raises(InputError, match=r"reports/select/initial_config.yaml: does not exist; rerun .*stages.select"):
        out.read_yaml(out.SELECT_CONFIG)


# ---------------------------------------------------------------------------- through the stage commands

def run(module: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".kickoff" not in p.relative_to(root).parts}  # .kickoff/: run state (locks), not outputs


def assert_refused(proc: subprocess.CompletedProcess, path: str, problem: str, producer: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"kickoff: error: {path}: {problem}"), lines[0]
    assert f"`{producer}`" in lines[0]


def test_throughput_refuses_a_truncated_probe_diagnostics_file(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"runtime": {"device": "cpu"}}))
    probe = tmp_path / "reports/probe"
    probe.mkdir(parents=True)
    (probe / "probe.csv").write_text("batch_size,status,reason,peak_memory_bytes\n1,fits,,1000\n2,fits,,2000\n")
    (probe / "diagnostics.json").write_text(json.dumps({"device": "cpu", "threads": 1})[:15])
    before = files_under(tmp_path)
    proc = run("stages.throughput", tmp_path)
    assert_refused(proc, "reports/probe/diagnostics.json", "is not valid JSON", "python -m stages.probe")
    assert files_under(tmp_path) == before  # nothing written, nothing removed


def test_throughput_refuses_a_probe_table_cut_mid_row(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"runtime": {"device": "cpu"}}))
    probe = tmp_path / "reports/probe"
    probe.mkdir(parents=True)
    (probe / "probe.csv").write_text("batch_size,status,reason,peak_memory_bytes\n1,fits,,1000\n2,fi")
    (probe / "metrics.json").write_text(json.dumps({"max_batch_size": 2, "device": "cpu"}))
    proc = run("stages.throughput", tmp_path)
    assert_refused(proc, "reports/probe/probe.csv", "ends in the middle of a row", "python -m stages.probe")
    assert not (tmp_path / "reports/throughput").exists()


def test_select_refuses_a_steps_table_missing_its_last_row(tmp_path):
    """Without the check, select chose among the rows it had (issue 15: 64 instead of 256)."""
    digits_fixture(tmp_path)
    steps = tmp_path / "reports/scaling/steps_to_target.csv"
    lines = steps.read_text().splitlines(keepends=True)
    steps.write_text("".join(lines[:-1]))  # complete rows, the last one gone
    before = files_under(tmp_path)
    proc = run("stages.select", tmp_path)
    assert_refused(proc, "reports/scaling/steps_to_target.csv", "no row for batch size(s) [1024]; expected one row "
                   "per batch size [8, 16, 32, 64, 128, 256, 512, 1024]", "python -m stages.scaling summarize")
    assert files_under(tmp_path) == before and not (tmp_path / "reports/select").exists()


def test_select_refuses_an_unknown_outcome_in_the_trials(tmp_path):
    digits_fixture(tmp_path)
    trials = tmp_path / "reports/scaling/trials.csv"
    trials.write_text(trials.read_text().replace(",reached,", ",reache,", 1))
    proc = run("stages.select", tmp_path)
    assert_refused(proc, "reports/scaling/trials.csv", "column outcome holds 'reache' in row 1",
                   "python -m stages.scaling summarize")
    assert not (tmp_path / "reports/select").exists()
