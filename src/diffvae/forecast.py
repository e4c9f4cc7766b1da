"""Learning-curve forecasts: L(C) = E + A·(C/C_ref)^(−α) fitted to a few noisy points, with intervals.

Pure math on arrays (numpy); :mod:`diffvae.compare.forecasts` applies it to a compare's learning curves.

**The fit.** Weighted least squares, weights 1/σᵢ² from each point's own uncertainty (a 95% interval
gives σ = width / (2·1.96)). For a fixed α the model is linear in (E, A), so the fit profiles α over a
log grid on ``ALPHA_RANGE`` (then a finer grid around the best) and solves the 2×2 weighted normal
equations for each α, under E ≥ 0 (``floor_at_zero``) and A ≥ 0. ``C_ref`` is the last measured C,
so A is the part of the metric still reducible there and E the floor.

**Noise.** When the points carry no uncertainty (bits/dim on a fixed image subset) σ is the residual
scale of an unweighted fit, RSS / (n − 3), floored at ``RELATIVE_SIGMA_FLOOR`` of the metric. When
they do, σ is multiplied by the Birge ratio √(χ²/(n − 3)) if it exceeds 1: scatter beyond the stated
intervals (snapshot-to-snapshot noise that a sample-count interval does not see) widens every interval.

**Intervals.** A parametric bootstrap: ``replicates`` curves f(xᵢ; θ̂) + σᵢ·εᵢ, each refitted the same
way; 95% intervals are percentiles of the refitted E, A, α and of the predictions. ``pi95`` adds the
noise of one new measurement at the target (the last point's σ), which is what a longer run's
measured value is compared with. The refits are kept (:class:`PowerLawFit`), so the difference of two
families' predictions is computed replicate by replicate (their bootstraps are independent).

**Refusals** (:class:`ForecastRefused`, one sentence): fewer than ``MIN_POINTS`` points; a curve that
does not fall (its weighted slope against log C is not below zero by two standard errors); α at an
end of its range in the fit or in more than ``MAX_BOUND_SHARE`` of the refits (E and α trade off
without limit: the curve does not say where it flattens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from diffvae.errors import DiffvaeError

Z95 = 1.959963984540054
MIN_POINTS = 4
ALPHA_RANGE = (0.05, 3.0)  # a power law steeper than C^-3 or flatter than C^-0.05 is not a learning curve we can tell apart
GRID = 121  # α values on the coarse log grid
REFINE = 41  # α values between the coarse neighbours of the best
REPLICATES = 1000
MAX_BOUND_SHARE = 0.25  # refits with α at an end of its range
RELATIVE_SIGMA_FLOOR = 1e-3  # σ of points without intervals is at least this share of the median |y|
SLOPE_Z = 2.0  # a curve falls when its WLS slope against log C is below −SLOPE_Z standard errors


class ForecastRefused(DiffvaeError):
    """A curve that cannot be fitted or extrapolated honestly; the message says why, in one sentence."""


def sigma_from_interval(ci: Sequence[float] | None) -> float | None:
    """σ of a symmetric normal 95% interval [low, high]; None without one (or a degenerate one)."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in ci):
        return None
    width = float(ci[1]) - float(ci[0])
    return width / (2 * Z95) if width > 0 else None


