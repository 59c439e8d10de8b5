"""The `dataset` workload (issue 12): your model and torch Datasets by import path, batched by a real
DataLoader -- its build-time checks (one message per rule, naming the key, what it got, what is
allowed), its known chance levels, the whole pipeline on a tiny dataset (stage mains in a temporary
directory), and the throughput stage on a Dataset that sleeps 5 ms per example: input-bound with
num_workers 0, not with enough workers, and the num_workers measurement recommending 2 over 0 and 1.

Factories live in tests/dataset_fakes.py."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from stages.core.cli import run_main
from stages.core.config import DataSettings
from stages.core.errors import ConfigError
from stages.core.log import sig
from stages.core.train import evaluate
from stages.throughput import workers
from stages.workloads.base import better_than_chance, make_workload

ROOT = Path(__file__).resolve().parent.parent
F = "tests.dataset_fakes"
KWARGS = {"model": f"{F}:model", "train": f"{F}:train_set", "validation": f"{F}:validation_set", "target": 0.85}


def build(**changes):
    return make_workload("dataset", {**KWARGS, **changes})


# ---------------------------------------------------------------------------- build-time checks

CASES = [  # (kwargs changed, the message's expected text)
    ({"train": f"{F}:raises"}, "workload.kwargs.train: tests.dataset_fakes:raises raised RuntimeError: the data "
                               "folder /data/train is missing; allowed: a factory that returns a torch.utils.data.Dataset"),
    ({"train": f"{F}:a_list"}, "workload.kwargs.train: tests.dataset_fakes:a_list returned list; allowed: a map-style "
                               "torch.utils.data.Dataset (with __len__ and __getitem__)"),
    ({"validation": f"{F}:stream"}, "workload.kwargs.validation: tests.dataset_fakes:stream returned _Stream; allowed: "
                                    "a map-style torch.utils.data.Dataset"),
    ({"validation": f"{F}:empty"}, "workload.kwargs.validation: tests.dataset_fakes:empty returned a Dataset of length "
                                   "0; allowed: at least one example"),
    ({"train": f"{F}:ragged"}, "workload.kwargs.train: examples differ in shape or dtype: example 0 is ([8] float32, "
                               "[] int64), example 7 is ([9] float32, [] int64); allowed: every example with the same "
                               "shapes and dtypes"),
    ({"validation": f"{F}:regression_set"}, "workload.kwargs.validation: its examples are ([8] float32, [1] float32) "
                                            "but the training examples are ([8] float32, [] int64)"),
    ({"model": f"{F}:not_a_model"}, "workload.kwargs.model: tests.dataset_fakes:not_a_model returned str; allowed: a "
                                    "factory returning a torch.nn.Module"),
    ({"model": f"{F}:raises"}, "workload.kwargs.model: tests.dataset_fakes:raises raised RuntimeError: the data folder"),
    ({"model": f"{F}:nope"}, "workload.kwargs.model: received 'tests.dataset_fakes:nope', but module "
                             "'tests.dataset_fakes' has no attribute 'nope'"),
    ({"train": "no_such_package.data:train"}, "workload.kwargs.train: received 'no_such_package.data:train', but "
                                              "module 'no_such_package.data' cannot be imported"),
    ({"loss": "hinge"}, "workload.kwargs.loss: received 'hinge'; allowed: cross_entropy, mse, model, or "
                        "'package.module:function' taking (output, target) and returning one loss per example"),
    ({"metrics": ["accuracy", "f1"]}, "workload.kwargs.metrics[1]: received 'f1'; allowed: accuracy, loss, or "
                                      "'package.module:function'"),
    ({"metrics": ["loss"]}, "workload.kwargs.target_metric: received 'accuracy'; allowed: one of the metrics ['loss']"),
    ({"metrics": ["loss", f"{F}:accuracy_of"], "target_metric": "accuracy_of"},
     "workload.kwargs.metrics[1]: received 'tests.dataset_fakes:accuracy_of', but module 'tests.dataset_fakes' has "
     "no attribute 'accuracy_of'"),
    ({"metrics": ["loss", f"{F}:FEATURES"], "target_metric": "FEATURES"},
     "workload.kwargs.metrics[1]: received 'tests.dataset_fakes:FEATURES', which is a int; allowed: a function"),
    ({"train": f"{F}:regression_set", "validation": f"{F}:regression_set", "loss": "mse", "metrics": ["accuracy"]},
     "workload.kwargs.chance: received null, but the chance level of 'accuracy' is known only for accuracy on class "
     "targets"),
    ({"metrics": ["loss", f"{F}:top2"], "target_metric": "top2", "chance": 0.5},
     "workload.kwargs.direction: received null for the metric 'top2'; allowed: 'above' (higher is better) or 'below'"),
    ({"target": "0.9"}, "workload.kwargs.target: received '0.9' (str); allowed: a finite number"),
    ({"direction": "up"}, "workload.kwargs.direction: received 'up' (str); allowed: "),
]


@pytest.mark.parametrize("changes, message", CASES, ids=[f"{next(iter(c))}-{i}" for i, (c, _) in enumerate(CASES)])
def test_each_bad_configuration_is_named_before_any_work(changes, message):
    with pytest.raises(ConfigError) as error:
        build(**changes)
    assert message in str(error.value)


def test_a_stage_stops_on_a_bad_dataset_before_touching_its_outputs(tmp_path, monkeypatch, capsys):
    from stages.throughput.stage import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"workload": {"name": "dataset", "kwargs": {**KWARGS, "train": f"{F}:empty"}}, "runtime": {"device": "cpu"}}))
    write_probe(tmp_path, [4])
    kept = tmp_path / "reports/throughput/throughput.csv"
    kept.parent.mkdir(parents=True)
    kept.write_text("old results\n")
    with pytest.raises(SystemExit) as exit_:
        run_main(main)
    assert exit_.value.code == 2
    assert "workload.kwargs.train: tests.dataset_fakes:empty returned a Dataset of length 0" in capsys.readouterr().err
    assert kept.read_text() == "old results\n"


# ---------------------------------------------------------------------------- known answers

def test_chance_levels_are_the_scores_of_guessing():
    w = build()
    y = torch.tensor([int(w.validation_set[i][1]) for i in range(len(w.validation_set))])
    shares = torch.bincount(y).double() / len(y)
    assert w.chance_score == pytest.approx(float(shares.max()))  # always the majority class
    assert better_than_chance(w) and w.target_direction == "above"
    entropy = build(metrics=["loss"], target_metric="loss", target=0.5)  # predicting the class frequencies
    assert entropy.chance_score == pytest.approx(float(-(shares * shares.log()).sum()))
    assert entropy.target_direction == "below"
    mse = build(train=f"{F}:regression_set", validation=f"{F}:regression_set", loss="mse", target_metric="loss",
                target=1.0, model_kwargs={"outputs": 1})  # predicting the mean target: its variance (targets 3 x0, so about 9)
    targets = torch.stack([mse.validation_set[i][1] for i in range(len(mse.validation_set))])
    assert mse.chance_score == pytest.approx(float(targets.var(unbiased=False)))
    assert 4 < mse.chance_score < 16 and sorted(evaluate(mse.init_model(), mse, torch.device("cpu"))) == ["loss"]
    assert build(chance=0.5).chance_score == 0.5  # given: taken as is


def test_batches_come_from_a_dataloader_in_the_seeds_order_whatever_the_workers():
    w = build()
    assert w.num_train_examples == 256 and w.loader_settings == DataSettings()
    fake, real = w.fake_batch(16), next(w.batches("train", 16, seed=3))
    assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in real] == [
        (torch.Size([16, 8]), torch.float32), (torch.Size([16]), torch.int64)]
    assert torch.equal(fake[0][5], w.train_set[0][0]), "the fake batch is the first real example, repeated"
    two = w.with_loader_settings(DataSettings(num_workers=2, prefetch_factor=1))
    a, b = w.batches("train", 16, seed=3), two.batches("train", 16, seed=3)
    for _ in range(20):  # past the 16 batches of one epoch: reshuffled the same way
        assert all(torch.equal(x, y) for x, y in zip(next(a), next(b)))
    b.close()
    assert not torch.equal(next(w.batches("train", 16, seed=4))[0], real[0])
    with pytest.raises(ValueError, match="batch size 512 exceeds the 256 training examples"):
        w.batches("train", 512, seed=0)
    loss_sum, count = w.loss(w.init_model(), real)
    assert count == 16 and loss_sum.ndim == 0
    assert str(F.replace(".", "/")) in " ".join(w.source_files())  # the user's code is part of the workload


def test_the_order_comes_from_the_seed_alone_over_epochs_and_reading_never_draws_from_the_global_state():
    w = build(data_kwargs={"n": 48})  # 3 batches of 16 an epoch: 12 batches span 4 epochs
    settings = [DataSettings(), DataSettings(num_workers=2), DataSettings(num_workers=2, persistent_workers=True),
                DataSettings(num_workers=1, persistent_workers=True, prefetch_factor=1)]
    orders = []
    for s in settings:
        batches = w.with_loader_settings(s).batches("train", 16, seed=3)
        orders.append([next(batches)[1].tolist() for _ in range(12)])
        batches.close()
    assert all(o == orders[0] for o in orders[1:])
    assert orders[0][:3] != orders[0][3:6]  # each epoch reshuffled
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    fresh = build(data_kwargs={"n": 48}).with_loader_settings(settings[2])
    fresh.validation_tensors(), next(fresh.batches("train", 16, seed=3))  # the validation read, a training batch
    assert torch.equal(torch.rand(3), expected), "reading batches moved torch's global random state (dropout's)"


def test_a_trial_of_the_study_and_the_baseline_train_alike_whatever_the_workers():
    """The study's trial (no workers; the validation set already read by an earlier trial in its process) and
    the baseline (two persistent workers, as select carries them; a fresh process) at the same size, rate
    and seed: the same batches over several epochs and the same dropout draws, so the same learning curve,
    and the same steps to target -- the baseline counts them as the study does, a crossing that falls back
    does not count."""
    from types import SimpleNamespace

    from stages.baseline.stage import run_baseline
    from stages.core.config import OptimizerSettings
    from stages.search.trial import train_to_target

    kwargs = {"model_kwargs": {"dropout": 0.3}, "data_kwargs": {"n": 96}, "target": 0.8}
    study = build(**kwargs)  # 96 examples, batch 16: an epoch every 6 steps
    study.validation_tensors()
    optimizer, cpu = OptimizerSettings(), torch.device("cpu")
    trial = train_to_target(study, optimizer, 0.1, 16, 5, cpu, 400, hold_factor=2.0)
    # reached after several epochs, a first crossing having fallen back (the study does not count that one)
    assert trial.outcome == "reached" and trial.steps_to_target > 30 and trial.fell_back_at, trial.reason
    baseline = build(**kwargs).with_loader_settings(DataSettings(num_workers=2, persistent_workers=True))
    config = {"learning_rate": 0.1, "batch_size": 16, "train_steps": int(trial.steps_to_target * 1.2) + 1}
    run = run_baseline(baseline, config, SimpleNamespace(optimizer=optimizer), 5, cpu, None)
    losses = {r["step"]: r["train_loss"] for r in trial.curve}
    common = [r for r in run.curve if r["step"] in losses]
    assert len(common) > 20 and all(r["train_loss"] == losses[r["step"]] for r in common)
    assert run.steps_to_target == trial.steps_to_target


def test_a_loss_and_a_metric_of_your_own_by_import_path():
    w = build(loss=f"{F}:margin_loss", metrics=["loss", f"{F}:top2"], target_metric="top2", direction="above",
              target=0.9, chance=0.5)
    model = w.init_model()
    batch = next(w.batches("train", 8, seed=0))
    loss_sum, count = w.loss(model, batch)
    assert count == 8 and loss_sum.item() == pytest.approx(
        torch.nn.functional.multi_margin_loss(model(batch[0]), batch[1], reduction="sum").item())
    metrics = evaluate(model, w, torch.device("cpu"))
    x, y = w.validation_tensors()
    with torch.no_grad():
        expected = (model(x).topk(2, dim=-1).indices == y[:, None]).any(-1).float().mean().item()
    assert sorted(metrics) == ["loss", "top2"] and metrics["top2"] == pytest.approx(expected)
    assert (w.target_metric, w.target_direction, w.chance_score) == ("top2", "above", 0.5)


# ---------------------------------------------------------------------------- outputs as libraries return them

def same_model(source: torch.nn.Module, workload) -> torch.nn.Module:
    """`workload`'s model with `source`'s weights (the fakes' outputs differ only in how they are returned)."""
    model = workload.init_model()
    model.load_state_dict(source.state_dict())
    return model


@pytest.mark.parametrize("form", ["dataclass", "dict", "tuple"])
def test_each_output_form_trains_and_evaluates_as_a_plain_tensor(form):
    plain = build(model=f"{F}:wrapped", model_kwargs={"form": "tensor"})
    w = build(model=f"{F}:wrapped", model_kwargs={"form": form})
    model = w.init_model()
    batch = next(w.batches("train", 8, seed=0))
    loss_sum, count = w.loss(model, batch)
    expected = torch.nn.functional.cross_entropy(model.net(batch[0]), batch[1], reduction="sum")
    assert count == 8 and loss_sum.item() == pytest.approx(expected.item())
    metrics = evaluate(model, w, torch.device("cpu"))
    assert metrics == pytest.approx(evaluate(same_model(model, plain), plain, torch.device("cpu")))
    # the model's own loss, given the targets as `labels`: the same numbers
    own = build(model=f"{F}:wrapped", model_kwargs={"form": form}, loss="model", metrics=["loss", "accuracy"])
    own_sum, own_count = own.loss(same_model(model, own), batch)
    assert own_count == 8 and own_sum.item() == pytest.approx(expected.item(), rel=1e-5)
    assert evaluate(same_model(model, own), own, torch.device("cpu")) == pytest.approx(metrics, rel=1e-5)


def test_the_output_setting_names_where_the_predictions_are():
    w = build(model=f"{F}:wrapped", model_kwargs={"form": "scores"}, output="scores")
    model = w.init_model()
    x, y = w.validation_tensors()
    with torch.no_grad():
        expected = (model.net(x).argmax(-1) == y).float().mean().item()
    assert evaluate(model, w, torch.device("cpu"))["accuracy"] == pytest.approx(expected)
    by_index = build(model=f"{F}:wrapped", model_kwargs={"form": "tuple"}, output=1)  # (logits, detached logits)
    assert evaluate(same_model(model, by_index), by_index, torch.device("cpu"))["accuracy"] == pytest.approx(expected)


OUTPUT_CASES = [  # (kwargs changed, the one line expected)
    ({"model_kwargs": {"form": "string"}},
     "workload.kwargs.output: received null, but the model returned a str; allowed: a tensor, an object with .logits "
     "(a transformers ModelOutput, a dataclass), a dict with 'logits', or a tuple (its first element) -- or set "
     "workload.kwargs.output to the attribute or key (a tuple: the index) that holds the predictions"),
    ({"model_kwargs": {"form": "scores"}},
     "workload.kwargs.output: received null, but the model returned a dict with keys ['scores', 'hidden']; allowed: "),
    ({"model_kwargs": {"form": "tensor"}, "output": "logits"},
     "workload.kwargs.output: received 'logits', but the model returned a tensor [2, 4] float32, which has no 'logits'"),
    ({"model_kwargs": {"form": "dict"}, "output": 3},
     "workload.kwargs.output: received 3, but the model returned a dict with keys ['logits'], which has no 3"),
    ({"model_kwargs": {"form": "tensor"}, "loss": "model", "metrics": ["loss", "accuracy"]},
     "workload.kwargs.loss: received 'model', but called with labels=<targets> the model returned a tensor [2, 4] "
     "float32, with no loss in it; allowed: 'model' for a model whose output then has a `loss`"),
    ({"model": f"{F}:model", "model_kwargs": {}, "loss": "model", "metrics": ["loss", "accuracy"]},
     "workload.kwargs.labels_keyword: received 'labels', but tests.dataset_fakes:model's forward takes ['x']; allowed: "
     "the argument the model takes its targets under"),
    ({"model": f"{F}:unprintable", "model_kwargs": {}},
     "workload.kwargs.output: received null, but the model returned a Unprintable; allowed: a tensor, "),
    ({"model_kwargs": {"form": "dict"}, "loss": "model", "metrics": ["loss"], "target_metric": "loss", "target": 0.5},
     "workload.kwargs.chance: received null, but the chance level of 'loss' is known only for accuracy on class "
     "targets, loss with cross_entropy on class targets, and loss with mse (not for a loss the model computes itself)"),
]


@pytest.mark.parametrize("changes, message", OUTPUT_CASES, ids=[f"output-{i}" for i in range(len(OUTPUT_CASES))])
def test_an_output_it_cannot_read_is_refused_in_one_line_naming_the_type_and_the_setting(changes, message):
    with pytest.raises(ConfigError) as error:
        build(**{"model": f"{F}:wrapped", **changes})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_output_the_meta_check_cannot_see_is_refused_in_one_line_at_the_first_step(monkeypatch):
    """A model that cannot run on the meta device skips the build-time check: the first training step then
    stops with the same one line, never a traceback from inside the message."""
    monkeypatch.setattr("stages.workloads.dataset.DatasetWorkload._check_outputs", lambda self, spec: None)
    w = build(model=f"{F}:unprintable", model_kwargs={})
    with pytest.raises(ConfigError, match=r"^workload.kwargs.output: received null, but the model returned a "
                                          r"Unprintable; allowed: "):
        w.loss(w.init_model(), next(w.batches("train", 4, seed=0)))


def test_a_stage_prints_an_unreadable_output_on_one_line(tmp_path, monkeypatch, capsys):
    from stages.throughput.stage import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"workload": {"name": "dataset", "kwargs": {
        **KWARGS, "model": f"{F}:wrapped", "model_kwargs": {"form": "string"}}}, "runtime": {"device": "cpu"}}))
    write_probe(tmp_path, [4])
    with pytest.raises(SystemExit) as exit_:
        run_main(main)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert "workload.kwargs.output: received null, but the model returned a str" in err[0]


