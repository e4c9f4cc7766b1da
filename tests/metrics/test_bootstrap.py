"""Bootstrap intervals: batched replicates against the metrics of literally resampled rows, and
coverage of the population value on Gaussian features where it is known (closed form for FID and
KID; for k-NN precision/recall the mean over many independent samples of the same sizes)."""

import itertools

import pytest
import torch

from diffvae.errors import DiffvaeError
from diffvae.metrics import bootstrap as bs
from diffvae.metrics.distances import fid, polynomial_kernel, precision_recall, unbiased_mmd2

REPEATS = 200
RESAMPLES = 200


def _gaussian(n, mean, std, generator):
    return torch.randn(n, mean.numel(), generator=generator, dtype=torch.float64) * std + mean


def _pair(d=5, na=60, nb=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return _gaussian(na, torch.zeros(d), 1.0, g), _gaussian(nb, torch.full((d,), 0.3), 1.3, g)


# ----------------------------------------------------------------------------- replicates

def test_fid_replicates_equal_fid_of_the_resampled_rows():
    a, b = _pair()
    ia, ib = bs.resample_indices(60, 12, torch.Generator().manual_seed(1)), bs.resample_indices(50, 12, torch.Generator().manual_seed(2))
    ours = bs.fid_replicates(a, b, bs.counts_from_indices(ia, 60), bs.counts_from_indices(ib, 50))
    reference = torch.tensor([fid(a[ia[r]], b[ib[r]]) for r in range(12)], dtype=torch.float64)
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-12)
    assert reference.std() > 0.01  # the resamples differ


def _brute_mmd2_distinct_rows(x, ix, y, iy):
    """Unbiased MMD² of resampled rows over pairs of positions holding different original rows."""
    def within(features, idx):
        pairs = [(p, q) for p, q in itertools.permutations(range(len(idx)), 2) if idx[p] != idx[q]]
        return sum(float(polynomial_kernel(features[idx[p]][None], features[idx[q]][None])) for p, q in pairs) / len(pairs)

    cross = polynomial_kernel(x[ix], y[iy]).mean()
    return within(x, ix) + within(y, iy) - 2 * float(cross)