@dataclass
class PowerLawFit:
    """The fit and its bootstrap refits (arrays of ``replicates``)."""

    E: float
    A: float
    alpha: float
    x_ref: float  # C_ref: the last measured compute
    sigma: np.ndarray  # the σ of each point used (after the Birge ratio)
    scale: float  # the Birge ratio applied (1 = the points' own intervals were enough; nan: σ from residuals)
    chi2: float | None  # of the fit against the points' own σ (None: they had none)
    boot_E: np.ndarray
    boot_A: np.ndarray
    boot_alpha: np.ndarray
    floor_at_zero: bool = True  # the metric is never negative (E >= 0, and so are measurements)

    def predict(self, x: float | np.ndarray) -> float | np.ndarray:
        return self.E + self.A * (np.asarray(x, dtype=float) / self.x_ref) ** (-self.alpha)

    def predict_replicates(self, x: float) -> np.ndarray:
        """The prediction at ``x`` of every bootstrap refit."""
        return self.boot_E + self.boot_A * (x / self.x_ref) ** (-self.boot_alpha)

    def interval(self, name: str) -> list[float]:
        values = {"E": self.boot_E, "A": self.boot_A, "alpha": self.boot_alpha}[name]
        return percentile_interval(values)

    def prediction(self, x: float, seed: int = 0) -> dict[str, float | list[float]]:
        """The prediction at ``x``: value, the curve's 95% interval and that of one new measurement."""
        replicates = self.predict_replicates(x)
        noise = np.random.default_rng(seed).standard_normal(replicates.shape) * float(self.sigma[-1])
        measured = np.maximum(replicates + noise, 0.0) if self.floor_at_zero else replicates + noise  # FID is never < 0
        return {"value": float(self.predict(x)), "ci95": percentile_interval(replicates), "pi95": percentile_interval(measured)}

    def summary(self) -> dict[str, float | list[float] | int]:
        return {"E": self.E, "E_ci95": self.interval("E"), "A": self.A, "A_ci95": self.interval("A"),
                "alpha": self.alpha, "alpha_ci95": self.interval("alpha"), "x_ref": self.x_ref,
                "points": int(len(self.sigma)),
                "birge_ratio": None if math.isnan(self.scale) else self.scale, "chi2": self.chi2}


def percentile_interval(values: np.ndarray) -> list[float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]


def fit_power_law(x: Sequence[float], y: Sequence[float], sigma: Sequence[float] | None = None, *,
                  floor_at_zero: bool = True, replicates: int = REPLICATES, seed: int = 0) -> PowerLawFit:
    """The fit of L = E + A·(x/x_last)^(−α) to the points (see the module docstring); raises
    :class:`ForecastRefused` with the reason when it cannot be trusted."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    if len(x) < MIN_POINTS:
        raise ForecastRefused(f"only {len(x)} measured points (a floor, a scale and an exponent need at least {MIN_POINTS})")
    if len(set(x.tolist())) < len(x) or x[0] <= 0 or not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)):
        raise ForecastRefused("the points need distinct, positive compute and finite values")
    u = x / x[-1]
    s = _point_sigma(y, None if sigma is None else np.asarray(sigma, dtype=float)[order])
    _check_falls(np.log(u), y, s, known=sigma is not None)
    E, A, alpha, chi2 = (float(v[0]) for v in _fit_rows(u, y[None, :], 1.0 / s**2, floor_at_zero))
    _check_alpha(alpha, "the best fit")
    dof = len(y) - 3  # >= 1: MIN_POINTS
    if sigma is None:  # unweighted (σ = 1): χ² is the residual sum of squares
        s = np.full_like(y, max(math.sqrt(chi2 / dof), RELATIVE_SIGMA_FLOOR * float(np.median(np.abs(y)))))
        scale = float("nan")
    else:
        scale = max(1.0, math.sqrt(chi2 / dof))
        s = s * scale
    boot = _bootstrap(u, E + A * u ** (-alpha), s, floor_at_zero, replicates, seed)
    at_bound = float(np.mean(_at_bound(boot[2])))
    if at_bound > MAX_BOUND_SHARE:
        raise ForecastRefused(f"not identifiable: the exponent ran to an end of its range ({ALPHA_RANGE[0]}–{ALPHA_RANGE[1]}) in "
                              f"{at_bound:.0%} of the bootstrap refits (the curve does not say where it flattens)")
    return PowerLawFit(E, A, alpha, float(x[-1]), s, scale, chi2 if sigma is not None else None, *boot, floor_at_zero)


def _point_sigma(y: np.ndarray, sigma: np.ndarray | None) -> np.ndarray:
    """The points' σ (a floor against zero-width intervals); ones when they have none (unweighted)."""
    floor = RELATIVE_SIGMA_FLOOR * max(float(np.median(np.abs(y))), 1e-12)
    if sigma is None:
        return np.ones_like(y)
    if sigma.shape != y.shape or not np.all(np.isfinite(sigma)):
        raise ForecastRefused("every point needs a finite uncertainty")
    return np.maximum(sigma, floor)


