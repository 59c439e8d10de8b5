"""char_lm: a small causal transformer predicting the next character of real English text.

The text is the dataset descriptions scikit-learn ships (`sklearn/datasets/descr/*.rst`, ~43 KB,
no download; scikit-learn is already a dependency for digits_mlp). The vocabulary is its characters;
the last `validation_fraction` of the text (by position, so no validation window overlaps a training
one) is held out. The target is the validation loss, mean cross-entropy per character in nats,
reached "below" the value; chance is a uniform guess over the vocabulary, log(vocab size).

Attention memory grows with seq_len^2 per head where the attention kernel materialises the scores,
and activations with seq_len x width: `seq_len` is the knob that makes the probe see it.

    dvc exp run $(python -m stages.pipeline.overrides profiles/char_lm/params.yaml)
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from stages.workloads.base import Batch, Workload

EVAL_CHUNK = 256  # validation windows per forward pass: bounds evaluation memory


def load_text() -> str:
    """The concatenated .rst descriptions, in sorted file order (the same text on every machine
    with the same scikit-learn version)."""
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "descr"
    files = sorted(folder.glob("*.rst"))
    if not files:
        raise ValueError(f"no .rst descriptions found in {folder}; char_lm needs scikit-learn's dataset descriptions")
    return "\n".join(f.read_text(encoding="utf-8") for f in files)


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a 4x MLP, each with a residual."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape                                     # (B, T, C)
        q, k, v = self.qkv(self.norm1(x)).split(c, dim=2)     # 3 x (B, T, C)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))  # (B, H, T, C/H)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, C/H)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    def __init__(self, vocab: int, seq_len: int, width: int, depth: int, heads: int):
        super().__init__()
        self.token = nn.Embedding(vocab, width)
        self.position = nn.Embedding(seq_len, width)
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.token(idx) + self.position(pos)  # (B, T, C)
        return self.head(self.norm(self.blocks(x)))  # (B, T, vocab)


class CharLM(Workload):
    name = "char_lm"
    target_metric = "loss"    # validation cross-entropy per character, nats
    target_direction = "below"
    example_unit, token_unit = "window", "character"  # one example: a window of seq_len predicted characters
    metric_units = {"loss": "nats"}

    def __init__(self, seq_len: int = 64, width: int = 64, depth: int = 2, heads: int = 4,
                 target: float = 2.5, validation_fraction: float = 0.1):
        for key, v in {"seq_len": seq_len, "width": width, "depth": depth, "heads": heads}.items():
            if int(v) < 1:
                raise ValueError(f"{key} must be a positive integer, got {v}")
        if width % heads:
            raise ValueError(f"width ({width}) must be a multiple of heads ({heads})")
        if not 0 < validation_fraction < 0.5:
            raise ValueError(f"validation_fraction must be in (0, 0.5), got {validation_fraction}")
        self.seq_len, self.width, self.depth, self.heads = int(seq_len), int(width), int(depth), int(heads)
        self.validation_fraction = float(validation_fraction)
        text = load_text()
        chars = sorted(set(text))
        self.vocab_size = len(chars)
        self.chance_score = math.log(self.vocab_size)  # uniform prediction: cross-entropy log V nats
        self.tokens_per_example = self.seq_len
        self.chance_explanation = (f"a uniform guess over the {self.vocab_size} characters of the vocabulary: "
                                   f"log {self.vocab_size} nats per character")
        if not 0 < target < self.chance_score:
            raise ValueError(f"target (validation loss, nats per character) must be in (0, {self.chance_score:.3f}), "
                             f"below the chance loss log({self.vocab_size}); got {target}")
        self.target_value = float(target)
        lookup = {ch: i for i, ch in enumerate(chars)}
        data = torch.tensor([lookup[ch] for ch in text], dtype=torch.long)  # (N,)
        n_val = int(round(validation_fraction * data.numel()))
        self.train_data, self.val_data = data[:-n_val], data[-n_val:]
        if self.val_data.numel() < self.seq_len + 1 or self.train_data.numel() < self.seq_len + 1:
            raise ValueError(f"seq_len {seq_len} is too long for the {self.val_data.numel()} validation characters")
        # One example = one window of seq_len + 1 characters; every start position is a distinct window.
        self.num_train_examples = int(self.train_data.numel() - self.seq_len)
        starts = torch.arange(0, self.val_data.numel() - self.seq_len, self.seq_len)  # non-overlapping windows
        self.x_val, self.y_val = self._windows(self.val_data, starts)

    def _windows(self, data: torch.Tensor, starts: torch.Tensor) -> Batch:
        idx = starts[:, None] + torch.arange(self.seq_len + 1)  # (B, T + 1)
        chunk = data[idx]
        return chunk[:, :-1], chunk[:, 1:]  # inputs (B, T), next characters (B, T)

    def hyperparameters(self) -> dict:
        return {"seq_len": self.seq_len, "width": self.width, "depth": self.depth, "heads": self.heads,
                "target": self.target_value, "validation_fraction": self.validation_fraction,
                "vocab_size": self.vocab_size}

    def init_model(self) -> nn.Module:
        return CharTransformer(self.vocab_size, self.seq_len, self.width, self.depth, self.heads)

    def batches(self, split: str, batch_size: int, seed: int) -> Iterator[Batch]:
        if split != "train":
            raise ValueError(f"char_lm streams only the 'train' split, got {split!r}")
        if batch_size > self.num_train_examples:
            raise ValueError(f"batch size {batch_size} exceeds the {self.num_train_examples} training windows")
        gen = torch.Generator().manual_seed(seed)
        while True:  # windows at random start positions (distinct within a batch)
            starts = torch.randperm(self.num_train_examples, generator=gen)[:batch_size]
            yield self._windows(self.train_data, starts)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        x, y = batch
        logits = model(x)  # (B, T, vocab)
        # per example: mean cross-entropy over its T characters; summed over examples
        total = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / y.shape[1]
        return total, y.shape[0]

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        cache = self.__dict__.setdefault("_val_on", {})
        if str(device) not in cache:
            cache[str(device)] = (self.x_val.to(device), self.y_val.to(device))
        x, y = cache[str(device)]
        loss_sum, correct = 0.0, 0.0
        for xc, yc in zip(x.split(EVAL_CHUNK), y.split(EVAL_CHUNK)):
            logits = model(xc)
            loss_sum += float(F.cross_entropy(logits.flatten(0, 1), yc.flatten(), reduction="sum"))
            correct += float((logits.argmax(-1) == yc).sum())
        return {"loss": loss_sum / y.numel(), "accuracy": correct / y.numel()}

    def fake_batch(self, batch_size: int) -> Batch:
        return (torch.randint(0, self.vocab_size, (batch_size, self.seq_len)),
                torch.randint(0, self.vocab_size, (batch_size, self.seq_len)))