# ---------------------------------------------------------------------------- the pipeline on it

def write_probe(root, sizes):
    """Probe outputs for the throughput stage: every size fits (the throughput tests need no probe run)."""
    probe = root / "reports" / "probe"
    probe.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"batch_size": b, "status": "fits", "reason": "", "peak_memory_bytes": 1000 * b}
                  for b in sizes]).to_csv(probe / "probe.csv", index=False)
    (probe / "metrics.json").write_text(json.dumps({"max_batch_size": sizes[-1], "device": "cpu"}))


QUICK = {"warmup_steps": 2, "window_seconds": 0.02, "min_windows": 6, "max_seconds_per_size": 0.2,
         "split_steps": 5, "peak_seconds": 0.02}


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_the_pipeline_runs_end_to_end_on_a_tiny_dataset(tmp_path, monkeypatch):
    from stages.baseline.stage import main as baseline
    from stages.probe.stage import main as probe
    from stages.report.stage import main as report
    from stages.scaling.stage import main as scaling
    from stages.select.stage import main as select
    from stages.throughput.stage import main as throughput

    params = {"workload": {"name": "dataset", "kwargs": KWARGS},
              "runtime": {"device": "cpu", "seed": 0, "threads": 1},
              "probe": {"batch_sizes": [8, 32], "steps": 1},
              "throughput": {**QUICK, "max_workers": 1},
              "scaling": {"batch_sizes": [8, 32], "lr_min": 0.03, "lr_max": 1.0, "lr_points": 3, "max_steps": 150,
                          "seeds": 0, "lr_refine_trials": 0, "bootstrap": 20, "noise_scale_batch_sizes": [8, 32]},
              "data": {"num_workers": 0}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["stage"])  # the stage mains read their own options
    probe()
    assert pd.read_csv("reports/probe/probe.csv")["status"].tolist() == ["fits", "fits"]
    throughput()
    rows = pd.read_csv("reports/throughput/workers.csv")
    metrics = json.loads(open("reports/throughput/metrics.json").read())
    assert rows["num_workers"].tolist() == [0, 1] and rows["batch_size"].eq(32).all()  # the largest measured size
    timed_with = json.loads(open("reports/throughput/diagnostics.json").read())["measured_with_num_workers"]
    assert timed_with == metrics["recommended_num_workers"]  # every size timed as it will be trained
    assert rows["recommended"].sum() == 1 and metrics["recommended_num_workers"] in (0, 1)
    assert (rows["examples_per_s_ci_low"] <= rows["examples_per_s"]).all()
    from stages.scaling.waves import study_commands

    for args in study_commands([8, 32]):
        scaling(args)
    steps = pd.read_csv("reports/scaling/steps_to_target.csv")
    assert (steps["status"] == "reached").any(), steps
    select()
    config = yaml.safe_load(open("reports/select/initial_config.yaml"))
    assert config["data"] == {"num_workers": metrics["recommended_num_workers"], "pin_memory": False,
                              "persistent_workers": metrics["recommended_num_workers"] == 1, "prefetch_factor": None}
    assert config["workload"]["name"] == "dataset" and config["target"]["metric"] == "accuracy"
    baseline()
    result = json.loads(open("reports/baseline/metrics.json").read())
    assert result["reached_target"] is True and result["accuracy"] > 0.8
    report()  # the throughput section carries the workers measurement, the configuration its data settings
    text = open("reports/REPORT.md").read()
    assert "DataLoader workers" in text and "the training loop timed with each DataLoader num_workers" in text
    assert f"data = {{num_workers: {metrics['recommended_num_workers']}, pin_memory: no" in text


