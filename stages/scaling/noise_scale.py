"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 -- the cheap predictor of the critical batch size.

McCandlish et al. 2018, appendix A.1: the squared norm of a batch-B gradient estimate has
expectation E|G_B|^2 = |G|^2 + tr(Sigma) / B. Measured at two batch sizes B_small < B_big,

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

are unbiased. Each is noisy, so each gets its own moving average and B_simple is the ratio of the
two averages (the ratio of unbiased estimates is not itself unbiased; averaging first keeps the bias
small). Here one training step draws a batch of B_big examples, splits it into B_big / B_small
chunks, and takes |G_small|^2 as the mean squared norm of the chunk gradients and |G_big|^2 as the
squared norm of their mean -- then steps the optimizer with the big-batch gradient, so a short
training run gives the estimate along the trajectory that the scaling study measures.

Both sizes are ones the study itself ran (`choose_sizes`), so never beyond what the probe found
feasible (the study runs only those): a configured pair outside them is not measured, and the notes
say why. The run prints its progress with an ETA, as the trials do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from stages.core.config import OptimizerSettings
from stages.core.progress import Progress
from stages.core.optim import build_optimizer
from stages.core.train import build_model, evaluate
from stages.workloads.base import Batch, Workload, target_reached, to_device


def choose_sizes(configured: list[int] | None, studied: list[int], reached: list[int],
                 train_examples: int | None = None) -> tuple[tuple[int, int] | None, str]:
    """([small, big] or None, why): both within the sizes the study ran (`studied`, all feasible per the probe).

    Configured: used when big is at most the largest studied size (and the training set); else None with the
    reason. Default: small = the smallest size that reached the target, big = the largest studied size that is
    a multiple >= 2 of small and at most 16 x small (and the training set)."""
    if not studied:
        return None, "the study ran no batch size"
    top = max(studied)
    if configured:
        small, big = configured
        if big > top:
            return None, (f"scaling.noise_scale_batch_sizes {list(configured)}: {big} is above the largest batch size "
                          f"the study ran ({top}; it runs only sizes the probe found feasible), so it was not measured; "
                          f"choose sizes up to {top}")
        if train_examples is not None and big > train_examples:
            return None, (f"scaling.noise_scale_batch_sizes {list(configured)}: {big} exceeds the {train_examples} "
                          f"training examples; not measured")
        return (small, big), f"the configured sizes {small} and {big}"
    if not reached:
        return None, "no batch size reached the target"
    small = min(reached)
    limit = min(16 * small, top, train_examples if train_examples is not None else top)
    bigs = [b for b in studied if b % small == 0 and 2 * small <= b <= limit]
    if not bigs:
        return None, (f"no batch size the study ran is a multiple >= 2 of {small} (the smallest that reached the "
                      f"target) up to {limit}; set scaling.noise_scale_batch_sizes to sizes within {sorted(studied)}")
    return (small, max(bigs)), (f"the smallest size that reached the target ({small}) and the largest studied size up to "
                                f"16x it ({max(bigs)})")


def unbiased_estimates(g_small_sq: float, g_big_sq: float, b_small: float, b_big: float) -> tuple[float, float]:
    """(|G|^2, tr(Sigma)) from squared gradient norms measured at two batch sizes (McCandlish A.1)."""
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got {b_small} and {b_big}")
    g2 = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
    trace_sigma = (g_small_sq - g_big_sq) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace_sigma


class MovingAverage:
    """Exponential moving average with bias correction (so the first values are not pulled to 0)."""

    def __init__(self, decay: float):
        self.decay, self._value, self._weight = decay, 0.0, 0.0

    def update(self, x: float) -> float:
        self._value = self.decay * self._value + (1 - self.decay) * x
        self._weight = self.decay * self._weight + (1 - self.decay)
        return self.value

    @property
    def value(self) -> float:
        return self._value / self._weight if self._weight > 0 else math.nan


def _flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in model.parameters() if p.requires_grad])


def chunk_gradient_norms(model: torch.nn.Module, workload: Workload, batch: Batch, b_small: int) -> tuple[float, float, torch.Tensor]:
    """Split a device batch into chunks of b_small; return (mean |G_small|^2 over chunks,
    |G_big|^2 of the whole batch, the big-batch gradient as a flat vector)."""
    n = batch[0].shape[0]
    chunks = n // b_small
    if chunks < 2 or chunks * b_small != n:
        raise ValueError(f"batch of {n} must split into >= 2 chunks of exactly {b_small}")
    grads = []
    for k in range(chunks):
        part = tuple(t[k * b_small:(k + 1) * b_small] for t in batch)
        model.zero_grad(set_to_none=True)
        loss_sum, count = workload.loss(model, part)
        (loss_sum / count).backward()
        grads.append(_flat_grad(model).detach().double())
    stacked = torch.stack(grads)                       # (chunks, n_params)
    g_small_sq = float((stacked ** 2).sum(1).mean())
    g_big = stacked.mean(0)
    return g_small_sq, float(g_big @ g_big), g_big


