"""A workload whose validation metric follows a script, step by step, and whose evaluation can be
made slow: for testing the training loop's stop rules, its hold after the target, and its clock."""
from __future__ import annotations

import time

import torch

from stages.workloads.base import Workload


class ScriptedWorkload(Workload):
    """accuracy after step s is script(s); target 0.95 above; each evaluate() sleeps eval_sleep_s,
    each training step (its loss) sleeps step_sleep_s."""
    name = "scripted"
    target_metric, target_value, target_direction, chance_score = "accuracy", 0.95, "above", 0.1

    def __init__(self, script, *, eval_sleep_s: float = 0.0, step_sleep_s: float = 0.0):
        self.script, self.eval_sleep_s, self.step_sleep_s = script, eval_sleep_s, step_sleep_s
        self.steps = 0

    def init_model(self) -> torch.nn.Module:
        self.steps = 0
        return torch.nn.Linear(1, 1)

    def batches(self, split: str, batch_size: int, seed: int):
        while True:
            yield (torch.ones(batch_size, 1),)

    def loss(self, model, batch):
        self.steps += 1
        time.sleep(self.step_sleep_s)
        return model(batch[0]).pow(2).sum(), batch[0].shape[0]

    def evaluate(self, model, device) -> dict[str, float]:
        time.sleep(self.eval_sleep_s)
        return {"accuracy": float(self.script(self.steps))}

    def fake_batch(self, batch_size: int):
        return (torch.ones(batch_size, 1),)
