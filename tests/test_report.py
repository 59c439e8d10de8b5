"""The report stage on hand-written stage outputs (the contracts of issues 3-6): it opens with the
recommended configuration, walks the stages in order with their plots and numbers, renders as
markdown, and turns missing or partial inputs into notes that name the file -- never a crash."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt

from stages.pipeline import declaration as pipeline

ROOT = Path(__file__).resolve().parent.parent
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def write_outputs(root: Path) -> None:
    """A complete, plausible set of stage outputs with the contract's file names and columns."""
    files = {
        "reports/probe/metrics.json": {"max_batch_size": 1024, "parameter_count": 4810},
        "reports/probe/diagnostics.json": {"memory_budget_bytes": 6 * 2**30, "memory_fixed_bytes": 52_000_000,
                                           "memory_per_example_bytes": 41_000, "device": "cpu", "has_batch_norm": False},
        "reports/throughput/metrics.json": {"largest_useful_batch_size": 256, "recommended_num_workers": None},
        "reports/throughput/diagnostics.json": {"peak_flops_per_s": 8.1e10, "device": "cpu", "threads": 2},
        "reports/scaling/metrics.json": {"critical_batch_size": 181.5, "critical_batch_size_kind": "estimate",
                                         "ci_low": 120.0, "ci_high": 260.0, "s_min": 95.0},
        "reports/scaling/diagnostics.json": {"e_min": 17200.0, "gradient_noise_scale": 150.2,
                                             "compute_saved_fraction": 0.62},
        "reports/select/metrics.json": {"batch_size": 128},
        "reports/select/diagnostics.json": {"expected_training_time_s": 31.0},
        "reports/family/metrics.json": {"candidates": 2, "reached": 1, "chosen_parameters": 4810},
        "reports/family/diagnostics.json": {"batch_size": 64},
        "reports/baseline/metrics.json": {"val_accuracy": 0.961, "reached_target": True, "final_meets_target": True,
                                          "steps_to_target": 310},
        "reports/baseline/diagnostics.json": {"train_seconds": 29.5, "eval_seconds": 4.2,
                                              "predicted_steps_to_target": 250.0, "measured_steps_to_target": 310,
                                              "steps_to_target_ratio": 1.24, "predicted_time_per_step_s": 0.0031,
                                              "measured_time_per_step_s": 0.0033, "time_per_step_ratio": 1.0645,
                                              "predicted_time_to_target_s": 0.775, "measured_time_to_target_s": 1.02,
                                              "time_to_target_ratio": 1.316, "first_step_seconds": 0.0074},
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(data))
    (root / "reports/probe/probe.csv").write_text(
        "batch_size,status,reason,peak_memory_bytes,steps_run,seconds\n"
        "512,fits,,73000000,3,0.4\n1024,fits,,94000000,3,0.6\n2048,capped,training set has 1438 examples,,0,0.0\n")
    (root / "reports/throughput/throughput.csv").write_text(
        "batch_size,examples_per_s,examples_per_s_ci_low,examples_per_s_ci_high,time_per_step_s,data_wait_s,"
        "compute_s,input_bound,doubling_ratio,regime,flops_per_example,utilisation\n"
        "128,41000,40000,42000,0.0031,0.0002,0.0028,False,1.9,scaling,3e4,0.015\n"
        "256,61000,60000,62000,0.0042,0.0003,0.0038,False,1.49,partial,3e4,0.022\n")
    (root / "reports/scaling/steps_to_target.csv").write_text(
        "batch_size,best_learning_rate,steps_to_target,steps_to_target_spread,examples_to_target,regime\n"
        "64,0.1,380,20,24320,perfect scaling\n128,0.2,250,15,32000,diminishing returns\n"
        "256,0.3,,,,not reached\n")
    (root / "reports/select/decision.csv").write_text(
        "batch_size,feasible,steps_to_target,training_time_s,resource_cost,chosen,why\n"
        "64,True,380,40.1,0.011,False,slower: 40.1 s vs 31 s\n128,True,250,31.0,0.0086,True,minimises training time\n")
    (root / "reports/family/candidates.csv").write_text(
        "candidate,overrides,parameters,flops_per_example,status,learning_rate,steps_to_target,steps_low,steps_high,"
        "time_per_step_s,time_to_target_s,final_metric,reason\n"
        'candidate0,"{""hidden"": [8]}",610,2500,not_reached,,,,,0.0001,,0.93,no learning rate reached accuracy 0.95 within 1000 steps\n'
        'candidate1,"{""hidden"": [64]}",4810,20000,reached,0.08,120,97,223,0.00016,0.02,0.972,\n')
    (root / "reports/family/model.yaml").write_text(
        "workload: digits_mlp\nchosen: candidate1\noverrides: {hidden: [64]}\nkwargs: {hidden: [64], target: 0.95}\n"
        "rule: smallest\n")
    (root / "reports/family/reasoning.md").write_text(
        "# Which model configuration, and why\n\ncandidate1 is the smallest candidate that reached the target.\n")
    (root / "reports/throughput/devices.csv").write_text(  # throughput.devices [1, 2, 4]: the 4 crashed
        "devices,per_device_batch_size,global_batch_size,status,reason,examples_per_s,examples_per_s_ci_low,"
        "examples_per_s_ci_high,ideal_examples_per_s,scaling_efficiency,scaling_efficiency_ci_low,"
        "scaling_efficiency_ci_high,compute_s,communication_s\n"
        "1,256,256,ok,,61000,60000,62000,61000,1.0,0.97,1.03,0.0040,0.0002\n"
        "2,256,512,ok,,104000,100000,108000,122000,0.85,0.8,0.9,0.0041,0.0008\n"
        "4,256,1024,crashed,rank 3: RuntimeError: boom,,,,,,,,,\n")
    (root / "reports/probe/notes.md").write_text("## Trial isolation\n\nEvery trial ran in a forked process.\n")
    (root / "reports/scaling/notes.md").write_text(
        "## Critical batch size\n\nB_crit = 182 (95% CI 120 .. 260) within the studied range 64 .. 256\n")
    (root / "reports/throughput/diagnosis.md").write_text(
        "## Diagnosis\n\nCompute-bound: doubling 256 -> 512 clearly raised examples/s by less than 1.1x.\n")
    (root / "reports/select/reasoning.md").write_text(
        "# Why batch size 128\n\n- 512 fits but throughput stops rising after 256, so it is not considered.\n"
        "- 128 minimises training time: 31 s vs 40 s for 64.\n")
    (root / "reports/select/initial_config.yaml").write_text(yaml.safe_dump({
        "batch_size": 128, "learning_rate": 0.2, "train_steps": 300,
        "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": False},
        "workload": {"name": "digits_mlp", "kwargs": {"hidden": [64], "target": 0.95}},
        "expected_training_time_s": 31.0, "objective": "time"}, sort_keys=False))
    for s in pipeline.STAGES:
        for out in s.outputs:
            if out.kind == "image":
                (root / out.path).parent.mkdir(parents=True, exist_ok=True)
                (root / out.path).write_bytes(PNG)


