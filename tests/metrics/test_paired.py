"""Paired comparisons and intervals around the printed figure: each checked against an independent
reference (scipy's tests, brute-force loops over literally deleted or resampled rows, simulation)."""

import math
from itertools import combinations

import pytest
import torch
from scipy import stats

from diffvae.errors import DiffvaeError
from diffvae.metrics import paired as P
from diffvae.metrics.bootstrap import counts_from_indices, resample_indices
from diffvae.metrics.distances import fid, precision_recall, unbiased_mmd2


def _gauss(n, d, seed, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale + shift


# ----------------------------------------------------------------------------- per-item tests against scipy

def test_paired_mean_difference_matches_scipy_ttest_rel():
    a, b = _gauss(40, 1, 0)[:, 0] + 1.5, _gauss(40, 1, 0)[:, 0] * 0.9 + 1.3 + _gauss(40, 1, 1)[:, 0] * 0.2
    ours = P.paired_mean_difference("bpd", a, b)
    ref = stats.ttest_rel(a.numpy(), b.numpy())
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    low, high = ref.confidence_interval(0.95)
    assert ours.ci95 == pytest.approx((low, high), rel=1e-9)
    assert ours.difference == pytest.approx(float((a - b).mean()))
    assert ours.decided() == ("b" if ours.difference > 0 else "a") if ours.p_value < 0.05 else ours.decided() is None


def test_pairing_decides_what_two_separate_intervals_do_not():
    """Between-image spread dominates; the per-image difference is small but consistent."""
    base = _gauss(200, 1, 2)[:, 0] * 0.5 + 1.5
    a, b = base + 0.02 * _gauss(200, 1, 3)[:, 0], base + 0.03 + 0.02 * _gauss(200, 1, 4)[:, 0]
    sem = lambda x: float(x.std()) / math.sqrt(x.numel())  # noqa: E731
    overlap = abs(float(a.mean() - b.mean())) < 1.96 * (sem(a) + sem(b))
    comparison = P.paired_mean_difference("bpd", a, b)
    assert overlap and comparison.decided() == "a"


def test_welch_matches_scipy():
    a, b = _gauss(5, 1, 5)[:, 0] * 0.1 + 2.0, _gauss(7, 1, 6)[:, 0] * 0.4 + 2.5
    ours = P.welch_difference("ms_per_sample", a, b)
    ref = stats.ttest_ind(a.numpy(), b.numpy(), equal_var=False)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert ours.ci95 == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-9)


def test_paired_proportion_uses_the_exact_mcnemar_test():
    a = torch.tensor([1] * 30 + [0] * 5 + [1] * 12 + [0] * 3, dtype=torch.float64)
    b = torch.tensor([1] * 30 + [0] * 5 + [0] * 12 + [1] * 3, dtype=torch.float64)
    ours = P.paired_proportion_difference("probe_accuracy", a, b)
    # exact two-sided binomial p of 12 successes among 15 discordant pairs, by summation
    pmf = [math.comb(15, k) / 2 ** 15 for k in range(16)]
    expected = sum(p for p in pmf if p <= pmf[12] * (1 + 1e-12))
    assert ours.p_value == pytest.approx(expected, rel=1e-9)
    assert ours.difference == pytest.approx(9 / 50)
    assert ours.ci95[0] <= ours.difference <= ours.ci95[1]
    assert ours.decided() == "a"  # higher accuracy is better


def test_holm_matches_its_definition_by_brute_force():
    p = [0.01, 0.04, 0.03, 0.005, 0.2]
    adjusted = P.holm(p)
    order = sorted(range(5), key=lambda i: p[i])
    for rank, i in enumerate(order):
        expected = max(min(1.0, (5 - j) * p[order[j]]) for j in range(rank + 1))
        assert adjusted[i] == pytest.approx(expected)
    # Holm rejects a subset of what each test alone rejects, and a superset of Bonferroni's
    assert all((q < 0.05) <= (x < 0.05) for q, x in zip(adjusted, p))
    assert all((q < 0.05) >= (5 * x < 0.05) for q, x in zip(adjusted, p))