def test_mmd2_replicates_equal_brute_force_over_pairs_of_different_rows():
    x, y = _pair(d=3, na=14, nb=11, seed=3)
    ix, iy = bs.resample_indices(14, 4, torch.Generator().manual_seed(4)), bs.resample_indices(11, 4, torch.Generator().manual_seed(5))
    ours = bs.mmd2_replicates(x, y, bs.counts_from_indices(ix, 14), bs.counts_from_indices(iy, 11))
    reference = [_brute_mmd2_distinct_rows(x, ix[r].tolist(), y, iy[r].tolist()) for r in range(4)]
    torch.testing.assert_close(ours, torch.tensor(reference, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    every_row_once = bs.mmd2_replicates(x, y, torch.ones(1, 14, dtype=torch.float64), torch.ones(1, 11, dtype=torch.float64))
    assert float(every_row_once[0]) == pytest.approx(unbiased_mmd2(x, y), rel=1e-12)  # the point estimate kid_ci uses


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_replicates_equal_the_metric_of_the_resampled_rows(k):
    real, fake = _pair(d=3, na=70, nb=55, seed=6)
    ir, i_f = bs.resample_indices(70, 10, torch.Generator().manual_seed(7)), bs.resample_indices(55, 10, torch.Generator().manual_seed(8))
    ours = bs.precision_recall_replicates(real, fake, bs.counts_from_indices(ir, 70), bs.counts_from_indices(i_f, 55), k=k)
    for r in range(10):
        reference = precision_recall(real[ir[r]], fake[i_f[r]], k=k)
        assert float(ours["precision"][r]) == pytest.approx(reference["precision"], abs=1e-12)
        assert float(ours["recall"][r]) == pytest.approx(reference["recall"], abs=1e-12)


def test_knn_radii_past_the_nearest_rows_are_exact():
    """A resample that drew none of a row's nearest L rows falls back to the exact search."""
    g = torch.Generator().manual_seed(9)
    features = torch.randn(80, 2, generator=g, dtype=torch.float64)
    _, nearest = bs.nearest_neighbours(features, 32)  # L = 4k + 28 = 32 for k = 1
    counts = torch.ones(1, 80, dtype=torch.float64)
    counts[0, nearest[0]] = 0.0  # row 0's 32 nearest rows are all missing
    index = torch.repeat_interleave(torch.arange(80), counts[0].long())
    expected = torch.cdist(features[index], features[index])
    expected.fill_diagonal_(torch.inf)
    radii = bs.resampled_knn_radii(features, counts, k=1)
    assert float(radii[0, 0]) == pytest.approx(float(expected[0].min()), rel=1e-12)
    assert (radii[0, nearest[0]] == -1).all()  # rows not drawn have no ball


# ----------------------------------------------------------------------------- population values

def _population_fid(mean_a, std_a, mean_b, std_b):
    """Diagonal covariances: ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½) = ‖μa − μb‖² + Σ (σa − σb)²."""
    return float((mean_a - mean_b).square().sum() + (std_a - std_b).square().sum())


def _expected_kernel(m1, var1, m2, var2):
    """E (x·y/d + 1)³ for independent x ~ N(m1, diag var1), y ~ N(m2, diag var2), from the raw moments
    of s = x·y (condition on y: s | y ~ N(m1·y, yᵀ S1 y)):
        E s = m1·m2,  E s² = (m1·m2)² + m1ᵀS2m1 + m2ᵀS1m2 + Tr S1S2,
        E s³ = a³ + 3a m1ᵀS2m1 + 3 [a (m2ᵀS1m2 + Tr S1S2) + 2 m1ᵀS2S1m2],  a = m1·m2."""
    d = m1.numel()
    a = float(m1 @ m2)
    q1, q2, tr = float((m1 * var2 * m1).sum()), float((m2 * var1 * m2).sum()), float((var1 * var2).sum())
    cross = float((m1 * var2 * var1 * m2).sum())
    s1, s2 = a, a * a + q1 + q2 + tr
    s3 = a ** 3 + 3 * a * q1 + 3 * (a * (q2 + tr) + 2 * cross)
    return s3 / d ** 3 + 3 * s2 / d ** 2 + 3 * s1 / d + 1


def _population_mmd2(mean_a, std_a, mean_b, std_b):
    va, vb = std_a.square(), std_b.square()
    return (_expected_kernel(mean_a, va, mean_a, va) + _expected_kernel(mean_b, vb, mean_b, vb)
            - 2 * _expected_kernel(mean_a, va, mean_b, vb))


def test_population_kernel_expectation_matches_monte_carlo():
    g = torch.Generator().manual_seed(10)
    m1, s1 = torch.tensor([0.5, -0.2, 1.0], dtype=torch.float64), torch.tensor([1.0, 0.7, 1.4], dtype=torch.float64)
    m2, s2 = torch.tensor([0.1, 0.9, -0.4], dtype=torch.float64), torch.tensor([0.6, 1.2, 1.0], dtype=torch.float64)
    x, y = _gaussian(1_000_000, m1, s1, g), _gaussian(1_000_000, m2, s2, g)
    values = ((x * y).sum(1) / 3 + 1) ** 3
    assert _expected_kernel(m1, s1 ** 2, m2, s2 ** 2) == pytest.approx(float(values.mean()), abs=4 * float(values.std()) / 1000)


# ----------------------------------------------------------------------------- coverage

SETTING = dict(d=6, na=400, nb=400, mean_b=0.3, std_b=1.2)


def _draws(setting, seed):
    g = torch.Generator().manual_seed(seed)
    d = setting["d"]
    mean_a, std_a = torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
    mean_b, std_b = torch.full((d,), setting["mean_b"], dtype=torch.float64), torch.full((d,), setting["std_b"], dtype=torch.float64)
    params = (mean_a, std_a, mean_b, std_b)

    def draw():
        return _gaussian(setting["na"], mean_a, std_a, g), _gaussian(setting["nb"], mean_b, std_b, g)
    return params, draw, g


def _coverage(setting, seed, estimate, replicates, truth, bias_corrected=True):
    """Share of REPEATS independent samples whose 95% interval contains the truth, and the same for
    the interval without the bias correction."""
    _, draw, g = _draws(setting, seed)
    hits, uncorrected = 0, 0
    for _ in range(REPEATS):
        a, b = draw()
        value, reps = estimate(a, b), replicates(a, b, *bs.resample_counts(a, b, RESAMPLES, g))
        low, high = bs.bootstrap_interval(value, reps, 0.95, bias_corrected)
        hits += low <= truth <= high
        low, high = bs.bootstrap_interval(value, reps, 0.95, bias_corrected=False)
        uncorrected += low <= truth <= high
    return hits / REPEATS, uncorrected / REPEATS


@pytest.mark.parametrize("setting", [SETTING, dict(d=8, na=300, nb=500, mean_b=0.1, std_b=0.85)])
def test_fid_interval_covers_the_population_fid(setting):
    params, _, _ = _draws(setting, 0)
    truth = _population_fid(*params)
    coverage, uncorrected = _coverage(setting, 11, fid, bs.fid_replicates, truth)
    assert coverage >= 0.90, coverage
    if setting["mean_b"] < 0.2:  # small population FID: the plug-in's upward bias dominates
        assert uncorrected < 0.75, uncorrected  # without the bias correction the interval misses


def test_kid_interval_covers_the_population_mmd2():
    params, _, _ = _draws(SETTING, 0)
    truth = _population_mmd2(*params)
    coverage, _ = _coverage(SETTING, 12, unbiased_mmd2, bs.mmd2_replicates, truth)
    assert coverage >= 0.90, coverage


def test_precision_recall_intervals_cover_their_expectation():
    """Without the bias correction (the replicates' shift is an artefact of ties, see bootstrap.py)."""
    setting = dict(d=4, na=300, nb=300, mean_b=0.3, std_b=0.8)
    _, draw, g = _draws(setting, 13)
    samples = [precision_recall(*draw()) for _ in range(400)]
    truth = {m: sum(s[m] for s in samples) / len(samples) for m in ("precision", "recall")}  # E at these sizes
    hits = {"precision": 0, "recall": 0}
    for _ in range(REPEATS):
        real, fake = draw()
        estimate = precision_recall(real, fake)
        replicates = bs.precision_recall_replicates(real, fake, *bs.resample_counts(real, fake, RESAMPLES, g))
        for m in hits:
            low, high = bs.bootstrap_interval(estimate[m], replicates[m], 0.95, bias_corrected=False)
            hits[m] += low <= truth[m] <= high
    assert min(hits.values()) >= 0.90 * REPEATS, hits


# ----------------------------------------------------------------------------- the public intervals

def test_intervals_narrow_with_more_data_and_contain_the_estimate():
    widths = {}
    for n in (200, 1600):
        real, fake = _pair(d=4, na=n, nb=n, seed=15)
        fake = fake + 0.5  # well separated: the bias is small next to the spread
        g = lambda: torch.Generator().manual_seed(16)
        intervals = {"fid": (bs.fid_ci(real, fake, generator=g()), fid(real, fake)),
                     "kid": (bs.kid_ci(real, fake, generator=g()), unbiased_mmd2(real, fake))}
        pr_ci, pr = bs.precision_recall_ci(real, fake, generator=g()), precision_recall(real, fake)
        intervals.update({m: (pr_ci[m], pr[m]) for m in ("precision", "recall")})
        for name, ((low, high), estimate) in intervals.items():
            assert low <= estimate <= high, (name, n, low, estimate, high)
            widths.setdefault(name, []).append(high - low)
    for name, (small, large) in widths.items():
        assert large < 0.6 * small, (name, small, large)  # ∝ 1/√n: about 0.35×


def test_generic_bootstrap_ci_agrees_with_the_batched_fid_interval():
    a, b = _pair(d=3, na=80, nb=90, seed=17)
    b = b + 1.0
    generic = bs.bootstrap_ci(fid, a, b, n_boot=30, generator=torch.Generator().manual_seed(18))
    batched = bs.fid_ci(a, b, n_boot=30, generator=torch.Generator().manual_seed(18))
    assert generic == pytest.approx(batched, rel=1e-9)
    assert generic[0] > 0  # not clamped, so the two must agree exactly


@pytest.mark.parametrize("call", [
    lambda: bs.fid_ci(torch.zeros(5, 2), torch.zeros(5, 3)),
    lambda: bs.fid_ci(torch.randn(5, 2), torch.randn(5, 2), n_boot=1),
    lambda: bs.bootstrap_interval(1.0, torch.randn(10), level=1.5),
])
def test_bad_input_raises_diffvae_error(call):
    with pytest.raises(DiffvaeError):
        call()