def run_report(root: Path) -> subprocess.CompletedProcess:
    if not (root / "params.yaml").exists():  # a stage runs in a project root (the report reads no params)
        (root / "params.yaml").write_text("{}\n")
    return subprocess.run([sys.executable, "-m", "stages.report"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)


def render(markdown: str) -> str:
    return MarkdownIt("commonmark").enable("table").render(markdown)


def test_full_report_opens_with_the_configuration_and_walks_the_stages(tmp_path):
    write_outputs(tmp_path)
    proc = run_report(tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "reports/REPORT.md").read_text()
    assert "Incomplete" not in text and "Missing input" not in text and "Partial input" not in text

    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Recommended initial configuration"
    order = ["Family", "Probe", "Throughput", "Scaling", "Select", "Baseline"]
    assert [next(i for i, h in enumerate(headings) if o in h) for o in order] == sorted(
        next(i for i, h in enumerate(headings) if o in h) for o in order)

    first = text.split("## 1.")[0]  # the configuration, before any stage detail
    for expected in ("| batch_size | 128 |", "| learning_rate | 0.2 |", "| train_steps | 300 |",
                     "sgd (momentum 0.9, nesterov no)", "digits_mlp (hidden [64], target 0.95)",
                     "| expected_training_time_s | 31 s |",
                     "reached the target at step 310 and held it to the end of the budget. Time to target: 1.02 s "
                     "of training (predicted 0.775 s; measured / predicted 1.32). The whole budget, 300 steps, took "
                     "29.5 s of training, and the evaluations 4.2 s more (timed apart)"):
        assert expected in first, expected
    # the numbers behind each decision, formatted by their unit
    for expected in ("largest batch size that ran and fit is **1024**", "6.0 GiB", "49.6 MiB fixed",
                     "largest useful batch size is **256**", "about **182**", "interval 120 to 260",
                     "| `s_min` | 95 |", "[`reports/scaling/diagnostics.json`](scaling/diagnostics.json)",
                     "Every candidate at batch size 64", "| 256 | 0.3 | n/a | n/a | n/a | not reached |",
                     "training set has 1438 examples", "128 minimises training time: 31 s vs 40 s for 64",
                     "#### Diagnosis\n\nCompute-bound: doubling 256 -> 512",  # each stage's prose, from its own file
                     "#### Trial isolation\n\nEvery trial ran in a forked process.",
                     "#### Critical batch size\n\nB_crit = 182 (95% CI 120 .. 260)"):
        assert expected in text, expected
    assert "\n### Why batch size 128" in text  # the stage's own heading nested under section 5
    baseline = text.split("## 6.")[1]  # select's predictions next to the baseline's measurements
    for expected in ("times exclude the evaluations (4.2 s spent in them, timed apart)",
                     "the first step (here 7.4 ms, start-up included); the predicted time to target adds",
                     "| steps to target | 250 | 310 | 1.24 |", "| time per training step | 3.1 ms | 3.3 ms | 1.06 |",
                     "| time to target (training clock) | 0.775 s | 1.02 s | 1.32 |"):
        assert expected in baseline, expected

    parallel = text.split("### Data parallelism: throughput by device count")[1].split("## 3.")[0]
    for expected in ("![devices](throughput/devices.png)", "| 2 | 512 | ok | 104,000 |", "rank 3: RuntimeError: boom"):
        assert expected in parallel, expected
    html = render(text)
    assert html.count("<table>") == 14  # family: its metrics and candidates tables; the data-parallel table
    family = text.split("## 1.")[1].split("## 2.")[0]
    assert "start from **{'hidden': [64]}**" in family and "| candidate0 |" in family
    images = [src for src in __import__("re").findall(r'<img src="([^"]+)"', html)]
    declared = [o.path for s in pipeline.STAGES for o in s.outputs if o.kind == "image"]
    assert sorted(images) == sorted(str(Path(p).relative_to("reports")) for p in declared)
    assert all((tmp_path / "reports" / src).is_file() for src in images)


@pytest.mark.parametrize("damage, expected", [
    (lambda r: (r / "reports/scaling/metrics.json").unlink(),
     "`reports/scaling/metrics.json` is missing (written by stage `scaling`: run `dvc repro scaling`)"),
    (lambda r: (r / "reports/baseline/diagnostics.json").unlink(),
     "`reports/baseline/diagnostics.json` is missing (written by stage `baseline`: run `dvc repro baseline`)"),
    (lambda r: (r / "reports/probe/metrics.json").write_text("{not json"),
     "`reports/probe/metrics.json` could not be read (JSONDecodeError"),
    (lambda r: (r / "reports/throughput/throughput.csv").write_text("batch_size,examples_per_s\n64,100\n"),
     "`reports/throughput/throughput.csv` lacks column(s) examples_per_s_ci_low"),
    (lambda r: (r / "reports/select/initial_config.yaml").unlink(),
     "`reports/select/initial_config.yaml` is missing (written by stage `select`"),
    (lambda r: (r / "reports/select/decision.csv").write_text(""),
     "`reports/select/decision.csv` could not be read (EmptyDataError"),
    (lambda r: (r / "reports/baseline/curve.png").unlink(),
     "`reports/baseline/curve.png` is missing (written by stage `baseline`"),
])
def test_a_missing_or_partial_input_is_named_not_a_crash(tmp_path, damage, expected):
    write_outputs(tmp_path)
    damage(tmp_path)
    proc = run_report(tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "reports/REPORT.md").read_text()
    assert "> **Incomplete report:** " in text.split("## ")[0]
    assert expected in text and expected in proc.stderr
    assert text.count("## ") >= 6  # every section is still there


def test_no_outputs_at_all_still_gives_a_readable_report(tmp_path):
    proc = run_report(tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "reports/REPORT.md").read_text()
    for rel in ("reports/select/initial_config.yaml", "reports/probe/metrics.json", "reports/probe/probe.csv",
                "reports/throughput/throughput.csv", "reports/scaling/steps_to_target.csv",
                "reports/select/reasoning.md", "reports/baseline/metrics.json"):
        assert f"`{rel}` is missing" in text
    assert "<table>" not in render(text)


def test_no_data_parallel_section_with_one_device_count(tmp_path):
    """throughput.devices [1] (the default): devices.csv has its header and no rows -- no section, no problem."""
    from stages.report.format import Inputs
    from stages.core.outputs import THROUGHPUT_DEVICES
    from stages.report.stage import data_parallel

    path = tmp_path / THROUGHPUT_DEVICES.path
    path.parent.mkdir(parents=True)
    path.write_text(",".join(THROUGHPUT_DEVICES.columns) + "\n")
    inputs = Inputs(tmp_path)
    assert data_parallel(inputs) == [] and inputs.problems == []
