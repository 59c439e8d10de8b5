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


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_device_counts_beyond_this_machine_are_refused_naming_the_limit(tmp_path, monkeypatch):
    """Issue 22 part 4: throughput.devices beyond the usable CPU cores stops `python -m stages` and the
    throughput stage's setup (one line: the key, the value, the limit); on CUDA the limit is the visible
    GPUs, on mps 1; the stages that do not read the throughput section do not check it."""
    import os

    from stages.core import device
    from stages.core.errors import ConfigError

    cores = len(os.sched_getaffinity(0))
    proc = params_check(tmp_path, {"runtime": {"device": "cpu"}, "throughput": {"devices": [1, cores + 1]}})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == (f"kickoff: error: params.yaml: throughput.devices: received [1, {cores + 1}]; "
                                   f"allowed: device counts up to {cores} (runtime.device cpu: the CPU cores this "
                                   f"process may use, one per data-parallel process), e.g. [1]")
    assert params_check(tmp_path, {"runtime": {"device": "cpu"}, "throughput": {"devices": [1, cores]}}).returncode == 0
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"^throughput.devices: received \[1, 2\]; allowed: device counts up to 1 "
                                          r"\(runtime.device cuda: the CUDA devices visible to this process\), e.g. \[1\]$"):
        device.check_device_counts([1, 2], torch.device("cuda"))
    with pytest.raises(ConfigError, match=r"up to 1 \(runtime.device mps: torch.distributed has no backend there\)"):
        device.check_device_counts([1, 2], torch.device("mps"))
    device.check_device_counts([1], torch.device("mps"))


def test_good_params_print_the_resolved_values(tmp_path):
    proc = params_check(tmp_path, {"runtime": {"device": "cpu"}, "workload": {"name": "nqm"}})
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["workload"]["name"] == "nqm"