def test_in_memory_workloads_skip_the_workers_measurement(tmp_path, monkeypatch):
    from stages.throughput.stage import main as throughput

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"workload": {"name": "nqm", "kwargs": {"dim": 4}},
                                                          "runtime": {"device": "cpu"}, "throughput": QUICK}))
    write_probe(tmp_path, [4])
    monkeypatch.chdir(tmp_path)
    throughput()
    assert pd.read_csv("reports/throughput/workers.csv").empty
    metrics = {**json.loads(open("reports/throughput/diagnostics.json").read()),
               **json.loads(open("reports/throughput/metrics.json").read())}
    assert metrics["recommended_num_workers"] is None and metrics["num_workers_measured"] is False
    assert "Not measured: workload 'nqm' builds its batches in memory" in open("reports/throughput/diagnosis.md").read()


# ---------------------------------------------------------------------------- a slow Dataset

SLOW = {**KWARGS, "data_kwargs": {"sleep_per_example_s": 5.0e-3}, "model_kwargs": {"step_s": 0.01}}


def slow_throughput(root, monkeypatch, data: dict, max_workers: int, step_s: float = 0.01) -> tuple[pd.Series, dict]:
    """Throughput at batch size 4 of a Dataset that sleeps 5 ms per example (20 ms per batch and worker)
    feeding a model whose training step waits `step_s` (10 ms)."""
    from stages.throughput.stage import main as throughput

    (root / "params.yaml").write_text(yaml.safe_dump({
        "workload": {"name": "dataset", "kwargs": {**SLOW, "model_kwargs": {"step_s": step_s}}}, "runtime": {"device": "cpu", "threads": 1},
        "throughput": {**QUICK, "max_workers": max_workers}, "data": data}))
    write_probe(root, [4])
    monkeypatch.chdir(root)
    throughput()
    row = pd.read_csv(root / "reports/throughput/throughput.csv").iloc[0]
    out = root / "reports/throughput"
    return row, {**json.loads((out / "diagnostics.json").read_text()), **json.loads((out / "metrics.json").read_text())}


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_two_workers_are_recommended_and_every_size_is_timed_with_them(tmp_path, monkeypatch):
    row, metrics = slow_throughput(tmp_path, monkeypatch, {"num_workers": 0}, max_workers=2)
    # one worker overlaps loading with compute (one batch per 20 ms), two deliver one per 10 ms
    rows = pd.read_csv(tmp_path / "reports/throughput/workers.csv").set_index("num_workers")
    assert rows.index.tolist() == [0, 1, 2] and rows["recommended"].tolist() == [False, False, True]
    assert rows["persistent_workers"].tolist() == [False, True, True]  # workers persist across epochs
    assert rows.at[0, "examples_per_s"] < 4 / 0.025  # 20 ms of loading then 10 ms of compute per step
    assert rows.at[1, "examples_per_s"] > 1.2 * rows.at[0, "examples_per_s"]  # ideally 1.5x
    assert metrics["recommended_num_workers"] == 2 and metrics["num_workers_speedup"] > 1.8
    # the batch size was then timed with 2 workers, as a run started with them trains: no longer input-bound
    assert metrics["measured_with_num_workers"] == 2 and metrics["measured_with_persistent_workers"] is True
    assert not row["input_bound"] and row["examples_per_s"] > 1.8 * rows.at[0, "examples_per_s"]
    notes = (tmp_path / "reports/throughput/diagnosis.md").read_text()
    assert "Recommended: **num_workers 2**" in notes and "x num_workers 0" in notes
    for k in (0, 1, 2):  # every count's interval is shown
        assert f"{k}: {sig(rows.at[k, 'examples_per_s'])} [{sig(rows.at[k, 'examples_per_s_ci_low'])}, " in notes


