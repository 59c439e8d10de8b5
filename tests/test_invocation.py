"""What a `snakemake` command line may change (stages/pipeline/invocation.py), without running Snakemake:
the end-to-end runs are in tests/test_pipeline_declaration.py (forced jobs, --config, the Kubernetes
profile) and tests/test_slurm.py (a forced job on SLURM)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from stages.core import provenance
from stages.core.errors import ConfigError
from stages.pipeline import invocation
from tests.conftest import ROOT

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def workflow(config=None, configfiles=(), provider=None, forcerun=()):
    """The parts of Snakemake's `workflow` object the checks read."""
    return SimpleNamespace(config_settings=SimpleNamespace(config=config or {}, configfiles=list(configfiles)),
                           storage_settings=SimpleNamespace(default_storage_provider=provider),
                           dag_settings=SimpleNamespace(forcerun=set(forcerun)))


def test_config_on_the_command_line_is_refused_in_one_line_naming_it_and_how_to_change_a_setting():
    with pytest.raises(ConfigError) as e:
        invocation.check_config(workflow(config={"select": {"objective": "resource"}}), ROOT)
    message = str(e.value)
    assert "\n" not in message
    assert 'snakemake --config select={"objective": "resource"}' in message
    assert "params.yaml" in message and "dvc exp run -S" in message and "--profile" in message
    with pytest.raises(ConfigError, match="--configfile other.yaml"):
        invocation.check_config(workflow(configfiles=[Path("other.yaml")]), ROOT)


def test_params_yaml_itself_given_as_the_configfile_is_no_override():
    invocation.check_config(workflow(configfiles=[ROOT / "params.yaml"]), ROOT)
    invocation.check_config(workflow(), ROOT)


def test_a_storage_provider_is_refused_naming_the_shared_volume_kickoff_needs():
    with pytest.raises(ConfigError) as e:
        invocation.check_shared_filesystem(workflow(provider="s3"))
    message = str(e.value)
    assert "\n" not in message and "received 's3'" in message
    assert "volume every job shares" in message and "PersistentVolumeClaim" in message
    invocation.check_shared_filesystem(workflow())


def test_forcerun_lifts_ancient_for_the_forced_jobs_and_everything_downstream_of_them():
    stamps = invocation.rerun_stamps(workflow(forcerun={"select"}), PARAMS)
    assert stamps == {str(provenance.stamp_path(j)) for j in ("select", "baseline", "report")}
    sizes = PARAMS["scaling"]["batch_sizes"]
    by_file = invocation.rerun_stamps(workflow(forcerun={str(provenance.stamp_path(f"scaling_trials@{sizes[0]}"))}), PARAMS)
    assert str(provenance.stamp_path(f"scaling_trials@{sizes[0]}")) in by_file
    assert str(provenance.stamp_path(f"scaling_trials@{sizes[1]}")) not in by_file  # a neighbour, not downstream
    assert {str(provenance.stamp_path(j)) for j in ("scaling", "select", "report")} <= by_file
    assert invocation.rerun_stamps(workflow(), PARAMS) == set()


def test_the_forced_jobs_reach_the_record_step_through_the_environment(monkeypatch):
    monkeypatch.delenv(invocation.FORCED_ENV, raising=False)
    assert invocation.forced_jobs() == set()
    monkeypatch.setenv(invocation.FORCED_ENV, "throughput scaling_trials@64")
    assert invocation.forced_jobs() == {"throughput", "scaling_trials@64"}
