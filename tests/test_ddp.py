"""Data-parallel throughput (issue 14 part 1): the stage times DistributedDataParallel with 2 gloo processes
on the CPU; the efficiency and communication arithmetic on hand-made windows with known answers; a rank that
crashes is recorded with its reason and the group stops (no hang)."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from stages.core.config import OptimizerSettings
from stages.throughput import ddp, timing
from tests.test_throughput import run_stage


def windows(devices: int, synced: float, local: float, n: int = 8) -> list[dict]:
    """n windows per mode around the given examples/s (+-1%: the interval has width, the median is exact)."""
    spread = [1 + 0.01 * (i - (n - 1) / 2) / n for i in range(n)]
    return [{"devices": devices, "mode": mode, "window": i, "steps": 10, "seconds": 1.0, "examples_per_s": eps * f}
            for mode, eps in (("synced", synced), ("local", local)) for i, f in enumerate(spread)]


def test_efficiency_and_communication_from_known_windows():
    """1 device: 1000 examples/s synced, 1250 local; 2 devices: 1800 synced, 2400 local, per-device batch 10.
    Efficiency 1800 / (2 x 1000) = 0.9; per step (20 examples) 20/1800 - 20/2400 s is communication."""
    results = [ddp.GroupResult(1, 10, "ok", windows=windows(1, 1000, 1250)),
               ddp.GroupResult(2, 10, "ok", windows=windows(2, 1800, 2400)),
               ddp.GroupResult(4, 10, "crashed", reason="rank 3: RuntimeError: boom")]
    rows = {r["devices"]: r for r in ddp.summarise(results, 0.95)}
    assert rows[2]["scaling_efficiency"] == pytest.approx(0.9)
    assert rows[2]["scaling_efficiency_ci_low"] <= 0.9 <= rows[2]["scaling_efficiency_ci_high"]
    assert rows[2]["ideal_examples_per_s"] == pytest.approx(2000)
    assert rows[2]["compute_s"] == pytest.approx(20 / 2400) and rows[2]["communication_s"] == pytest.approx(20 / 1800 - 20 / 2400)
    assert rows[1]["scaling_efficiency"] == pytest.approx(1.0) and rows[1]["communication_s"] == pytest.approx(10 / 1000 - 10 / 1250)
    assert rows[4]["status"] == "crashed" and math.isnan(rows[4]["scaling_efficiency"]) and "boom" in rows[4]["reason"]


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_stage_times_two_gloo_processes(tmp_path):
    """The real thing on 2 CPU processes (1 thread each): intervals, an efficiency in (0, 1.2], the split."""
    proc = run_stage(tmp_path, {"name": "tests.ddp_fakes:factory", "kwargs": {}}, [8],
                     {"devices": [1, 2], "max_seconds_per_size": 0.3, "device_timeout_s": 120})
    out = tmp_path / "reports" / "throughput"
    table = pd.read_csv(out / "devices.csv").set_index("devices")
    assert list(table.index) == [1, 2] and (table.status == "ok").all(), table[["status", "reason"]]
    assert (table.backend == "gloo").all() and (table.threads_per_process == 1).all()
    assert (table.per_device_batch_size == 8).all() and table.loc[2, "global_batch_size"] == 16
    assert (table.examples_per_s_ci_low <= table.examples_per_s).all()
    assert (table.examples_per_s <= table.examples_per_s_ci_high).all() and (table.windows >= 6).all()
    eff = table.loc[2]
    assert 0 < eff.scaling_efficiency <= 1.2
    assert eff.scaling_efficiency_ci_low <= eff.scaling_efficiency <= eff.scaling_efficiency_ci_high
    assert (table.communication_s >= 0).all() and (table.compute_s > 0).all()
    metrics = json.loads((out / "diagnostics.json").read_text())
    assert metrics["devices_measured"] == [1, 2]
    assert metrics["scaling_efficiency_measured"]["2"] == pytest.approx(eff.scaling_efficiency)
    assert set(pd.read_csv(out / "device_windows.csv")["mode"]) == {"synced", "local"}
    assert "## Data parallelism" in (out / "diagnosis.md").read_text()
    assert (out / "devices.png").stat().st_size > 1000
    assert "data-parallel: 2 device(s)" in proc.stderr


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_a_rank_that_crashes_is_recorded_with_its_reason():
    """Rank 1 raises in its first step while rank 0 waits in the all-reduce: the group is stopped (not left
    hanging until the timeout) and the reason is rank 1's own exception."""
    job = ddp.GroupJob("tests.ddp_fakes:factory", {"fail_rank": 1}, OptimizerSettings(), 0, 1, "cpu", 2, 8, 1,
                       0.02, 1, timing.StopRule(6, 0.02, 0.2, 0.95), timeout_s=120)
    result = ddp.run_group(job)
    assert result.status == "crashed"
    assert result.reason.startswith("rank 1: RuntimeError: injected failure on rank 1"), result.reason
    assert result.seconds < 60 and not result.windows
    row = ddp.summarise([result], 0.95)[0]
    assert row["status"] == "crashed" and row["reason"] == result.reason


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_a_group_that_hangs_is_stopped_at_its_timeout():
    """Rank 1 never finishes its step, so rank 0 waits in the all-reduce: the parent's deadline stops both."""
    import multiprocessing

    job = ddp.GroupJob("tests.ddp_fakes:factory", {"fail_rank": 1, "fail": "hang"}, OptimizerSettings(), 0, 1, "cpu",
                       2, 8, 1, 0.02, 1, timing.StopRule(6, 0.02, 0.2, 0.95), timeout_s=4)
    result = ddp.run_group(job)
    assert result.status == "timeout" and "throughput.device_timeout_s" in result.reason
    assert 4 <= result.seconds < 20 and not multiprocessing.active_children()
