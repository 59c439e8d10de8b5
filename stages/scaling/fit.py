"""The critical batch size from a table of steps to target: S(B) = S_min * (1 + B_crit / B).

McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training"): with the learning rate
retuned per batch size, steps S and examples E = B * S to a fixed goal trade off as
(S / S_min - 1) (E / E_min - 1) = 1, i.e. S(B) = S_min + E_min / B and B_crit = E_min / S_min
(at B_crit the steps are twice S_min). Pure functions, no files: `python -m stages.scaling fit
TABLE.csv` and the `scaling` stage both call `fit_critical_batch_size`.

How the fit works, and why:
- Least squares on log S (steps span orders of magnitude; relative errors matter), with S_min and
  E_min >= 0. For a fixed B_crit the best log S_min is a mean, so the fit is a 1-D search over
  log B_crit with both limits (B_crit -> 0: flat; B_crit -> inf: S proportional to 1/B) included.
- Batch sizes and steps are normalised by their geometric means first, so scaling every step
  count by k leaves B_crit unchanged and scaling every batch size by k multiplies it by k.
- Confidence interval: bootstrap (seeds resampled within each batch size when every size has
  at least two; residuals resampled otherwise), percentile interval. Given each row's learning-rate
  resolution (the factor between the best rate and its farthest tried neighbour), a parametric
  bootstrap instead: per size, the mean log steps redrawn with the seed spread pooled over sizes
  (its own uncertainty drawn too, chi-square), and lowered by a log-uniform factor in
  [1 / resolution, 1] -- the true optimum lies somewhere in the bracket and may need fewer steps,
  by up to that factor when steps fall as 1 / rate (tests/test_scaling_fit.py checks coverage).
- B_crit is only an `estimate` when the data pin it: the fit lies inside the studied range and
  the interval is finite. Otherwise `lower_bound` (steps still halving at the largest size: B_crit
  is at least the value), `upper_bound` (flat from the smallest size: at most the value), or a
  `FitError` (fewer than three sizes, steps rising with the batch size, data too noisy).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import numpy as np

Kind = Literal["estimate", "lower_bound", "upper_bound"]
ScalingRegime = Literal["perfect_scaling", "diminishing_returns", "no_further_gain"]

MIN_BATCH_SIZES = 3
RISING_SLOPE = 0.1        # log2 steps per log2 batch size above which the table counts as rising
PERFECT_RATIO = 0.6       # the next doubling keeps <= 60% of the steps: perfect scaling (B <= B_crit / 4)
NO_GAIN_RATIO = 0.9       # the next doubling keeps >= 90% of the steps: no further gain (B >= 4 B_crit)
_SEARCH_DECADES = 4.0     # B_crit searched within [B_lo, B_hi] widened by this many decades each side


class FitError(ValueError):
    """The table cannot say anything about B_crit; the message says why and what would help."""


@dataclass(frozen=True)
class ScalingFit:
    critical_batch_size: float | None   # B_crit (estimate) or the bound's value; examples per step
    kind: Kind
    ci_low: float | None                # bootstrap percentile interval for B_crit (None = unbounded)
    ci_high: float | None
    s_min: float | None                 # steps at infinite batch size (None when not pinned)
    e_min: float | None                 # examples at batch size 0 (None when not pinned)
    fitted_critical_batch_size: float   # the raw fit (inf / 0 at the limits): for plots, not reports
    fitted_s_min: float
    fitted_e_min: float
    batch_sizes: list[int]              # distinct batch sizes used
    points: int                         # rows used
    bootstrap: int
    confidence: float
    message: str

    def as_dict(self) -> dict:
        return asdict(self)

    def steps(self, batch_size: float | np.ndarray) -> np.ndarray:
        """The fitted curve S(B) = S_min + E_min / B."""
        return self.fitted_s_min + self.fitted_e_min / np.asarray(batch_size, dtype=float)


# ---------------------------------------------------------------------------- the core fit

def _fit_normalised(x: np.ndarray, log_y: np.ndarray, c_lo: float, c_hi: float) -> tuple[float, float, float]:
    """Fit log y = log a + log(1 + c x) (x = 1/B, normalised). Returns (a, b = a c, c) with c in
    {0, inf} when a limit fits at least as well as any interior value."""
    def sse_and_a(log_c: float) -> tuple[float, float]:
        r = log_y - np.log1p(math.exp(log_c) * x)
        log_a = r.mean()
        return float(((r - log_a) ** 2).sum()), log_a

    grid = np.linspace(math.log(c_lo), math.log(c_hi), 161)
    r_all = log_y[None, :] - np.log1p(np.exp(grid)[:, None] * x[None, :])    # (grid, rows), all at once
    sses = ((r_all - r_all.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    i = int(np.argmin(sses))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best_log_c, best_sse = grid[i], sses[i]
    if hi > lo:
        from scipy.optimize import minimize_scalar  # here: 0.3 s of import that the trials jobs never need

        res = minimize_scalar(lambda g: sse_and_a(g)[0], bounds=(lo, hi), method="bounded",
                              options={"xatol": 1e-10})
        if res.fun <= best_sse:
            best_log_c, best_sse = float(res.x), float(res.fun)
    # The two limits: flat (c -> 0) and pure perfect scaling (c -> inf, y = b x).
    flat_a = log_y.mean()
    flat_sse = float(((log_y - flat_a) ** 2).sum())
    r = log_y - np.log(x)
    perfect_b = r.mean()
    perfect_sse = float(((r - perfect_b) ** 2).sum())
    tol = 1e-9 * max(1.0, float((log_y ** 2).sum()))
    if flat_sse <= best_sse + tol and best_log_c <= grid[0] + 1e-9:
        return math.exp(flat_a), 0.0, 0.0
    if perfect_sse <= best_sse + tol and best_log_c >= grid[-1] - 1e-9:
        return 0.0, math.exp(perfect_b), math.inf
    c = math.exp(best_log_c)
    a = math.exp(sse_and_a(best_log_c)[1])
    return a, a * c, c


def _fit_raw(batch_sizes: np.ndarray, steps: np.ndarray) -> tuple[float, float, float]:
    """(S_min, E_min, B_crit) in original units; scale-equivariant by construction."""
    b_scale = math.exp(np.log(batch_sizes).mean())
    s_scale = math.exp(np.log(steps).mean())
    x = b_scale / batch_sizes
    lo, hi = x.min(), x.max()
    c_lo, c_hi = (1 / hi) * 10 ** -_SEARCH_DECADES, (1 / lo) * 10 ** _SEARCH_DECADES
    a, b, c = _fit_normalised(x, np.log(steps / s_scale), c_lo, c_hi)
    return a * s_scale, b * s_scale * b_scale, c * b_scale


def _quantiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval that keeps 0 and inf as they are (no inf - inf interpolation)."""
    v = np.sort(values)
    n = len(v)
    lo_i = int(math.floor((1 - confidence) / 2 * (n - 1)))
    hi_i = int(math.ceil((1 + confidence) / 2 * (n - 1)))
    return float(v[lo_i]), float(v[hi_i])


