"""The small intervals of evaluate (speed repeats, the sharpness ratio, the probe accuracy) against
scipy and against their coverage of a known truth."""

import numpy as np
import pytest
import torch
from scipy import stats

from diffvae.evaluate import mean_interval, ratio_of_means_interval
from diffvae.metrics.bootstrap import wilson_interval


def test_mean_interval_is_the_student_t_interval():
    values = [12.1, 11.7, 12.9, 12.4, 11.9]
    expected = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 5, scale=stats.sem(values))
    assert mean_interval(values) == pytest.approx(list(expected), rel=1e-12)
    assert mean_interval([3.0]) is None


@pytest.mark.parametrize("k, n", [(50, 100), (3, 40), (0, 25), (25, 25)])
def test_wilson_interval_matches_scipy(k, n):
    expected = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert wilson_interval(k / n, n) == pytest.approx((expected.low, expected.high), abs=1e-6)


def test_wilson_interval_stays_inside_zero_one_and_contains_the_proportion():
    # at p̂ = 1 the formula's upper end is 1 + 2e-16 for some n (n = 50 among them): a plotted error bar went negative
    for n in range(1, 400):
        for k in (0, 1, n - 1, n):
            low, high = wilson_interval(k / n, n)
            assert 0.0 <= low <= k / n <= high <= 1.0, (k, n, low, high)


def test_ratio_of_means_interval_covers_the_true_ratio():
    # a ~ Gamma(2, scale 1.5) (mean 3), b ~ Gamma(4, scale 0.5) (mean 2): the true ratio is 1.5
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(400):
        a, b = torch.from_numpy(rng.gamma(2.0, 1.5, 200)), torch.from_numpy(rng.gamma(4.0, 0.5, 300))
        low, high = ratio_of_means_interval(a, b)
        hits += low <= 1.5 <= high
    assert hits >= 0.92 * 400, hits
