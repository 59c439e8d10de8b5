"""A workload whose steps to target are known in closed form, for testing the scaling study against
the truth: at batch size B and learning rate lr, accuracy crosses 0.95 at step

    S(B, lr) = s_min (1 + b_crit / B) x (1 + 4 ln(lr / lr_opt(B))^2),   lr_opt(B) = lr0 sqrt(B / 16)

-- McCandlish et al.'s steps-versus-batch curve times a bowl in the rate -- and stays there. The model is
one weight that plain SGD (momentum 0) moves by exactly lr per step, so evaluate() reads the rate back
from it; the model counts its own steps and keeps its batch size (buffers), so trials trained in turn --
paused at the search's rungs and resumed -- never read each other's. Each training step costs
microseconds: a study of thousands of steps per trial stays cheap."""
from __future__ import annotations

import math

import torch

from stages.workloads.base import Workload


class CurveWorkload(Workload):
    name = "curve"
    target_metric, target_value, target_direction, chance_score = "accuracy", 0.95, "above", 0.1

    def __init__(self, s_min: float = 100.0, b_crit: float = 100.0, lr0: float = 0.05):
        self.s_min, self.b_crit, self.lr0 = s_min, b_crit, lr0

    def steps_to_target(self, batch_size: int, lr: float) -> float:
        lr_opt = self.lr0 * math.sqrt(batch_size / 16)
        return self.s_min * (1 + self.b_crit / batch_size) * (1 + 4 * math.log(lr / lr_opt) ** 2)

    def init_model(self) -> torch.nn.Module:
        model = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(model.weight)
        model.register_buffer("steps", torch.zeros(()))       # training steps taken (its own count)
        model.register_buffer("batch_size", torch.ones(()))   # the batch size it trains at
        return model

    def batches(self, split: str, batch_size: int, seed: int):
        while True:
            yield (torch.ones(batch_size, 1),)

    def loss(self, model, batch):
        n = batch[0].shape[0]
        with torch.no_grad():
            model.steps += 1
            model.batch_size.fill_(n)
        return -model(batch[0]).sum(), n  # the mean's gradient is -1: SGD adds lr to the weight each step

    def evaluate(self, model, device) -> dict[str, float]:
        steps = int(model.steps)
        if steps == 0:
            return {"accuracy": 0.1}
        lr = float(model.weight.detach().sum()) / steps
        needed = self.steps_to_target(int(model.batch_size), lr) if lr > 0 else math.inf
        accuracy = 0.96 if steps >= needed else 0.1 + 0.8 * steps / needed
        return {"accuracy": accuracy, "loss": 1.0 - accuracy}

    def fake_batch(self, batch_size: int):
        return (torch.ones(batch_size, 1),)

    def hyperparameters(self) -> dict:
        return {"s_min": self.s_min, "b_crit": self.b_crit, "lr0": self.lr0}


def make(s_min: float = 100.0, b_crit: float = 100.0, lr0: float = 0.05) -> CurveWorkload:
    return CurveWorkload(s_min, b_crit, lr0)
