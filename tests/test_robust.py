"""Issue 15: nothing lost, nothing silently wrong. Each case runs the command a user runs and checks
the one-line message, the exit code, and that finished outputs are untouched.

The end-to-end cases that need the real `dvc` / `snakemake` live in tests/test_robust_pipeline.py."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

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


def test_scaling_trials_with_a_folder_in_sources_runs_and_a_change_in_it_starts_a_new_journal(tmp_path):
    root = write_project(tmp_path / "p")
    (root / "mylib").mkdir()
    (root / "mylib" / "model.py").write_text("WIDTH = 1\n")
    params = {**PARAMS, "workload": {**PARAMS["workload"], "sources": ["mylib"]},
              "scaling": {**PARAMS["scaling"], "lr_points": 2, "seeds": 0}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    proc = stage_cli("stages.scaling", ["trials", "--batch-size", "4"], root)
    assert proc.returncode == 0, proc.stderr
    journals = set((root / ".kickoff/journal/scaling").glob("bs_4-*.jsonl"))
    assert len(journals) == 1
    (root / "mylib" / "model.py").write_text("WIDTH = 2\n")  # the user's model changed: old trials do not count
    proc = stage_cli("stages.scaling", ["trials", "--batch-size", "4"], root)
    assert proc.returncode == 0, proc.stderr
    assert "from journal" not in proc.stderr
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
    proc = stage_cli("stages.scaling", ["trials", "--batch-size", "256"], root,  # skipped: ruled out by probe
                     preexec_fn=lambda: os.umask(0o022))
    assert proc.returncode == 0, proc.stderr
    for path in (root / "reports/scaling/trials").iterdir():
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
