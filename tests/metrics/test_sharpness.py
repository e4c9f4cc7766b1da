"""Laplacian-variance sharpness: matches scipy's Laplacian, ranks blur, ratio semantics."""

import numpy as np
import pytest
import scipy.ndimage
import torch

from diffvae.errors import DiffvaeError
from diffvae.metrics.sharpness import laplacian_variance, sharpness, sharpness_ratio


def _textured_images(n=16, channels=3, size=24, seed=0):
    """Piecewise-constant blocks with sharp edges, as uint8 (N, C, H, W)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n, channels, size // 4, size // 4))
    return torch.from_numpy(blocks.repeat(4, axis=2).repeat(4, axis=3).astype(np.uint8))


def _gaussian_blur(images, sigma):
    blurred = scipy.ndimage.gaussian_filter(images.numpy().astype(np.float64), sigma=(0, 0, sigma, sigma), mode="reflect")
    return torch.from_numpy(np.clip(np.round(blurred), 0, 255).astype(np.uint8))


def test_laplacian_variance_matches_scipy_laplace_on_the_interior():
    images = _textured_images(n=4)
    gray = images.numpy().astype(np.float64).mean(axis=1) / 255.0
    expected = [scipy.ndimage.laplace(g)[1:-1, 1:-1].var() for g in gray]
    np.testing.assert_allclose(laplacian_variance(images).numpy(), expected, rtol=1e-12)
    assert sharpness(images) == pytest.approx(np.mean(expected), rel=1e-12)


def test_blur_lowers_the_ratio_monotonically():
    real = _textured_images()
    ratios = [sharpness_ratio(_gaussian_blur(real, sigma), real) for sigma in (0.5, 1.0, 2.0, 3.0)]
    assert sharpness_ratio(real, real) == 1.0
    assert all(r < 1 for r in ratios)
    assert all(later < earlier for earlier, later in zip(ratios, ratios[1:]))


def test_constant_images_are_zero_and_cannot_be_the_reference():
    flat = torch.full((3, 1, 8, 8), 128, dtype=torch.uint8)
    assert sharpness(flat) == 0.0
    assert sharpness_ratio(flat, _textured_images(channels=1)) == 0.0
    with pytest.raises(DiffvaeError):
        sharpness_ratio(_textured_images(channels=1), flat)


def test_numpy_input_and_bad_input():
    images = _textured_images(n=2)
    assert sharpness(images.numpy()) == sharpness(images)
    with pytest.raises(DiffvaeError):
        sharpness(images.float())
    with pytest.raises(DiffvaeError):
        sharpness(images[:, :, :2, :2])
