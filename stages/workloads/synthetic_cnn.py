"""synthetic_cnn: a small convolutional classifier on generated images labelled by a fixed random teacher.

An unbounded stream (no dataset size caps the batch) whose cost is convolution and activation
memory -- the workload to exercise the probe and throughput stages. Data is generated on the CPU
per batch, like a real input pipeline.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from stages.workloads.base import Batch
from stages.workloads.classification import Classification


def conv_net(channels: int, width: int, depth: int, num_classes: int, batch_norm: bool) -> nn.Sequential:
    """depth x [conv3x3 -> (BatchNorm) -> ReLU] at full resolution, global average pool, linear head."""
    layers: list[nn.Module] = []
    c = channels
    for _ in range(depth):
        layers.append(nn.Conv2d(c, width, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU())
        c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


class SyntheticCNN(Classification):
    name = "synthetic_cnn"
    num_train_examples = None  # unbounded stream
    example_unit = "image"
    chance_explanation = "the share of the most common class among the validation images: always guessing it"

    def __init__(self, width: int = 16, depth: int = 2, batch_norm: bool = False, image_size: int = 16,
                 channels: int = 3, num_classes: int = 10, target: float = 0.5,
                 eval_examples: int = 1024, teacher_seed: int = 1234):
        for key, v in {"width": width, "depth": depth, "image_size": image_size, "channels": channels,
                       "eval_examples": eval_examples}.items():
            if int(v) < 1:
                raise ValueError(f"{key} must be a positive integer, got {v}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if not 0 < target <= 1:
            raise ValueError(f"target (validation accuracy) must be in (0, 1], got {target}")
        self.width, self.depth, self.batch_norm = int(width), int(depth), bool(batch_norm)
        self.image_size, self.channels, self.num_classes = int(image_size), int(channels), int(num_classes)
        self.target_value = float(target)
        self.eval_examples, self.teacher_seed = int(eval_examples), int(teacher_seed)
        gen = torch.Generator().manual_seed(teacher_seed)
        with torch.random.fork_rng():
            torch.manual_seed(teacher_seed)
            self.teacher = conv_net(channels, 8, 1, num_classes, batch_norm=False).eval()
        # Centre the teacher's logits so its classes are roughly balanced (a raw random net picks few classes).
        with torch.no_grad():
            probe = torch.randn(4096, channels, image_size, image_size, generator=gen)
            self.teacher[-1].bias -= self.teacher(probe).mean(0)
        x_val = torch.randn(self.eval_examples, channels, image_size, image_size, generator=gen)
        self.x_val, self.y_val = x_val, self._label(x_val)
        counts = torch.bincount(self.y_val, minlength=num_classes)
        self.chance_score = float(counts.max()) / self.eval_examples  # majority-class accuracy

    def _label(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher(x).argmax(1)

    def hyperparameters(self) -> dict:
        return {"width": self.width, "depth": self.depth, "batch_norm": self.batch_norm,
                "image_size": self.image_size, "channels": self.channels, "num_classes": self.num_classes,
                "target": self.target_value, "teacher_seed": self.teacher_seed}

    def init_model(self) -> nn.Module:
        return conv_net(self.channels, self.width, self.depth, self.num_classes, self.batch_norm)

    def batches(self, split: str, batch_size: int, seed: int) -> Iterator[Batch]:
        if split != "train":
            raise ValueError(f"synthetic_cnn streams only the 'train' split, got {split!r}")
        gen = torch.Generator().manual_seed(seed + 1_000_003)  # disjoint from the teacher/validation stream
        shape = (batch_size, self.channels, self.image_size, self.image_size)
        while True:
            x = torch.randn(shape, generator=gen)  # (B, C, H, W)
            yield x, self._label(x)

    def fake_batch(self, batch_size: int) -> Batch:
        return (torch.randn(batch_size, self.channels, self.image_size, self.image_size),
                torch.randint(0, self.num_classes, (batch_size,)))
