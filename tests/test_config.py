"""params.yaml validation: every bad input stops with one message naming the key, the value received
and what is allowed -- before any work, with a non-zero exit and nothing written."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from stages.core.config import load_params, parse_size, validate
from stages.core.context import check_environment
from stages.core.errors import ConfigError
from stages.pipeline.declaration import STAGES

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_change(path: str, value) -> dict:
    raw = copy.deepcopy(DEFAULTS)
    *parents, last = path.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return raw


def error_of(raw) -> str:
    with pytest.raises(ConfigError) as e:
        check_environment(validate(raw))
    return str(e.value)


def test_the_shipped_params_file_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.workload.name == "digits_mlp"
    assert params.optimizer.eps == 1.0e-8  # a float under YAML 1.1 too


def test_defaults_fill_missing_keys():
    params = validate({"workload": {"name": "nqm"}})
    assert params.optimizer.name == "sgd" and params.probe.steps == 3


@pytest.mark.parametrize("raw, expected", [
    ({**DEFAULTS, "trainer": {}}, ["trainer: unknown section", "allowed sections: workload, family, optimizer, runtime"]),
    (with_change("optimizer.lr", 0.1), ["optimizer.lr: unknown key", "allowed keys in 'optimizer': name, momentum"]),
    (with_change("probe.steps", "three"), ["probe.steps: received 'three' (str)", "allowed: an integer"]),
    (with_change("probe.steps", 2.5), ["probe.steps: received 2.5 (float)", "allowed: an integer"]),
    (with_change("optimizer.nesterov", "yes"), ["optimizer.nesterov: received 'yes' (str)", "allowed: true/false"]),
    (with_change("optimizer.momentum", 1.5), ["optimizer.momentum: received 1.5", "allowed: a value in [0.0, 1.0)"]),
    (with_change("probe.steps", 0), ["probe.steps: received 0", "allowed: a value in [1, inf]"]),
    (with_change("optimizer.name", "lamb"), ["optimizer.name: received 'lamb' (str)", "allowed: one of 'sgd', 'adam', 'adamw'"]),
    (with_change("scaling.batch_sizes", [64, 32]), ["scaling.batch_sizes: received [64, 32]", "increasing list"]),
    (with_change("scaling.lr_min", 2.0), ["scaling.lr_min: received 2.0", "less than scaling.lr_max, null: the usual top for sgd (2)"]),
    (with_change("probe.memory_budget", "lots"), ["probe.memory_budget: received 'lots'", "'6GiB'"]),
    (with_change("runtime.device", "tpu"), ["runtime.device: received 'tpu'", "auto, cpu, cuda, cuda:N, mps"]),
    (with_change("workload.name", "resnet9000"), ["workload.name: received 'resnet9000'", "digits_mlp, synthetic_cnn, nqm"]),
    (with_change("workload.name", "no_such_pkg.model:make"), ["workload.name: received 'no_such_pkg.model:make'", "cannot be imported"]),
    (with_change("workload.name", "stages.workloads.nqm:nothing_here"), ["has no attribute 'nothing_here'"]),
    (with_change("workload.kwargs", {"hidden": [64], "depth": 3}), ["workload.kwargs: received", "allowed arguments: hidden, target"]),
    (with_change("workload.kwargs", {"hidden": [0]}), ["workload.kwargs: 'digits_mlp' rejected", "positive widths"]),
    (with_change("workload.sources", ["my_model/missing.py"]), ["workload.sources[0]: received 'my_model/missing.py', which does not exist"]),
    ([1, 2], ["top level: received [1, 2] (list)"]),
])
def test_bad_input_names_key_value_and_what_is_allowed(raw, expected):
    message = error_of(raw)
    assert message.startswith("params.yaml: ")
    for fragment in expected:
        assert fragment in message, message


def _params_file(tmp_path: Path, key: str, value: str) -> Path:
    """The shipped params.yaml with `key`'s line set to `value` as written (YAML text)."""
    import re

    text = re.sub(rf"(?m)^(\s+{key}:).*$", rf"\1 {value}", (ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(text)
    return tmp_path / "params.yaml"


def test_one_yaml_rule_a_bare_exponent_is_a_number_and_yes_is_a_word(tmp_path):
    """kickoff reads params.yaml by YAML 1.2, as DVC does (issue 28 part 4): `1e-3` is the number (YAML 1.1,
    PyYAML's and Snakemake's configfile, made it the string '1e-3'), and `yes` is the word, refused for a
    boolean with the fix, never silently true for one reader and a string for another."""
    assert load_params(_params_file(tmp_path, "lr_min", "1e-3")).scaling.lr_min == 0.001
    with pytest.raises(ConfigError, match=r"^.*params.yaml: scaling.lr_min: received '1e-3' \(str\); allowed: a number or null "
                                          r"-- quoted, so it is text; write it without quotes$"):
        load_params(_params_file(tmp_path, "lr_min", "'1e-3'"))
    with pytest.raises(ConfigError, match=r"optimizer.nesterov: received 'yes' \(str\); allowed: true/false -- YAML 1.2, "
                                          r"which kickoff and DVC read, takes 'yes' for a word .*write true or false$"):
        load_params(_params_file(tmp_path, "nesterov", "yes"))
    assert load_params(_params_file(tmp_path, "max_steps", "010")).family.max_steps == 10  # decimal, not octal


def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("  max_steps: 1000\n", "  max_steps: 1000\n  max_steps: 900\n", 1)
    (tmp_path / "params.yaml").write_text(text)
    first = text.splitlines().index("  max_steps: 1000") + 1
    with pytest.raises(ConfigError) as e:
        load_params(tmp_path / "params.yaml")
    assert str(e.value) == (f"{tmp_path / 'params.yaml'}: family.max_steps: given twice (lines {first} and {first + 1}); "
                            f"allowed: each key once (which one would count is not obvious, and DVC refuses the file)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_an_error_and_only_auto_falls_back():
    assert "no CUDA device" in error_of(with_change("runtime.device", "cuda"))
    assert "no CUDA device" in error_of(with_change("runtime.device", "cuda:1"))
    from stages.core.device import resolve_device

    assert resolve_device("auto").type in {"cpu", "mps"}


def test_sizes_parse_with_binary_and_decimal_units():
    assert parse_size("6GiB") == 6 * 2**30
    assert parse_size("512 MB") == 512 * 10**6
    with pytest.raises(ValueError):
        parse_size("6 gigs")


def test_sources_must_be_rendered_into_dvc_yaml(tmp_path, monkeypatch):
    (tmp_path / "model.py").write_text("# my model\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  probe:\n    cmd: x\n    deps: [stages/probe.py]\n")
    monkeypatch.chdir(tmp_path)
    message = error_of(with_change("workload.sources", ["model.py"]))
    assert "workload.sources: ['model.py'] are not tracked by dvc.yaml" in message
    assert "python -m stages.pipeline" in message


@pytest.mark.parametrize("stage", [s for s in STAGES if s.params], ids=lambda s: s.name)
def test_every_stage_command_rejects_bad_params_before_writing_anything(tmp_path, stage):
    bad = with_change("optimizer.momentum", 1.5)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    cmd = stage.cmd.replace("{batch_size}", "64").split()
    proc = subprocess.run([sys.executable, *cmd[1:]], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "optimizer.momentum: received 1.5" in proc.stderr
    assert proc.stderr.count("\n") <= 2, "one clear message, not a traceback:\n" + proc.stderr
    # .kickoff/ holds local run state (the stage's lock, resume journals), ignored by git and DVC
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".kickoff") == ["params.yaml"], "nothing may be written"


def test_config_command_prints_resolved_values(tmp_path):
    (tmp_path / "params.yaml").write_text("workload:\n  name: nqm\n")
    proc = subprocess.run([sys.executable, "-m", "stages"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert resolved["workload"]["name"] == "nqm" and resolved["optimizer"]["momentum"] == 0.9
