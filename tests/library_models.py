"""Real library models for the `dataset` workload's tests, built from configs (no download, no weights), as a
user plugs them in without a wrapper (tests/test_library_models.py; needs the [hf] extra: transformers):

- `gpt2`: a byte-level GPT-2 (`transformers.GPT2LMHeadModel`, which returns a `ModelOutput`) on 32-byte
  windows of real text (scikit-learn's dataset descriptions), read as `.logits` with cross_entropy;
- `resnet`: a tiny `transformers.ResNetForImageClassification` on scikit-learn's 8x8 digit images, computing
  its own loss when given `labels` (loss: model).
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

CONTEXT = 32  # bytes per window (the model predicts each next byte)


class ByteWindows(Dataset):
    """Non-overlapping windows of the text's bytes: (input bytes (CONTEXT,), next bytes (CONTEXT,)), int64."""

    def __init__(self, part: str, windows: int):
        from stages.workloads.char_lm import load_text

        data = torch.tensor(list(load_text().encode("utf-8")), dtype=torch.long)
        split = int(0.9 * data.numel())
        data = data[:split] if part == "train" else data[split:]
        count = min(windows, (data.numel() - 1) // CONTEXT)
        starts = torch.arange(count) * CONTEXT
        self.x = torch.stack([data[s:s + CONTEXT] for s in starts])
        self.y = torch.stack([data[s + 1:s + CONTEXT + 1] for s in starts])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def text_train(windows: int = 512) -> ByteWindows:
    return ByteWindows("train", windows)


def text_validation(windows: int = 512) -> ByteWindows:
    return ByteWindows("validation", min(windows, 64))


def gpt2(width: int = 32, layers: int = 1, heads: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=256, n_positions=CONTEXT, n_embd=width, n_layer=layers, n_head=heads,
                        loss_type="ForCausalLM")
    return GPT2LMHeadModel(config)


class Digits(Dataset):
    """scikit-learn's 8x8 digits as (image (1, 8, 8) float32 in [0, 1], label int)."""

    def __init__(self, part: str):
        from sklearn.datasets import load_digits

        images, labels = load_digits(return_X_y=True)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        keep = order[:360] if part == "validation" else order[360:]
        self.images = torch.tensor(images, dtype=torch.float32)[keep].reshape(-1, 1, 8, 8) / 16.0
        self.labels = torch.tensor(labels)[keep]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def digits_train() -> Digits:
    return Digits("train")


def digits_validation() -> Digits:
    return Digits("validation")


def resnet(width: int = 8):
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(num_channels=1, embedding_size=width, hidden_sizes=[width, 2 * width], depths=[1, 1],
                          layer_type="basic", num_labels=10, downsample_in_first_stage=False)
    return ResNetForImageClassification(config)
