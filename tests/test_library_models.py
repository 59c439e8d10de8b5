"""Real library models through the stages, as a user plugs them in (issue 30 part 2): a byte-level GPT-2
(`transformers.GPT2LMHeadModel`: a `ModelOutput`, read as `.logits`; dropout on) and a tiny
`transformers.ResNetForImageClassification` that computes its own loss from `labels` (loss: model), both
built from configs -- no download, no weights -- through probe, throughput, one scaling size, select, the
baseline and the report, with the model's units in the report. Factories: tests/library_models.py.

Needs the [hf] extra (`pip install -e '.[hf]'`, part of `.[test]`); skipped, saying so, without it."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml

pytest.importorskip("transformers", reason="the [hf] extra is not installed (pip install -e '.[hf]')")

L = "tests.library_models"
QUICK = {"warmup_steps": 2, "window_seconds": 0.02, "min_windows": 6, "max_seconds_per_size": 0.3,
         "split_steps": 5, "peak_seconds": 0.02, "max_workers": 0}

GPT2 = {"model": f"{L}:gpt2", "train": f"{L}:text_train", "validation": f"{L}:text_validation",
        "loss": "cross_entropy", "metrics": ["loss", "accuracy"], "target_metric": "loss", "target": 3.0,
        "example_unit": "sequence", "tokens_per_example": 32, "token_unit": "byte", "metric_units": {"loss": "nats"}}
RESNET = {"model": f"{L}:resnet", "train": f"{L}:digits_train", "validation": f"{L}:digits_validation",
          "loss": "model", "metrics": ["loss", "accuracy"], "target_metric": "accuracy", "target": 0.85,
          "example_unit": "image"}


def run_stages(root, monkeypatch, kwargs: dict, lr: tuple[float, float]) -> dict:
    """probe -> throughput -> scaling at batch size 16 alone -> select -> baseline -> report, the stage mains in
    `root`; returns the files' numbers."""
    from stages.baseline.stage import main as baseline
    from stages.probe.stage import main as probe
    from stages.report.stage import main as report
    from stages.scaling.stage import main as scaling
    from stages.select.stage import main as select
    from stages.throughput.stage import main as throughput

    params = {"workload": {"name": "dataset", "kwargs": kwargs},
              "optimizer": {"name": "adamw"},
              "runtime": {"device": "cpu", "seed": 0, "threads": 1},
              "probe": {"batch_sizes": [8, 16], "steps": 1},
              "throughput": QUICK,
              # three rates, each trained to the target (or max_steps) and held 1.5x: the smallest search there is
              "scaling": {"batch_sizes": [16], "lr_min": lr[0], "lr_max": lr[1], "lr_points": 3, "max_steps": 200,
                          "seeds": 0, "lr_refine_trials": 0, "lr_widen_factor": 1.0, "early_stopping": False,
                          "hold_factor": 1.5, "bootstrap": 20, "adaptive": False},
              "data": {"num_workers": 0}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(root)
    monkeypatch.setattr("sys.argv", ["stage"])
    probe()
    throughput()
    from stages.scaling.waves import study_commands

    for args in study_commands([16]):
        scaling(args)
    select()
    baseline()
    report()
    read = lambda rel: json.loads((root / rel).read_text())  # noqa: E731
    return {"probe": pd.read_csv(root / "reports/probe/probe.csv"), "throughput": read("reports/throughput/metrics.json"),
            "steps": pd.read_csv(root / "reports/scaling/steps_to_target.csv"),
            "config": yaml.safe_load((root / "reports/select/initial_config.yaml").read_text()),
            "select": read("reports/select/diagnostics.json"),
            "baseline": {**read("reports/baseline/diagnostics.json"), **read("reports/baseline/metrics.json")},
            "report": (root / "reports/REPORT.md").read_text(),
            "reasoning": (root / "reports/select/reasoning.md").read_text()}


def holds(figures: dict) -> None:
    """The baseline trains as the study trained: the predicted steps come true (the same seed, the same batches)."""
    base = figures["baseline"]
    assert base["reached_target"] is True and base["final_meets_target"] is True, base
    assert 0.85 <= base["steps_to_target_ratio"] <= 1.15, base


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_a_transformers_gpt2_runs_through_the_stages_as_it_comes(tmp_path, monkeypatch):
    figures = run_stages(tmp_path, monkeypatch, GPT2, (1e-3, 1e-2))
    assert figures["probe"]["status"].tolist() == ["fits", "fits"]
    assert figures["steps"].set_index("batch_size").at[16, "status"] == "reached"
    assert figures["config"]["batch_size"] == 16 and figures["config"]["learning_rate_schedule"].startswith("constant")
    holds(figures)
    base = figures["baseline"]
    assert base["tokens_to_target"] == base["examples_to_target"] * 32 == base["steps_to_target"] * 16 * 32
    assert base["epochs_to_target"] == pytest.approx(base["examples_to_target"] / 512)
    # the model's units in the recommendation: sequences and bytes, nats and bits per byte, the chance level explained
    reasoning, report = figures["reasoning"], figures["report"]
    assert "Batch size 16 sequences (512 bytes)" in reasoning and "bytes/s)" in reasoning
    chance = base_chance = figures["select"]["units"]["chance_explanation"]
    assert "entropy of the byte frequencies" in chance and base_chance in reasoning
    assert f"loss <= 3 nats per byte ({3 / math.log(2):.3g} bits per byte)" in reasoning
    assert f"; {base['tokens_to_target']:,} bytes; " in report and "Time to target:" in report
    # 8 fits and was not studied: the choice sits at the edge of the study, and the report says so
    assert figures["select"]["edge_of_study"] == "smallest" and figures["select"]["sizes_to_add"] == [8]
    assert "**At the edge of the study:** batch size 16 is the smallest size the scaling study trained" in report


@pytest.mark.slow
def test_a_transformers_image_classifier_computing_its_own_loss_runs_through_the_stages(tmp_path, monkeypatch):
    figures = run_stages(tmp_path, monkeypatch, RESNET, (1e-3, 1e-2))
    assert figures["steps"].set_index("batch_size").at[16, "status"] == "reached"
    holds(figures)
    assert figures["baseline"]["accuracy"] >= 0.85
    assert "Batch size 16 images, learning rate" in figures["reasoning"]  # images are the unit: no tokens
    assert " images (" in figures["report"] and "epochs of the training set" in figures["report"]
