"""The model's own units: what one example is, how many tokens it holds, the unit of a metric.

A workload may declare them (stages/workloads/base.py: `example_unit`, `tokens_per_example`,
`token_unit`, `metric_units`, `chance_explanation`); the stages that word the recommendation (select,
baseline) then state their figures in those units too -- 219 sequences/s = 14,016 bytes/s; 3,520
sequences = 225,280 bytes = 2.45 epochs of the training set; a loss of 2.7 nats per byte = 3.9 bits
per byte. Without them everything reads in examples, as before. `record()` is what a stage writes
into its diagnostics.json, so the report (which reads files only) words its lines the same way.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from stages.core.log import sig

NATS = "nats"  # a metric in nats per token (per example without tokens) also reads in bits: / ln 2


def plural(word: str) -> str:
    """'image' -> 'images', 'batch' -> 'batches', 'sequence' -> 'sequences'."""
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    return word + "s"


def number(x: float) -> str:
    """A count exactly with thousands separators (225,280), anything else to 3 significant figures."""
    if float(x).is_integer():
        return f"{int(x):,}"
    return sig(x) if abs(x) < 1e4 else f"{round(x):,}"


def count(n: float, unit: str) -> str:
    return f"{number(n)} {unit if n == 1 else plural(unit)}"


@dataclass(frozen=True)
class Units:
    example: str = "example"                 # one example, singular
    tokens_per_example: int | None = None    # None: the workload has no tokens
    token: str = "token"
    metric_units: dict[str, str] = field(default_factory=dict)
    train_examples: int | None = None        # the training set's size (None: an endless stream)
    chance_explanation: str = ""

    @classmethod
    def of(cls, workload: Any) -> "Units":
        """The units a workload declares (the defaults where it declares none)."""
        return cls(str(getattr(workload, "example_unit", "example") or "example"),
                   getattr(workload, "tokens_per_example", None),
                   str(getattr(workload, "token_unit", "token") or "token"),
                   dict(getattr(workload, "metric_units", {}) or {}),
                   getattr(workload, "num_train_examples", None),
                   str(getattr(workload, "chance_explanation", "") or ""))

    def record(self) -> dict:
        """For a diagnostics.json: labels and numbers only."""
        return asdict(self)

    @classmethod
    def from_record(cls, data: Any) -> "Units":
        """Back from `record()`; the defaults for anything missing or malformed (a file from before units)."""
        if not isinstance(data, dict):
            return cls()
        known = {k: data[k] for k in asdict(cls()) if k in data}
        try:
            units = cls(**known)
            tokens = units.tokens_per_example
            if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
                return cls()
            return units
        except TypeError:
            return cls()

    @property
    def declared(self) -> bool:
        """Anything beyond plain examples to say?"""
        return self.example != "example" or self.tokens_per_example is not None or bool(self.metric_units)

    # -- amounts

    def examples(self, n: float) -> str:
        """'3,520 sequences'."""
        return count(n, self.example)

    def tokens(self, n_examples: float) -> str | None:
        """'225,280 bytes', or None without tokens."""
        return None if self.tokens_per_example is None else count(n_examples * self.tokens_per_example, self.token)

    def epochs(self, n_examples: float) -> float | None:
        return None if not self.train_examples else n_examples / self.train_examples

    def amount(self, n_examples: float) -> str:
        """'3,520 sequences (225,280 bytes; 2.45 epochs of the 1,437-sequence training set)'."""
        extra = [t for t in (self.tokens(n_examples),) if t]
        epochs = self.epochs(n_examples)
        if epochs is not None:
            extra.append(f"{sig(epochs)} epoch{'' if epochs == 1 else 's'} of the {number(self.train_examples)}-"
                         f"{self.example} training set")
        return self.examples(n_examples) + (f" ({'; '.join(extra)})" if extra else "")

    def rate(self, examples_per_s: float) -> str:
        """'219 sequences/s (14,016 bytes/s)'."""
        text = f"{number(examples_per_s)} {plural(self.example)}/s"
        if self.tokens_per_example is not None:
            text += f" ({number(examples_per_s * self.tokens_per_example)} {plural(self.token)}/s)"
        return text

    def batch(self, batch_size: int) -> str:
        """'32 sequences (2,048 bytes)', or '32 examples'."""
        tokens = self.tokens(batch_size)
        return self.examples(batch_size) + (f" ({tokens})" if tokens else "")

    # -- metrics

    def per(self) -> str:
        """What a per-item metric is averaged over: the token where there are tokens, else the example."""
        return self.token if self.tokens_per_example is not None else self.example

    def metric(self, name: str, value: float) -> str:
        """'2.7 nats per byte (3.9 bits per byte)'; '0.91' for a metric without a unit."""
        unit = self.metric_units.get(name)
        if unit is None or value is None or not math.isfinite(value):
            return sig(value)
        if unit == NATS:
            return f"{sig(value)} nats per {self.per()} ({sig(value / math.log(2))} bits per {self.per()})"
        return f"{sig(value)} {unit}"