@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_a_pipeline_input_bound_even_with_the_best_workers_says_so_first(tmp_path, monkeypatch):
    row, metrics = slow_throughput(tmp_path, monkeypatch, {"num_workers": 0}, max_workers=1)
    # one worker: a batch per 20 ms against a 10 ms step -- the best setting measured, still input-bound
    assert metrics["recommended_num_workers"] == 1 and metrics["measured_with_num_workers"] == 1
    assert row["input_bound"] and metrics["input_bound_batch_sizes"] == [4]
    assert row["on_device_examples_per_s"] > 1.5 * row["examples_per_s"] and row["data_wait_s"] > 0
    notes = (tmp_path / "reports/throughput/diagnosis.md").read_text()
    assert notes.startswith("## Diagnosis\n\n**The input pipeline is the limit.** Input-bound at batch sizes [4] "
                            "even with the recommended DataLoader setting (num_workers 1, persistent workers)")


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")  # they sleep: 2 cores are plenty
@pytest.mark.slow  # several seconds: left out of `make test-fast`
def test_the_same_slow_dataset_with_enough_workers_is_not_input_bound(tmp_path, monkeypatch):
    # four workers deliver a batch per 5 ms, six times as fast as a 30 ms step consumes them: a margin that a
    # busy machine (the workers' wake-ups and collation wait for a core) cannot close (2x failed under load)
    row, metrics = slow_throughput(tmp_path, monkeypatch, {"num_workers": 4, "persistent_workers": True}, max_workers=0,
                                   step_s=0.03)
    assert not row["input_bound"] and metrics["input_bound_batch_sizes"] == []
    assert row["examples_per_s"] > 0.7 * row["on_device_examples_per_s"]
    assert metrics["recommended_num_workers"] is None  # max_workers 0: not measured


