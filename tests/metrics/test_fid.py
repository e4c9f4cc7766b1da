"""fid / kid / precision_recall against independent references (scipy, torchmetrics, brute force)."""

import numpy as np
import pytest
import scipy.linalg
import torch

from diffvae.errors import DiffvaeError
from diffvae.metrics.distances import fid, kid, precision_recall


def _features(n, d, seed, scale=1.0, shift=0.0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing * scale + shift


def _scipy_fid(a, b):
    """The pytorch-fid formula: ‖μa − μb‖² + Tr Σa + Tr Σb − 2 Tr sqrtm(Σa Σb)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean).real)


def test_fid_matches_scipy_sqrtm_and_torchmetrics():
    from torchmetrics.image.fid import _compute_fid

    a, b = _features(400, 16, 0), _features(300, 16, 1, scale=1.5, shift=0.3)
    ours = fid(a, b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    reference_tm = float(_compute_fid(ta.mean(0), torch.cov(ta.T), tb.mean(0), torch.cov(tb.T)))
    assert ours == pytest.approx(_scipy_fid(a, b), rel=1e-4)
    assert ours == pytest.approx(reference_tm, rel=1e-4)
    assert ours > 1.0  # the sets really differ


def test_fid_analytic_cases_and_input_types():
    a = _features(200, 8, 2)
    shift = np.arange(8, dtype=np.float64) / 4
    # identical sets → 0; a pure shift c leaves the covariance unchanged → ‖c‖²
    assert abs(fid(a, a)) < 1e-8
    assert fid(a, a + shift) == pytest.approx(float((shift ** 2).sum()), rel=1e-9)
    assert fid(torch.from_numpy(a).float(), a + shift) == pytest.approx(float((shift ** 2).sum()), rel=1e-5)
    # scaling by s: Σ → s²Σ and μ → sμ, so FID = (s − 1)² (‖μ‖² + Tr Σ)
    expected = 9.0 * (float((a.mean(0) ** 2).sum()) + np.trace(np.cov(a, rowvar=False)))
    assert fid(a, 4 * a) == pytest.approx(expected, rel=1e-9)


def test_fid_rank_deficient_covariance_agrees_with_torchmetrics():
    from torchmetrics.image.fid import _compute_fid

    a, b = _features(20, 32, 3), _features(25, 32, 4, shift=0.1)  # N < d: singular covariances
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    reference = float(_compute_fid(ta.mean(0), torch.cov(ta.T), tb.mean(0), torch.cov(tb.T)))
    assert fid(a, b) == pytest.approx(reference, rel=1e-4)


def _brute_force_mmd2(x, y):
    def k(u, v):
        return (float(u @ v) / len(u) + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_single_full_subset_equals_brute_force_mmd():
    x, y = _features(30, 5, 5), _features(30, 5, 6, shift=0.5)
    mean, std = kid(x, y, subsets=1, subset_size=1000, generator=torch.Generator().manual_seed(0))
    assert mean == pytest.approx(_brute_force_mmd2(x, y), rel=1e-10)
    assert std == 0.0


def test_kid_subsets_are_seeded_and_near_zero_for_same_distribution():
    x, y = _features(300, 6, 7), _features(300, 6, 8)
    first = kid(x, y, subsets=20, subset_size=50, generator=torch.Generator().manual_seed(1))
    again = kid(x, y, subsets=20, subset_size=50, generator=torch.Generator().manual_seed(1))
    far = kid(x, y + 2.0, subsets=20, subset_size=50, generator=torch.Generator().manual_seed(1))
    assert first == again and first[1] > 0
    assert abs(first[0]) < 3 * first[1]  # unbiased: same distribution → mean within noise of 0
    assert far[0] > 10 * abs(first[0]) + 10 * first[1]


def _brute_force_precision_recall(real, fake, k):
    def radii(points):
        out = []
        for i, p in enumerate(points):
            distances = sorted(np.sqrt(((p - q) ** 2).sum()) for j, q in enumerate(points) if j != i)
            out.append(distances[k - 1])
        return out

    def covered(queries, support, support_radii):
        hits = [any(np.sqrt(((q - s) ** 2).sum()) <= r for s, r in zip(support, support_radii)) for q in queries]
        return sum(hits) / len(hits)

    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_matches_brute_force_knn(k):
    real, fake = _features(60, 3, 9), _features(50, 3, 10, scale=0.6, shift=0.8)
    ours = precision_recall(real, fake, k=k)
    precision, recall = _brute_force_precision_recall(real, fake, k)
    assert ours["precision"] == pytest.approx(precision, abs=1e-12)
    assert ours["recall"] == pytest.approx(recall, abs=1e-12)
    assert 0 < ours["precision"] < 1 and 0 < ours["recall"] < 1  # a case where the answer is not trivial


def test_precision_recall_chunking_does_not_change_the_answer():
    from diffvae.metrics import distances as fid_module

    real, fake = torch.from_numpy(_features(70, 4, 11)), torch.from_numpy(_features(65, 4, 12, shift=0.4))
    radii = fid_module.knn_radii(real, 3)
    torch.testing.assert_close(radii, fid_module.knn_radii(real, 3, chunk=7), rtol=1e-12, atol=0)
    assert fid_module.fraction_in_manifold(fake, real, radii) == fid_module.fraction_in_manifold(fake, real, radii, chunk=9)


@pytest.mark.parametrize("call", [
    lambda: fid(np.zeros((5, 3)), np.zeros((5, 4))),
    lambda: fid(np.zeros((1, 3)), np.zeros((5, 3))),
    lambda: fid(np.zeros((5, 3, 1)), np.zeros((5, 3))),
    lambda: fid(np.full((5, 3), np.nan), np.zeros((5, 3))),
    lambda: kid(np.zeros((5, 3)), np.zeros((5, 3)), subsets=0),
    lambda: precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3),
])
def test_bad_input_raises_diffvae_error(call):
    with pytest.raises(DiffvaeError):
        call()
