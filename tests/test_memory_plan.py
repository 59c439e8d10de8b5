"""probe.plan_for: the fake-tensor memory estimate against memory computed by hand, the refusal for
data-dependent models, the largest size per target, the settings' validation, and the plan's CSV."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from stages.core import outputs as out
from stages.core.config import OptimizerSettings, validate
from stages.core.errors import ConfigError
from stages.core.io import write_csv
from stages.probe.plan import Estimate, PlanTarget, estimate_peak, fit_targets, plan_frame, plan_memory, plan_targets
from stages.workloads.base import Workload

F32 = 4  # bytes per float32


class LinearStack(Workload):
    """`depth` bias-free d x d linear layers; loss = sum of the outputs (its backward saves nothing)."""

    def __init__(self, d: int, depth: int, forward=None):
        self.d, self.depth, self.forward = d, depth, forward

    def init_model(self) -> nn.Module:
        model = nn.Sequential(*[nn.Linear(self.d, self.d, bias=False) for _ in range(self.depth)])
        if self.forward is not None:
            model.forward = self.forward.__get__(model)
        return model

    def batches(self, split, batch_size, seed):
        raise NotImplementedError

    def loss(self, model, batch):
        return model(batch[0]).sum(), batch[0].shape[0]

    def evaluate(self, model, device):
        return {}

    def fake_batch(self, batch_size):
        return (torch.randn(batch_size, self.d),)


def test_the_estimate_of_a_linear_stack_matches_the_memory_computed_by_hand():
    d, depth, b = 32, 2, 512
    weights = depth * d * d * F32  # P
    batch = b * d * F32            # one (B, d) tensor
    # The peak is the evaluation forward after the last step: weights, their gradients (kept after the
    # step), SGD's momentum buffers, the input, and both layers' outputs at the moment the second is made
    # (under no_grad the first is freed only then). In training the backward holds 2P + input + 2 outputs
    # + one d x d gradient: less.
    sgd = estimate_peak(LinearStack(d, depth), OptimizerSettings(name="sgd", momentum=0.9), b)
    assert sgd.status == "estimated", sgd.reason
    assert sgd.categories == {"parameters": weights, "buffers": 0, "gradients": weights, "optimizer_state": weights,
                              "activations": 2 * batch, "temporaries": 0, "inputs": batch, "workspace": 0}
    assert sgd.peak_bytes == 3 * weights + batch + 2 * batch
    # Adam keeps two moments per weight and one float32 step count per parameter tensor.
    adam = estimate_peak(LinearStack(d, depth), OptimizerSettings(name="adam"), b)
    assert adam.categories["optimizer_state"] == 2 * weights + depth * F32
    assert adam.peak_bytes == 4 * weights + depth * F32 + 3 * batch
    # SGD without momentum keeps no state.
    plain = estimate_peak(LinearStack(d, depth), OptimizerSettings(name="sgd", momentum=0.0), b)
    assert plain.categories["optimizer_state"] == 0 and plain.peak_bytes == 2 * weights + 3 * batch


class OneConv(LinearStack):
    """One 3x3 convolution, 1 -> `c` channels on (B, 1, h, h) images; loss = sum of the outputs."""

    def __init__(self, c: int, h: int):
        self.c, self.h = c, h

    def init_model(self) -> nn.Module:
        return nn.Conv2d(1, self.c, 3, padding=1)

    def fake_batch(self, batch_size):
        return (torch.randn(batch_size, 1, self.h, self.h),)


def test_a_convolution_adds_its_cpu_workspace_while_it_runs():
    c, h, b = 8, 16, 64
    weights = (c * 9 + c) * F32
    image, output = b * h * h * F32, b * c * h * h * F32
    # The peak is the evaluation forward's convolution: weights, gradients, momentum, the input, the output
    # and, while the op runs, oneDNN's reorder buffer of the output's size (workspace_bytes).
    e = estimate_peak(OneConv(c, h), OptimizerSettings(name="sgd", momentum=0.9), b)
    assert e.categories["workspace"] == output and e.categories["activations"] == output
    assert e.peak_bytes == 3 * weights + image + 2 * output


def _item_in_control_flow(self, x):
    y = self[0](x)
    if y.sum().item() > 0:  # the branch taken depends on the values
        y = 2 * y
    return y


def _boolean_mask(self, x):
    y = self[0](x)
    return y[y > 0].sum() + y  # the mask's size depends on the values (nonzero)


@pytest.mark.parametrize("forward, op", [(_item_in_control_flow, "_local_scalar_dense"), (_boolean_mask, "nonzero")],
                         ids=["item", "nonzero"])
def test_a_data_dependent_model_is_refused_in_words_naming_the_operation_and_the_line(forward, op):
    estimates = plan_memory(LinearStack(8, 1, forward), OptimizerSettings(), [4, 8, 16], steps=2)
    assert [e.status for e in estimates] == ["refused"] * 3  # the first refusal stands for every size
    reason = estimates[0].reason
    assert "cannot run under fake tensors" in reason and op in reason and "depends on tensor values" in reason
    assert "test_memory_plan.py" in reason  # where, in the user's model
    assert all(e.peak_bytes is None for e in estimates)
    fits = fit_targets(estimates, [PlanTarget("80GiB", 80 * 2**30)], 0.1)
    assert fits[0].max_batch_size is None


def test_the_largest_size_per_target_uses_the_margin_and_stops_at_the_first_misfit():
    estimates = [Estimate(b, "estimated", "", peak) for b, peak in ((1, 100), (2, 180), (4, 300), (8, 700))]
    a, b, c = fit_targets(estimates, [PlanTarget("small", 200), PlanTarget("mid", 800), PlanTarget("big", 10_000)], 0.1)
    assert (a.limit_bytes, a.max_batch_size, a.at_largest_candidate) == (180, 2, False)  # 200 x 0.9 = 180 fits
    assert (b.limit_bytes, b.max_batch_size) == (720, 8) and b.at_largest_candidate
    assert c.max_batch_size == 8
    assert fit_targets(estimates, [PlanTarget("tiny", 50)], 0.1)[0].max_batch_size is None


def test_plan_targets_label_each_target():
    assert plan_targets(None) == []
    assert plan_targets({"memory": "80GiB"}) == [PlanTarget("80GiB", 80 * 2**30)]
    assert plan_targets([{"memory": "24GB", "name": "L4"}, {"memory": "1MiB"}]) == [
        PlanTarget("L4", 24 * 10**9), PlanTarget("1MiB", 2**20)]


@pytest.mark.parametrize("value, says", [
    ([], "a non-empty list"),
    ("80GiB", "allowed: a mapping or a list of a mapping or null"),
    ({"mem": "80GiB"}, "unknown key(s) mem; allowed keys: memory, name"),
    ({"name": "A100"}, "lacks 'memory'"),
    ({"memory": "lots"}, "memory 'lots' is not a positive size"),
    ({"memory": 80}, "memory 80 is not a positive size"),
    ({"memory": "0GiB"}, "memory '0GiB' is not a positive size"),
    ([{"memory": "1GiB"}, {"memory": "1GiB"}], "share the label '1GiB'"),
    ([{"memory": "1GiB", "name": ""}], "name '' is not a non-empty string"),
])
def test_bad_plan_for_is_refused_naming_the_key_the_value_and_what_is_allowed(value, says):
    with pytest.raises(ConfigError) as e:
        validate({"probe": {"plan_for": value}})
    assert "probe.plan_for: received" in str(e.value) and says in str(e.value)


def test_the_plan_csv_passes_its_declared_checks_with_and_without_a_plan(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    estimates = plan_memory(LinearStack(16, 2), OptimizerSettings(), [8, 16], steps=2)
    write_csv(out.PROBE_PLAN_CSV.path, plan_frame(estimates))
    frame = out.read_csv(out.PROBE_PLAN_CSV, expect_batch_sizes=[8, 16])
    assert list(frame["status"]) == ["estimated"] * 2
    parts = frame[[f"{c}_bytes" for c in out.PLAN_CATEGORIES]].sum(axis=1)
    assert (parts == frame["predicted_peak_bytes"]).all()  # the categories add up to the peak
    write_csv(out.PROBE_PLAN_CSV.path, plan_frame([]))  # plan_for null: the header alone
    assert len(out.read_csv(out.PROBE_PLAN_CSV)) == 0