def rising_slope(batch_sizes: np.ndarray, steps: np.ndarray) -> float:
    """Least-squares slope of log2 steps against log2 batch size (-1 = perfect scaling, 0 = flat)."""
    lx, ly = np.log2(batch_sizes), np.log2(steps)
    lx = lx - lx.mean()
    return float((lx * (ly - ly.mean())).sum() / (lx ** 2).sum())


def _draws_with_resolution(b: np.ndarray, s: np.ndarray, resolution: np.ndarray, distinct: list[float],
                           fitted: np.ndarray, bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """B_crit over parametric resamples: per size mean log steps + pooled seed noise / sqrt(n), lowered
    by a log-uniform factor in [1 / resolution, 1] (see the module docstring)."""
    groups = [np.flatnonzero(b == x) for x in distinct]
    logs = np.log(s)
    means = np.array([logs[g].mean() for g in groups])
    counts = np.array([len(g) for g in groups], dtype=float)
    res = np.array([float(np.max(resolution[g])) for g in groups])
    df = int(sum(len(g) - 1 for g in groups))
    if df >= 1:
        spread = math.sqrt(sum(((logs[g] - logs[g].mean()) ** 2).sum() for g in groups) / df)
    else:  # one seed per size: the scatter about the fit stands in for the seed spread
        df = max(len(groups) - 2, 1)
        spread = math.sqrt(float(((logs - np.log(fitted)) ** 2).sum()) / df)
    sizes = np.array(distinct)
    draws = np.empty(bootstrap)
    for k in range(bootstrap):
        sigma = spread * math.sqrt(df / rng.chisquare(df))
        y = means + sigma * rng.standard_normal(len(groups)) / np.sqrt(counts)
        y -= rng.uniform(0.0, 1.0, len(groups)) * np.log(res)
        draws[k] = _fit_raw(sizes, np.exp(y))[2]
    return draws


def fit_critical_batch_size(batch_sizes: Sequence[float], steps_to_target: Sequence[float],
                            seeds: Sequence | None = None, *, lr_resolution: Sequence[float] | None = None,
                            bootstrap: int = 200, confidence: float = 0.95, rng_seed: int = 0) -> ScalingFit:
    """Fit S(B) = S_min (1 + B_crit / B) to rows (batch size, steps to target[, seed]).

    `lr_resolution`: per row, the factor within which the best learning rate is known (>= 1; NaN or
    inf count as 1); with it the interval covers both the seed spread and the rate's resolution.
    Rows whose steps are missing (target not reached) are ignored. Raises FitError when the
    table cannot bound B_crit at all."""
    b = np.asarray(batch_sizes, dtype=float)
    s = np.asarray(steps_to_target, dtype=float)
    if b.shape != s.shape or b.ndim != 1:
        raise FitError(f"batch_size and steps_to_target must be columns of equal length, got {b.shape} and {s.shape}")
    res = None if lr_resolution is None else np.asarray(lr_resolution, dtype=float)
    if res is not None and res.shape != b.shape:
        raise FitError(f"lr_resolution must have one value per row, got {res.shape} for {b.shape} rows")
    keep = np.isfinite(s) & np.isfinite(b)
    if np.any(b[keep] <= 0) or np.any(s[keep] <= 0):
        raise FitError("batch sizes and steps to target must be positive")
    b, s = b[keep], s[keep]
    if res is not None:
        res = res[keep]
        res = np.where(np.isfinite(res) & (res >= 1), res, 1.0)
    distinct = sorted(set(b.tolist()))
    if len(distinct) < MIN_BATCH_SIZES:
        raise FitError(f"need steps to target at >= {MIN_BATCH_SIZES} distinct batch sizes to fit B_crit, got "
                       f"{len(distinct)} ({', '.join(f'{x:g}' for x in distinct) or 'none'}); study more batch sizes")
    slope = rising_slope(b, s)
    if slope > RISING_SLOPE:
        raise FitError(f"steps to target rise with the batch size (log-log slope {slope:+.2f}; the model allows "
                       f"only falling or flat): B_crit is undefined. Usually the learning rate was not retuned per "
                       f"size (widen scaling.lr_min/lr_max) or the target is met by chance (add seeds)")
    s_min, e_min, b_crit = _fit_raw(b, s)

    # Bootstrap: resample seeds within each batch size, or residuals of the fit in log space.
    rng = np.random.default_rng(rng_seed)
    groups = [np.flatnonzero(b == x) for x in distinct]
    stratified = all(len(g) >= 2 for g in groups)
    fitted = s_min + e_min / b
    residuals = np.log(s) - np.log(fitted)
    draws = np.empty(bootstrap)
    for k in range(bootstrap if res is None else 0):
        if stratified:
            idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
            bb, ss = b[idx], s[idx]
        else:
            bb, ss = b, fitted * np.exp(rng.choice(residuals, size=len(residuals), replace=True))
        draws[k] = _fit_raw(bb, ss)[2]
    if res is not None:
        draws = _draws_with_resolution(b, s, res, distinct, fitted, bootstrap, rng)
    ci_low, ci_high = _quantiles(draws, confidence)

    lo, hi = distinct[0], distinct[-1]
    inside = lo <= b_crit <= hi
    if inside and ci_low > 0 and math.isfinite(ci_high):
        kind: Kind = "estimate"
        value, out_low, out_high = b_crit, ci_low, ci_high
        out_s, out_e = s_min, e_min
        message = f"B_crit = {b_crit:.3g} (95% CI {ci_low:.3g} .. {ci_high:.3g}) within the studied range {lo:g} .. {hi:g}"
    elif (b_crit > hi or inside) and ci_low > 0:
        kind = "lower_bound"
        value = min(hi, ci_low)
        out_low, out_high, out_s, out_e = value, None, None, e_min
        why = (f"steps still fall nearly in proportion at the largest batch size {hi:g}" if b_crit > hi else
               f"the fit puts B_crit at {b_crit:.3g} but its interval has no upper end")
        message = (f"{why}: B_crit is at least {value:.3g}; study larger batch sizes (or add seeds) to pin it "
                   f"(S_min is not determined)")
    elif (b_crit < lo or inside) and math.isfinite(ci_high):
        kind = "upper_bound"
        value = max(lo, ci_high)
        out_low, out_high, out_s, out_e = None, value, s_min, None
        why = (f"steps are already nearly flat from the smallest batch size {lo:g}" if b_crit < lo else
               f"the fit puts B_crit at {b_crit:.3g} but its interval reaches 0")
        message = (f"{why}: B_crit is at most {value:.3g}; study smaller batch sizes (or add seeds) to pin it "
                   f"(E_min is not determined)")
    else:
        raise FitError(f"the data are too noisy to bound B_crit (fit {b_crit:.3g}, bootstrap interval "
                       f"{ci_low:.3g} .. {ci_high:.3g}); add seeds or batch sizes")
    return ScalingFit(float(value), kind, out_low, out_high, out_s, out_e, float(b_crit), float(s_min),
                      float(e_min), [int(x) if float(x).is_integer() else x for x in distinct], int(len(b)),
                      bootstrap, confidence, message)


# ---------------------------------------------------------------------------- regimes

def regime(batch_size: float, fitted_critical_batch_size: float) -> ScalingRegime:
    """Where a batch size sits on the fitted curve, judged by what the next doubling would save:
    <= 60% of the steps kept -> perfect scaling (B <= B_crit / 4); >= 90% kept -> no further gain
    (B >= 4 B_crit); in between, diminishing returns."""
    c = fitted_critical_batch_size
    if math.isinf(c):
        return "perfect_scaling"
    ratio = (1 + c / (2 * batch_size)) / (1 + c / batch_size)  # S(2B) / S(B)
    if ratio <= PERFECT_RATIO:
        return "perfect_scaling"
    if ratio >= NO_GAIN_RATIO:
        return "no_further_gain"
    return "diminishing_returns"
