"""What the built-in classifiers share: summed cross-entropy as the loss, and accuracy plus mean
loss on a fixed validation set (`self.x_val`, `self.y_val`) that is moved to each device once."""
from __future__ import annotations

import torch
from torch import nn

from stages.workloads.base import Batch, Workload

EVAL_CHUNK = 512  # validation examples per forward pass: bounds evaluation memory


class Classification(Workload):
    target_metric = "accuracy"
    target_direction = "above"
    x_val: torch.Tensor  # (N, ...) validation inputs, set by the subclass
    y_val: torch.Tensor  # (N,) class indices

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        x, y = batch
        return nn.functional.cross_entropy(model(x), y, reduction="sum"), y.shape[0]

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        cache = self.__dict__.setdefault("_val_on", {})
        if str(device) not in cache:
            cache[str(device)] = (self.x_val.to(device), self.y_val.to(device))
        x, y = cache[str(device)]
        logits = torch.cat([model(chunk) for chunk in x.split(EVAL_CHUNK)])  # (N, classes)
        return {"accuracy": (logits.argmax(1) == y).float().mean().item(),
                "loss": nn.functional.cross_entropy(logits, y).item()}