def test_samples_for_power_has_80_percent_power_by_simulation():
    delta, sigma = 0.4, 1.0
    n = P.samples_for_power(delta, sigma)
    assert n == math.ceil(((1.959963984540054 + 0.8416212335729143) * sigma / delta) ** 2)
    g = torch.Generator().manual_seed(7)
    trials = 2000
    d = torch.randn(trials, n, generator=g, dtype=torch.float64) * sigma + delta
    t = d.mean(1) / (d.std(1) / math.sqrt(n))
    power = float((t.abs() > stats.t.ppf(0.975, n - 1)).double().mean())
    assert 0.75 < power < 0.85
    assert P.samples_for_power(0.0, 1.0) is None and P.samples_for_power(1.0, math.nan) is None


def test_sequential_plan_splits_alpha_over_the_looks():
    plan = P.SequentialPlan(alpha=0.05, looks=3)
    assert sum(plan.level(j) for j in (1, 2, 3)) == pytest.approx(0.05)
    with pytest.raises(DiffvaeError):
        plan.level(4)


# ----------------------------------------------------------------------------- sample metrics

def test_estimates_are_the_metrics_of_all_rows():
    ref, gen = _gauss(40, 6, 8), _gauss(30, 6, 9, 1.2, 0.1)
    assert P.estimate("fid", ref, gen) == pytest.approx(fid(ref, gen), rel=1e-9)
    assert P.estimate("kid", ref, gen) == pytest.approx(unbiased_mmd2(ref, gen), rel=1e-9)
    pr = precision_recall(ref, gen, k=3)
    assert P.estimate("precision", ref, gen) == pytest.approx(pr["precision"])
    assert P.estimate("recall", ref, gen) == pytest.approx(pr["recall"])


@pytest.mark.parametrize("metric", ["fid", "kid", "recall"])
def test_jackknife_sd_equals_a_loop_over_deleted_rows(metric):
    ref, gen = _gauss(30, 4, 10), _gauss(20, 4, 11, 1.3)
    values = torch.tensor([P.estimate(metric, ref, torch.cat([gen[:i], gen[i + 1:]])) for i in range(20)], dtype=torch.float64)
    expected = math.sqrt(19 / 20 * float((values - values.mean()).square().sum()))
    assert P.jackknife_sd(metric, ref, gen) == pytest.approx(expected, rel=1e-8)


def test_paired_jackknife_se_equals_loops_over_each_set():
    ref, a, b = _gauss(25, 4, 12), _gauss(18, 4, 13, 1.2), _gauss(16, 4, 14, 0.9, 0.2)

    def spread(values):
        v = torch.tensor(values, dtype=torch.float64)
        return (len(values) - 1) / len(values) * float((v - v.mean()).square().sum())

    drop = lambda x, i: torch.cat([x[:i], x[i + 1:]])  # noqa: E731
    var = (spread([fid(ref, drop(a, i)) for i in range(18)]) + spread([fid(ref, drop(b, i)) for i in range(16)])
           + spread([fid(drop(ref, i), a) - fid(drop(ref, i), b) for i in range(25)]))
    assert P.paired_jackknife_se("fid", ref, a, b) == pytest.approx(math.sqrt(var), rel=1e-7)


