"""A workload whose validation metric follows a script, step by step, and whose evaluation can be
made slow: for testing the training loop's stop rules, its hold after the target, and its clock. The
model counts its own steps (a buffer), so trials trained in turn never read each other's; a script may
also take the learning rate, read back from the model (script(step, lr))."""
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
        self.takes_rate = script.__code__.co_argcount >= 2 if hasattr(script, "__code__") else False

    def init_model(self) -> torch.nn.Module:
        model = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(model.weight)
        model.register_buffer("steps", torch.zeros(()))  # training steps taken (its own count)
        return model

    def batches(self, split: str, batch_size: int, seed: int):
        while True:
            yield (torch.ones(batch_size, 1),)

    def loss(self, model, batch):
        with torch.no_grad():
            model.steps += 1
        time.sleep(self.step_sleep_s)
        return -model(batch[0]).sum(), batch[0].shape[0]  # plain SGD adds lr to the weight each step

    def evaluate(self, model, device) -> dict[str, float]:
        time.sleep(self.eval_sleep_s)
        steps = int(model.steps)
        if self.takes_rate:
            lr = float(model.weight.detach().sum()) / steps if steps else 0.0
            return {"accuracy": float(self.script(steps, lr))}
        return {"accuracy": float(self.script(steps))}

    def fake_batch(self, batch_size: int):
        return (torch.ones(batch_size, 1),)
