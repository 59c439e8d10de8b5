"""`python -m stages` (the params check every stage runs first) answers a bad environment-dependent
value -- a device this machine lacks, an unknown workload, a kwargs typo, a family candidate's model
argument the dataset workload's model factory does not take (issue 21 part 5) -- with one line and exit 2,
never a traceback (issue 15 part 3: under `-m`, the error class must be the one the checks raise)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent


def params_check(tmp_path: Path, params: dict) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, "-m", "stages"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)


@pytest.mark.parametrize("params, expected", [
    pytest.param({"runtime": {"device": "cuda"}},
                 "params.yaml: runtime.device: received 'cuda', but this machine has no CUDA device", id="cuda",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    pytest.param({"workload": {"name": "no_such_workload"}},
                 "params.yaml: workload.name: received 'no_such_workload'; allowed: one of digits_mlp", id="workload"),
    pytest.param({"workload": {"name": "digits_mlp", "kwargs": {"hiden": [64]}}},
                 "params.yaml: workload.kwargs: received {'hiden': [64]}, which 'digits_mlp' does not accept", id="kwargs"),
    pytest.param({"workload": {"name": "dataset", "kwargs": {
                     "model": "tests.dataset_fakes:model", "train": "tests.dataset_fakes:train_set",
                     "validation": "tests.dataset_fakes:validation_set", "target": 0.85}},
                  "family": {"candidates": [{"model_kwargs": {"hidden": 8}}, {"model_kwargs": {"channels": 8}}]}},
                 "params.yaml: family.candidates[1] ({'model_kwargs': {'channels': 8}}): workload.kwargs.model_kwargs: "
                 "received {'channels': 8}, which 'tests.dataset_fakes:model' does not accept", id="candidate-model_kwargs"),
])
def test_a_bad_value_is_one_line_and_exit_2(tmp_path, params, expected):
    proc = params_check(tmp_path, params)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kickoff: error: {expected}"), proc.stderr


def test_good_params_print_the_resolved_values(tmp_path):
    proc = params_check(tmp_path, {"runtime": {"device": "cpu"}, "workload": {"name": "nqm"}})
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["workload"]["name"] == "nqm"