def test_paired_bootstrap_replicates_equal_a_loop_with_one_shared_reference_resample():
    ref, a, b = _gauss(25, 4, 15), _gauss(18, 4, 16, 1.2), _gauss(16, 4, 17)
    ours = P.paired_replicates("fid", ref, a, b, 6, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    ia, ib, ir = resample_indices(18, 6, g), resample_indices(16, 6, g), resample_indices(25, 6, g)
    loop = torch.tensor([fid(ref[ir[r]], a[ia[r]]) - fid(ref[ir[r]], b[ib[r]]) for r in range(6)], dtype=torch.float64)
    torch.testing.assert_close(ours, loop, rtol=1e-8, atol=1e-10)
    assert counts_from_indices(ir, 25).sum(1).eq(25).all()


@pytest.mark.parametrize("metric", ["fid", "kid", "precision", "recall"])
def test_the_interval_contains_the_printed_figure(metric):
    ref, gen = _gauss(60, 16, 18), _gauss(50, 16, 19, 1.1, 0.1)
    value, (low, high) = P.metric_interval(metric, ref, gen)
    assert low <= value <= high and high > low


def test_fid_interval_covers_the_expected_fid_at_n_on_gaussians():
    """E[FID@N | reference] Monte-Carlo'd from fresh generated sets; the interval covers it in most repeats
    (the benchmarks measure the full table at d = 128)."""
    ref = _gauss(200, 16, 20)
    truth = sum(fid(ref, _gauss(60, 16, 100 + s, 1.2, 0.05)) for s in range(200)) / 200
    hits = sum(P.metric_interval("fid", ref, g := _gauss(60, 16, 500 + s, 1.2, 0.05))[1][0] <= truth
               <= P.metric_interval("fid", ref, g)[1][1] for s in range(40))
    assert hits >= 34  # ≥ 85% of 40 (nominal 95%)


def test_the_paired_sample_comparison_decides_a_real_difference_and_not_a_null_one():
    ref = _gauss(200, 8, 21)
    same = P.paired_sample_difference("fid", ref, _gauss(150, 8, 22), _gauss(150, 8, 23))
    assert same.decided() is None and same.ci95[0] <= 0 <= same.ci95[1]
    worse = P.paired_sample_difference("kid", ref, _gauss(150, 8, 24), _gauss(150, 8, 25, 1.5, 0.3))
    assert worse.decided() == "a" and worse.difference < 0 and worse.n_to_decide() is not None
    assert P.paired_sample_difference("fid", ref, _gauss(150, 8, 24), _gauss(150, 8, 25, 1.5)).n_to_decide() is None  # FID@N: N-dependent


def test_paired_scalar_bootstrap_equals_a_loop():
    a, b, r = _gauss(30, 1, 26)[:, 0].exp(), _gauss(25, 1, 27)[:, 0].exp() * 0.7, _gauss(40, 1, 28)[:, 0].exp()
    ours = P.paired_scalar_bootstrap("sharpness_gap", P.sharpness_gap, a, b, r, 50, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    ir, ia, ib = resample_indices(40, 50, g), resample_indices(30, 50, g), resample_indices(25, 50, g)
    gap = lambda x, y: abs(math.log(float(x.mean()) / float(y.mean())))  # noqa: E731
    loop = torch.tensor([gap(a[ia[k]], r[ir[k]]) - gap(b[ib[k]], r[ir[k]]) for k in range(50)], dtype=torch.float64)
    assert ours.se == pytest.approx(float(loop.std()), rel=1e-8)
    assert ours.difference == pytest.approx(gap(a, r) - gap(b, r))


def test_two_independent_proportions_match_newcombe_and_the_chi_square_test():
    """Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 vs 48/80, hybrid score interval
    (method 10) 0.0524 to 0.3339; the pooled z-test is the 2×2 χ² test without continuity correction (scipy)."""
    from scipy.stats import chi2_contingency

    c = P.independent_proportion_difference("conditional_accuracy", 56 / 70, 70, 48 / 80, 80)
    assert c.difference == pytest.approx(0.2)
    assert c.ci95 == pytest.approx((0.0524, 0.3339), abs=1e-4)
    _, p, _, _ = chi2_contingency([[56, 14], [48, 32]], correction=False)
    assert c.p_value == pytest.approx(p, rel=1e-9)
    assert c.decided() == "a" and not c.lower_is_better
    same = P.independent_proportion_difference("conditional_accuracy", 0.5, 40, 0.5, 60)
    assert same.decided() is None and same.ci95[0] < 0 < same.ci95[1]
