"""Paired success-rate difference (Newcombe's method 10) and the baseline comparison numbers."""

import numpy as np
import pytest

from policytrim.eval.compare import against_baseline
from policytrim.eval.metrics import wilson_interval
from policytrim.eval.paired import paired_difference


def test_identical_outcomes_give_zero_difference_inside_a_tight_interval():
    rng = np.random.default_rng(0)
    s = rng.random(100) < 0.8
    d = paired_difference(s, s)
    assert d["diff"] == 0 and d["lo"] < 0 < d["hi"]
    assert d["both"] + d["neither"] == 100
    # pairing makes the interval tighter than treating the two runs as independent
    lo, hi = wilson_interval(int(s.sum()), 100)
    assert d["hi"] - d["lo"] < 2 * (hi - lo)


def test_counts_direction_and_bounds():
    base = [1, 1, 1, 0, 0, 1, 1, 1, 1, 1]
    new = [1, 1, 0, 0, 1, 1, 1, 0, 1, 1]
    d = paired_difference(base, new)
    assert (d["both"], d["only_new"], d["only_base"], d["neither"]) == (6, 1, 2, 1)
    assert d["diff"] == pytest.approx(-0.1)
    assert -1 <= d["lo"] < d["diff"] < d["hi"] <= 1
    swapped = paired_difference(new, base)
    assert swapped["diff"] == pytest.approx(0.1)
    assert (swapped["lo"], swapped["hi"]) == pytest.approx((-d["hi"], -d["lo"]))
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1, 0], [1])


def test_interval_covers_the_true_difference_about_95_percent():
    rng = np.random.default_rng(1)
    n, trials, covered = 100, 2000, 0
    for _ in range(trials):
        hard = rng.random(n) < 0.3  # shared difficulty makes the outcomes correlated
        base = np.where(hard, rng.random(n) < 0.5, rng.random(n) < 0.95)
        new = np.where(hard, rng.random(n) < 0.45, rng.random(n) < 0.93)
        true = (0.3 * 0.45 + 0.7 * 0.93) - (0.3 * 0.5 + 0.7 * 0.95)
        d = paired_difference(base, new)
        covered += d["lo"] <= true <= d["hi"]
    assert 0.93 <= covered / trials <= 0.98


def test_against_baseline_numbers():
    base = {"success_rate": 0.9, "mean_steps": 120.0, "window": 5, "calls_per_success": 24.0}
    new = {"success_rate": 0.9, "mean_steps": 60.0, "window": 15, "calls_per_success": 4.0}
    base_out = {"task": ["t"] * 10, "index": list(range(10)), "success": [True] * 9 + [False], "calls": [24] * 9 + [40]}
    new_out = {"task": ["t"] * 10, "index": list(range(10)), "success": [True] * 9 + [False], "calls": [4] * 9 + [14]}
    out = against_baseline(base, new, base_out, new_out)
    assert out["calls_speedup"] == pytest.approx(6.0)  # measured calls of successful episodes only
    assert out["speedup_paper"] == pytest.approx((120 / 5) / (60 / 15))
    assert out["steps_reduction"] == pytest.approx(0.5)
    assert out["success_rate_drop"] == pytest.approx(0.0)
    lo, hi = out["success_rate_drop_ci95"]
    assert lo < 0 < hi and out["paired_episodes"] == 10
