"""The power-law fit of diffvae.forecast: checked against scipy's curve_fit, and its bootstrap intervals
against curves drawn from a known power law."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import curve_fit

from diffvae.forecast import ALPHA_RANGE, ForecastRefused, Z95, fit_power_law, sigma_from_interval

X = 500.0 * 2.0 ** np.arange(7)  # doubling snapshots, as compare takes them
U = X / X[-1]


def law(u, E, A, alpha):
    return E + A * u ** (-alpha)


def test_the_fit_is_the_weighted_least_squares_optimum():
    """scipy's bounded curve_fit from the true parameters finds no lower χ² than the profile fit."""
    rng = np.random.default_rng(3)
    sigma = 0.03 * law(U, 20.0, 80.0, 0.6)
    y = law(U, 20.0, 80.0, 0.6) + sigma * rng.standard_normal(len(U))
    fit = fit_power_law(X, y, sigma, replicates=50)
    ref, _ = curve_fit(law, U, y, p0=(20.0, 80.0, 0.6), sigma=sigma, absolute_sigma=True,
                       bounds=([0.0, 0.0, ALPHA_RANGE[0]], [np.inf, np.inf, ALPHA_RANGE[1]]))
    chi2 = np.sum(((y - law(U, fit.E, fit.A, fit.alpha)) / sigma) ** 2)
    chi2_ref = np.sum(((y - law(U, *ref)) / sigma) ** 2)
    assert chi2 <= chi2_ref * (1 + 1e-4) + 1e-9
    assert fit.alpha == pytest.approx(ref[2], rel=0.01)
    assert fit.E == pytest.approx(ref[0], rel=0.02, abs=0.2)


@pytest.mark.parametrize("truth, noise", [((20.0, 80.0, 0.6), 0.03), ((5.0, 200.0, 0.4), 0.03)])
def test_intervals_cover_the_true_parameters(truth, noise):
    """Curves drawn from a known law with noise of the stated σ: the 95% intervals of E, A, α and of the
    prediction at 10× the compute hold the truth in at least 90% of 40 repeats."""
    rng = np.random.default_rng(7)
    true = law(U, *truth)
    at_10x = law(10.0, *truth)
    hits = {"E": 0, "A": 0, "alpha": 0, "prediction": 0}
    repeats = 40
    for r in range(repeats):
        y = true + noise * true * rng.standard_normal(len(U))
        fit = fit_power_law(X, y, noise * true, replicates=300, seed=r)
        for name, value in zip(("E", "A", "alpha"), truth):
            low, high = fit.interval(name)
            hits[name] += low <= value <= high
        low, high = fit.prediction(10.0 * X[-1], seed=r)["ci95"]
        hits["prediction"] += low <= at_10x <= high
    assert all(h >= 0.9 * repeats for h in hits.values()), hits


def test_points_without_intervals_take_sigma_from_the_residuals():
    rng = np.random.default_rng(1)
    y = law(U, 1.2, 0.8, 0.5) + 0.004 * rng.standard_normal(len(U))
    fit = fit_power_law(X, y, None, replicates=200)
    assert fit.sigma[0] == pytest.approx(np.sqrt(np.sum((y - fit.predict(X)) ** 2) / (len(U) - 3)), rel=1e-3)
    assert fit.interval("E")[0] <= 1.2 <= fit.interval("E")[1]


def test_scatter_beyond_the_stated_intervals_widens_them():
    """Points scattered 3× more than their σ: the Birge ratio scales σ up (and never down)."""
    rng = np.random.default_rng(2)
    sigma = 0.01 * law(U, 20.0, 80.0, 0.6)
    y = law(U, 20.0, 80.0, 0.6) + 3 * sigma * rng.standard_normal(len(U))
    fit = fit_power_law(X, y, sigma, replicates=50)
    assert fit.scale > 1.5
    assert np.allclose(fit.sigma, sigma * fit.scale)


def test_too_few_points_are_refused():
    with pytest.raises(ForecastRefused, match="only 2 measured points"):
        fit_power_law(X[:2], law(U[:2], 20.0, 80.0, 0.6), [1.0, 1.0])


@pytest.mark.parametrize("curve", ["flat", "noisy flat", "rising"])
def test_a_curve_that_does_not_fall_is_refused(curve):
    rng = np.random.default_rng(0)
    y = {"flat": np.full(len(U), 50.0), "noisy flat": 50.0 + rng.standard_normal(len(U)),
         "rising": 50.0 + 10 * np.log(X)}[curve]
    with pytest.raises(ForecastRefused, match="flat or rising"):
        fit_power_law(X, y, np.ones(len(U)))


def test_a_curve_that_flattens_faster_than_any_allowed_exponent_is_not_identifiable():
    """L = 10 + u^-6: the exponent runs to the end of its range; no forecast."""
    y = law(U, 10.0, 1.0, 6.0)
    with pytest.raises(ForecastRefused, match="not identifiable"):
        fit_power_law(X, y, 0.01 * y, replicates=100)


def test_sigma_from_interval():
    assert sigma_from_interval([10.0 - Z95 * 2, 10.0 + Z95 * 2]) == pytest.approx(2.0)
    assert sigma_from_interval(None) is None
    assert sigma_from_interval([3.0, 3.0]) is None
    assert sigma_from_interval([float("nan"), 1.0]) is None


def test_the_interval_of_a_measurement_never_goes_below_zero():
    """A floor near 0 and noise of σ = 3: unclipped, the measurement's interval would reach -8.6 here."""
    rng = np.random.default_rng(4)
    sigma = np.full(len(U), 3.0)
    y = law(U, 0.5, 10.0, 0.8) + sigma * rng.standard_normal(len(U))
    fit = fit_power_law(X, np.abs(y) + 25 * (1 - U), sigma, replicates=300)
    low, high = fit.prediction(100 * X[-1])["pi95"]
    assert 0.0 <= low < high