# ---------------------------------------------------------------------------- the documented example

def test_the_documented_example_works_verbatim(tmp_path, monkeypatch, fresh_my_project):
    """docs/dataset.md's module and params, copied verbatim, build the workload and train it to its target;
    the README shows the same params."""
    import re
    import sys

    from stages.core.config import OptimizerSettings, validate
    from stages.core.model_choice import check_candidates
    from stages.search.trial import train_to_target

    doc = (ROOT / "docs/dataset.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    params = re.search(r"```yaml\n(.*?)```", doc, re.S).group(1)
    assert f"```yaml\n{params}```" in (ROOT / "README.md").read_text(), "README.md's dataset example drifted"
    (tmp_path / "my_project").mkdir()
    (tmp_path / "my_project" / "__init__.py").write_text("")
    (tmp_path / "my_project" / "data.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    try:
        p = validate(yaml.safe_load(params))
        check_candidates(p.workload.name, p.workload.kwargs, p.family.candidates)  # the family's models build
        w = make_workload(p.workload.name, p.workload.kwargs).with_loader_settings(p.data)
        assert w.num_train_examples == 1438 and 0.09 < w.chance_score < 0.15 and better_than_chance(w)
        assert p.workload.sources == ["my_project/data.py"] and str(tmp_path / "my_project/data.py") in w.source_files()
        result = train_to_target(w, OptimizerSettings(name="sgd", momentum=0.9), 0.1, 32, 0, torch.device("cpu"),
                                 max_steps=300)
        assert result.outcome == "reached", result.reason
    finally:
        sys.modules.pop("my_project.data", None)
        sys.modules.pop("my_project", None)


# ---------------------------------------------------------------------------- the recommendation rule

def test_the_recommendation_is_the_smallest_count_within_the_interval_of_the_surely_fastest():
    def row(k, median, low, high):
        return {"num_workers": k, "examples_per_s": median, "examples_per_s_ci_low": low, "examples_per_s_ci_high": high,
                "relative_half_width": (high - low) / 2 / median}

    assert workers.recommend([row(0, 100, 95, 105), row(1, 190, 185, 195), row(2, 200, 196, 204),
                              row(4, 201, 199, 203)], configured=0) == 2  # 2's median is within 4's interval; 1's is not
    # a noisy count (wide interval) is not "the best" just for its median: 2 is surely faster than 0 and 1
    assert workers.recommend([row(0, 170, 160, 186), row(1, 190, 189, 196), row(2, 384, 373, 385),
                              row(4, 600, 330, 700)], configured=0) == 2
    assert workers.recommend([row(0, 500, 490, 510), row(1, 480, 470, 490)], configured=1) == 0
    # too noisy to rank (an interval wider than +-50% of its median): the configured count, said as such
    noisy = [row(0, 5000, 4800, 5300), row(1, 18385, 2192, 61914), row(2, 5100, 4900, 5200)]
    assert workers.too_noisy(noisy) == [1] and workers.recommend(noisy, configured=2) == 2
    for r in noisy:
        r.update(batch_size=64, persistent_workers=r["num_workers"] > 0, windows=6, stop_reason="time_cap",
                 recommended=r["num_workers"] == 2)
    text = workers.notes(noisy, None, 2, configured=2)
    assert "**Too noisy to rank**: the interval of num_workers 1 is wider than +-50% of its median" in text
    assert "falls back to the configured **num_workers 2**" in text and "1: 18,400 [2,190, 61,900]" in text
    assert workers.candidates(8) == [0, 1, 2, 4, 8] and workers.candidates(6) == [0, 1, 2, 4, 6]
    assert workers.candidates(1) == [0, 1] and workers.candidates(0) == [0]