def _check_falls(logu: np.ndarray, y: np.ndarray, s: np.ndarray, known: bool) -> None:
    """Refuse a curve whose weighted linear trend against log C is not clearly downward: its standard
    error from the points' σ when ``known``, else from the residuals of the line."""
    w = 1.0 / s**2
    xm = np.sum(w * logu) / np.sum(w)
    sxx = np.sum(w * (logu - xm) ** 2)
    slope = np.sum(w * (logu - xm) * y) / sxx
    resid = y - (np.sum(w * y) / np.sum(w) + slope * (logu - xm))
    scatter = 1.0 if known else float(np.sum(w * resid**2)) / (len(y) - 2)  # a power law is not a line: its σ, if known
    if slope >= -SLOPE_Z * math.sqrt(scatter / sxx):
        raise ForecastRefused("the curve is flat or rising over the measured range (no fall beyond its noise to extrapolate)")


def _check_alpha(alpha: float, what: str) -> None:
    if _at_bound(np.array([alpha]))[0]:
        raise ForecastRefused(f"not identifiable: {what} puts the exponent at an end of its range "
                              f"({ALPHA_RANGE[0]}–{ALPHA_RANGE[1]}); the curve does not say where it flattens")


def _at_bound(alpha: np.ndarray) -> np.ndarray:
    lo, hi = ALPHA_RANGE
    return (alpha <= lo * (1 + 1e-9)) | (alpha >= hi * (1 - 1e-9))


def _bootstrap(u: np.ndarray, mean: np.ndarray, s: np.ndarray, floor_at_zero: bool, replicates: int,
               seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    Y = mean[None, :] + s[None, :] * rng.standard_normal((replicates, len(u)))
    E, A, alpha, _ = _fit_rows(u, Y, 1.0 / s**2, floor_at_zero)
    return E, A, alpha


def _fit_rows(u: np.ndarray, Y: np.ndarray, w: np.ndarray, floor_at_zero: bool) -> tuple[np.ndarray, ...]:
    """(E, A, α, χ²) of each row of Y: the coarse α grid, then a finer one around each row's best."""
    lo, hi = ALPHA_RANGE
    grid = np.exp(np.linspace(math.log(lo), math.log(hi), GRID))
    E, A, chi2 = _solve_linear(u, Y, w, np.broadcast_to(grid, (len(Y), GRID)), floor_at_zero)
    best = np.argmin(chi2, axis=1)
    left, right = grid[np.maximum(best - 1, 0)], grid[np.minimum(best + 1, GRID - 1)]
    fine = np.exp(np.log(left)[:, None] + (np.log(right) - np.log(left))[:, None] * np.linspace(0, 1, REFINE)[None, :])
    E, A, chi2 = _solve_linear(u, Y, w, fine, floor_at_zero)
    pick = np.argmin(chi2, axis=1)
    rows = np.arange(len(Y))
    return E[rows, pick], A[rows, pick], fine[rows, pick], chi2[rows, pick]


def _solve_linear(u: np.ndarray, Y: np.ndarray, w: np.ndarray, alphas: np.ndarray,
                  floor_at_zero: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row b of Y (B×n) and each α of alphas[b] (B×G): the weighted least-squares (E, A) of
    y = E + A·u^(−α) with A ≥ 0 (and E ≥ 0), and its χ²."""
    phi = u[None, None, :] ** (-alphas[:, :, None])  # B×G×n
    sw, sy, syy = w.sum(), Y @ w, (Y**2) @ w
    sp = phi @ w
    spp = (phi**2) @ w
    spy = np.einsum("bgn,bn->bg", phi * w, Y)
    det = sw * spp - sp**2
    A = (sw * spy - sp * sy[:, None]) / np.where(det > 0, det, np.inf)
    E = (sy[:, None] - A * sp) / sw
    if floor_at_zero:
        clip = E < 0
        E, A = np.where(clip, 0.0, E), np.where(clip, spy / spp, A)
    flat = A < 0
    E, A = np.where(flat, (sy / sw)[:, None], E), np.where(flat, 0.0, A)
    chi2 = syy[:, None] - 2 * E * sy[:, None] - 2 * A * spy + E**2 * sw + 2 * E * A * sp + A**2 * spp
    return E, A, chi2
