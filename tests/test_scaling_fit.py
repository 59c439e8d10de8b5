"""The critical-batch-size fit (stages/scaling_fit.py) and its standalone CLI, on tables whose answer is known."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stages.scaling.fit import FitError, fit_critical_batch_size, regime

ROOT = Path(__file__).resolve().parent.parent
SIZES = 2.0 ** np.arange(0, 13)  # 1 .. 4096


def mccandlish(batch_sizes, s_min=1000.0, b_crit=100.0):
    return s_min * (1 + b_crit / np.asarray(batch_sizes, dtype=float))


def noisy_table(b_crit=100.0, seeds=3, sigma=0.1, rng_seed=1):
    rng = np.random.default_rng(rng_seed)
    b = np.repeat(SIZES, seeds)
    s = mccandlish(b, b_crit=b_crit) * np.exp(rng.normal(0, sigma, len(b)))
    return b, s, np.tile(np.arange(seeds), len(SIZES))


def test_exact_curve_recovers_b_crit_s_min_e_min():
    fit = fit_critical_batch_size(SIZES, mccandlish(SIZES), bootstrap=50)
    assert fit.kind == "estimate"
    assert fit.critical_batch_size == pytest.approx(100, rel=1e-4)
    assert fit.s_min == pytest.approx(1000, rel=1e-4)
    assert fit.e_min == pytest.approx(100_000, rel=1e-4)
    assert fit.ci_low == pytest.approx(100, rel=1e-4) and fit.ci_high == pytest.approx(100, rel=1e-4)  # exact: no spread


@pytest.mark.parametrize("b_crit", [30.0, 100.0, 500.0])
def test_noisy_curve_recovers_b_crit_within_its_interval(b_crit):
    b, s, seeds = noisy_table(b_crit)
    fit = fit_critical_batch_size(b, s, seeds, bootstrap=200)
    assert fit.kind == "estimate"
    assert fit.critical_batch_size == pytest.approx(b_crit, rel=0.3)
    assert fit.ci_low < b_crit < fit.ci_high
    assert fit.ci_high / fit.ci_low > 1.05  # noise shows up as a real interval


def test_noisy_curve_without_seeds_uses_residual_bootstrap():
    rng = np.random.default_rng(3)
    s = mccandlish(SIZES) * np.exp(rng.normal(0, 0.05, len(SIZES)))
    fit = fit_critical_batch_size(SIZES, s, bootstrap=200)
    assert fit.kind == "estimate"
    assert fit.ci_low < 100 < fit.ci_high


def test_scaling_steps_leaves_b_crit_unchanged():
    b, s, seeds = noisy_table()
    base = fit_critical_batch_size(b, s, seeds, bootstrap=100)
    for k in (0.01, 3.0, 1000.0):
        scaled = fit_critical_batch_size(b, s * k, seeds, bootstrap=100)
        assert scaled.critical_batch_size == pytest.approx(base.critical_batch_size, rel=1e-6)
        assert scaled.ci_low == pytest.approx(base.ci_low, rel=1e-6)
        assert scaled.ci_high == pytest.approx(base.ci_high, rel=1e-6)
        assert scaled.s_min == pytest.approx(base.s_min * k, rel=1e-6)


def test_scaling_batch_sizes_multiplies_b_crit():
    b, s, seeds = noisy_table()
    base = fit_critical_batch_size(b, s, seeds, bootstrap=100)
    for k in (4, 3, 0.5):
        scaled = fit_critical_batch_size(b * k, s, seeds, bootstrap=100)
        assert scaled.critical_batch_size == pytest.approx(base.critical_batch_size * k, rel=1e-6)
        assert scaled.ci_high == pytest.approx(base.ci_high * k, rel=1e-6)
        assert scaled.e_min == pytest.approx(base.e_min * k, rel=1e-6)


def test_still_halving_at_the_largest_size_gives_a_lower_bound():
    b = SIZES[:7]  # 1 .. 64, B_crit far above
    fit = fit_critical_batch_size(b, mccandlish(b, b_crit=1e5), bootstrap=50)
    assert fit.kind == "lower_bound"
    assert fit.critical_batch_size <= 64 and fit.ci_high is None
    assert fit.s_min is None and fit.e_min == pytest.approx(1e8, rel=0.05)
    assert "at least" in fit.message


def test_flat_from_the_smallest_size_gives_an_upper_bound():
    b = SIZES[6:]  # 64 .. 4096, B_crit far below
    fit = fit_critical_batch_size(b, mccandlish(b, b_crit=0.5), bootstrap=50)
    assert fit.kind == "upper_bound"
    assert fit.critical_batch_size >= 64 and fit.ci_low is None
    assert fit.e_min is None and fit.s_min == pytest.approx(1000, rel=0.05)
    assert "at most" in fit.message


def test_noisy_flat_table_is_not_a_precise_estimate():
    rng = np.random.default_rng(0)
    b = np.repeat(SIZES[4:], 3)
    fit = fit_critical_batch_size(b, 500 * np.exp(rng.normal(0, 0.05, len(b))), np.tile([0, 1, 2], 9))
    assert fit.kind == "upper_bound"


def test_fewer_than_three_sizes_is_an_error():
    with pytest.raises(FitError, match="at least|>= 3"):
        fit_critical_batch_size([8, 16], [100, 50])
    with pytest.raises(FitError, match=">= 3"):  # missing steps (not reached) do not count
        fit_critical_batch_size([8, 16, 32, 64], [100, 50, math.nan, math.nan])


def test_rising_steps_are_an_error():
    with pytest.raises(FitError, match="rise"):
        fit_critical_batch_size(SIZES, 100 * SIZES ** 0.3)


def test_regimes_follow_the_fitted_curve():
    assert regime(8, 100) == "perfect_scaling"
    assert regime(25, 100) == "perfect_scaling"      # B_crit / 4: next doubling keeps 60%
    assert regime(100, 100) == "diminishing_returns"
    assert regime(400, 100) == "no_further_gain"    # 4 B_crit: next doubling keeps 90%
    assert regime(10**6, math.inf) == "perfect_scaling"
    assert regime(1, 0.0) == "no_further_gain"


def _fit_cli(table: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stages.scaling", "fit", str(table), "--bootstrap", "50"],
                          cwd=table.parent, env=env, capture_output=True, text=True, timeout=120)


def test_fit_cli_prints_one_json_object(tmp_path):
    b, s, seeds = noisy_table(b_crit=64)
    lines = ["batch_size,steps_to_target,seed"] + [f"{int(x)},{y:.1f},{z}" for x, y, z in zip(b, s, seeds)]
    lines.append("8192,,0")  # a size that never reached the target: ignored
    (tmp_path / "table.csv").write_text("\n".join(lines) + "\n")
    proc = _fit_cli(tmp_path / "table.csv")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {"critical_batch_size", "s_min", "e_min", "ci_low", "ci_high", "kind"} <= set(out)
    assert out["kind"] == "estimate"
    assert out["ci_low"] < 64 < out["ci_high"]


def test_fit_cli_reports_a_degenerate_table_clearly(tmp_path):
    (tmp_path / "two.csv").write_text("batch_size,steps_to_target\n16,100\n32,50\n")
    proc = _fit_cli(tmp_path / "two.csv")
    assert proc.returncode == 2 and proc.stdout == ""  # a StudyError: one line, exit 2
    assert "3 distinct batch sizes" in proc.stderr
    (tmp_path / "bad.csv").write_text("bs,steps\n16,100\n")
    proc = _fit_cli(tmp_path / "bad.csv")
    assert proc.returncode == 2 and "batch_size" in proc.stderr


def test_the_fit_example_in_the_docs_gives_the_documented_result():
    section = (ROOT / "docs/scaling.md").read_text()
    block = section.split("$ cat table.csv\n")[1].split("$ python")[0].strip().splitlines()
    assert block[0] == "batch_size,steps_to_target"
    b, s = zip(*(map(float, line.split(",")) for line in block[1:]))
    documented = json.loads(section.split("fit table.csv\n")[1].splitlines()[0].replace("...", "").replace(", ,", ","))
    fit = fit_critical_batch_size(b, s)
    assert fit.kind == documented["kind"]
    assert fit.critical_batch_size == pytest.approx(documented["critical_batch_size"], abs=0.01)
    assert fit.ci_low == pytest.approx(documented["ci_low"], abs=0.1)


# ---------------------------------------------------------------------------- interval calibration

def _noisy_study(rng, b_crit=100.0, s_min=40.0, seeds=3, sigma=0.2, resolution=0.05):
    """A study as the search leaves it: per size the best rate is known within a bracket ratio rho
    (the steps at the found rate exceed the optimum's by rho^U, U uniform), each seed scatters
    log-normally, and the target is read on an evaluation schedule (up to `resolution` late)."""
    sizes = 2.0 ** np.arange(2, 13)
    rho = rng.uniform(1.05, 1.6, len(sizes))
    miss = rho ** rng.uniform(0, 1, len(sizes))
    b, s, r = [], [], []
    for size, m, p in zip(sizes, miss, rho):
        for _ in range(seeds):
            truth = s_min * (1 + b_crit / size) * m * math.exp(sigma * rng.standard_normal())
            b.append(size)
            s.append(math.ceil(truth * rng.uniform(1, 1 + resolution)))
            r.append(p * (1 + resolution))
    return np.array(b), np.array(s), np.array(r), np.tile(np.arange(seeds), len(sizes))


def test_interval_with_rate_resolution_covers_the_true_b_crit_in_90_percent_of_studies():
    rng = np.random.default_rng(7)
    covered, widths = 0, []
    studies = 60
    for i in range(studies):
        b, s, r, seeds = _noisy_study(rng)
        fit = fit_critical_batch_size(b, s, seeds, lr_resolution=r, bootstrap=200, rng_seed=i)
        low, high = fit.ci_low or 0.0, fit.ci_high or math.inf
        covered += low <= 100 <= high
        widths.append(high / max(low, 1e-12))
    assert covered / studies >= 0.9
    assert np.median(widths) < 3  # covering by being uninformative would not count


def test_a_coarser_rate_resolution_widens_the_interval():
    rng = np.random.default_rng(3)
    b, s, _, seeds = _noisy_study(rng, sigma=0.05)
    fine = fit_critical_batch_size(b, s, seeds, lr_resolution=np.full(len(b), 1.05), bootstrap=200)
    coarse = fit_critical_batch_size(b, s, seeds, lr_resolution=np.full(len(b), 1.6), bootstrap=200)
    assert coarse.critical_batch_size == fine.critical_batch_size  # the point estimate is the data's
    assert coarse.ci_high / coarse.ci_low > 1.3 * fine.ci_high / fine.ci_low


def test_a_bound_says_to_raise_max_steps_when_the_sizes_that_would_pin_it_were_censored():
    """B_crit only bounded above (flat from the smallest size that reached): if smaller sizes were studied
    but did not reach the target within scaling.max_steps, studying smaller sizes would not help -- the
    advice is to raise max_steps, naming them; with nothing censored below, it is to study smaller sizes."""
    import pandas as pd

    from stages.scaling.confidence import confidence_text

    fit = {"critical_batch_size_kind": "upper_bound", "critical_batch_size": 1030.0, "ci_low": None, "ci_high": 1030.0,
           "critical_batch_size_message": "the fit puts B_crit at 172 but its interval reaches 0"}
    rows = [(4, "not_reached"), (16, "not_reached"), (64, "reached"), (256, "reached"), (1024, "reached")]
    table = pd.DataFrame({"batch_size": [b for b, _ in rows], "status": [s for _, s in rows],
                          "seeds_run": 2, "seed_log_spread": 0.2, "lr_resolution_ratio": 1.3})
    text = confidence_text(fit, table, 0.05)
    assert "To pin it: raise scaling.max_steps -- batch size(s) 4, 16 were studied" in text
    text = confidence_text(fit, table[table["status"] == "reached"], 0.05)
    assert "To pin it: study smaller batch sizes." in text