def _set_grad(model: torch.nn.Module, flat: torch.Tensor) -> None:
    offset = 0
    for p in model.parameters():
        if not p.requires_grad:
            continue
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype).clone()
        offset += n


@dataclass
class NoiseScaleResult:
    gradient_noise_scale: float | None  # B_simple at the end of the run (None if |G|^2 average <= 0)
    b_small: int
    b_big: int
    learning_rate: float
    steps_run: int
    reason: str
    rows: list[dict] = field(default_factory=list)  # per step: step, g2, trace_sigma, their averages, b_simple


def measure_noise_scale(workload: Workload, optimizer_settings: OptimizerSettings, learning_rate: float,
                        b_small: int, b_big: int, seed: int, device: torch.device, max_steps: int,
                        decay: float = 0.9, stage: str = "scaling") -> NoiseScaleResult:
    """Train at b_big with `learning_rate` until the target (or max_steps), estimating B_simple
    at every step from the chunk gradients; returns the estimate at the last step. Progress (steps, the
    estimate so far, an ETA to max_steps: an upper bound, the run stops at the target) goes to stderr."""
    if b_big % b_small or b_big // b_small < 2:
        raise ValueError(f"b_big ({b_big}) must be a multiple >= 2 of b_small ({b_small})")
    model = build_model(workload, seed, device)
    optimizer = build_optimizer(model.parameters(), optimizer_settings, learning_rate)
    data = workload.batches("train", b_big, seed)
    avg_g2, avg_trace = MovingAverage(decay), MovingAverage(decay)
    rows, reason = [], f"ran {max_steps} steps without reaching the target"
    step = 0
    progress = Progress(stage, f"gradient noise scale at batch sizes {b_small} and {b_big} (lr {learning_rate:.3g}): step",
                        max_steps)
    for step in range(1, max_steps + 1):
        batch = to_device(next(data), device)
        g_small_sq, g_big_sq, g_big = chunk_gradient_norms(model, workload, batch, b_small)
        g2, trace = unbiased_estimates(g_small_sq, g_big_sq, b_small, b_big)
        m_g2, m_trace = avg_g2.update(g2), avg_trace.update(trace)
        rows.append({"step": step, "g2": g2, "trace_sigma": trace, "g2_average": m_g2,
                     "trace_sigma_average": m_trace,
                     "b_simple": m_trace / m_g2 if m_g2 > 0 else math.nan})
        if not (math.isfinite(g2) and math.isfinite(trace)):
            reason = f"non-finite gradient at step {step}"
            break
        _set_grad(model, g_big)
        optimizer.step()
        value = evaluate(model, workload, device)[workload.target_metric]
        if target_reached(value, workload.target_value, workload.target_direction):
            reason = f"target reached at step {step}"
            progress.finish(step, f"{workload.target_metric} {value:.4g}: target reached, B_simple {rows[-1]['b_simple']:.3g}")
            break
        progress.update(step, f"{workload.target_metric} {value:.4g}, B_simple so far {rows[-1]['b_simple']:.3g} "
                              f"(the ETA is to max_steps: the run stops at the target)")
    last = rows[-1] if rows else {}
    estimate = last.get("b_simple")
    if estimate is None or not math.isfinite(estimate):
        return NoiseScaleResult(None, b_small, b_big, learning_rate, step,
                                reason + "; the |G|^2 average is not positive, so B_simple is undefined", rows)
    return NoiseScaleResult(float(estimate), b_small, b_big, learning_rate, step, reason, rows)


def describe(result: NoiseScaleResult, why: str) -> str:
    """notes.md's section on the run, in words: what was measured, at which sizes and why, and how it ended."""
    value = ("undefined (the |G|^2 average is not positive)" if result.gradient_noise_scale is None
             else f"about {result.gradient_noise_scale:.3g} examples")
    return (f"The gradient noise scale B_simple (McCandlish et al. 2018, the cheap predictor of the critical batch "
            f"size) is {value}: estimated along one training run at batch size {result.b_big} split into chunks of "
            f"{result.b_small} ({why}), learning rate {result.learning_rate:.3g}, over {result.steps_run} steps "
            f"(the run ended: {result.reason}). Per-step estimates: noise_scale.csv.")
