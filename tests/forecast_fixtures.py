"""A compare's results.json written by hand from known power laws (no training)."""

from __future__ import annotations

import numpy as np

Z95 = 1.959963984540054
LAWS = {  # family -> (E, A at the last point, alpha) of FID; bits/dim = 1 + FID / 100
    "vae": (60.0, 40.0, 0.3),  # fast start, high floor
    "ddpm": (10.0, 160.0, 0.7),  # slow start, low floor: passes the VAE beyond the measured range
}


def law(fam: str, x: np.ndarray, x_last: float) -> np.ndarray:
    E, A, alpha = LAWS[fam]
    return E + A * (x / x_last) ** (-alpha)


def synthetic_results(budget: float = 2.0, points: int = 7, noise: float = 0.02, seed: int = 0,
                      recipe: dict | None = None) -> dict:
    """Learning curves at doubling GFLOP with FID intervals of relative half-width ``noise``·1.96."""
    rng = np.random.default_rng(seed)
    curves, training = {}, {}
    for i, fam in enumerate(LAWS):
        x_last = 1000.0 * (i + 1)
        x = x_last * 2.0 ** -np.arange(points)[::-1]
        fid = law(fam, x, x_last)
        sigma = noise * fid
        y = fid + sigma * rng.standard_normal(points)
        bpd = 1.0 + law(fam, x, x_last) / 100.0
        curves[fam] = [{"step": 10 * (k + 1), "minutes": float(g) / 1000.0 * budget * 0.15, "gflop": float(g), "images": 64 * (k + 1),
                        "fid": float(v), "fid_ci95": [float(v - Z95 * s), float(v + Z95 * s)], "bpd": float(b)}
                       for k, (g, v, s, b) in enumerate(zip(x, y, sigma, bpd))]
        training[fam] = {"gflop": float(x_last), "minutes": budget * 0.15, "recipe": recipe if fam == "ddpm" else None}
    return {"budget_minutes": budget, "seed": 0, "data": "synthetic", "learning_curves": curves, "training": training,
            "learning_curve_settings": {"clock": "CPU-minutes", "n_samples": 100}, "families": {}}
