"""path_smoothness and roundtrip_error on cases with known answers."""

import math

import numpy as np
import pytest
import torch

from diffvae.errors import DiffvaeError
from diffvae.metrics.interpolation import path_smoothness, roundtrip_error


def test_even_linear_path_is_perfectly_smooth_and_a_jump_is_not():
    rng = np.random.default_rng(0)
    start, end = rng.normal(size=(2, 1, 4, 4))
    weights = np.linspace(0, 1, 9)[:, None, None, None]
    even = (1 - weights) * start + weights * end  # equal steps
    jump = np.where(weights < 0.5, start, end)    # all change in one step
    frames = np.stack([even, jump])
    assert path_smoothness(even[None]) == pytest.approx(0.0, abs=1e-12)
    # jump: steps (0,…,0,D,0,…,0) over 8 steps → mean D/8, population std D·√7/8 → cv = √7
    assert path_smoothness(jump[None]) == pytest.approx(math.sqrt(7), rel=1e-12)
    assert path_smoothness(frames) == pytest.approx(math.sqrt(7) / 2, rel=1e-12)


def test_path_smoothness_matches_a_direct_computation_and_is_scale_free():
    frames = np.random.default_rng(1).integers(0, 256, size=(3, 5, 1, 6, 6)).astype(np.uint8)
    expected = []
    for path in frames.astype(np.float64):
        steps = [np.linalg.norm(path[k + 1] - path[k]) for k in range(len(path) - 1)]
        expected.append(np.std(steps) / np.mean(steps))
    assert path_smoothness(frames) == pytest.approx(np.mean(expected), rel=1e-12)
    assert path_smoothness(torch.from_numpy(frames) / 127.5 - 1) == pytest.approx(np.mean(expected), rel=1e-6)
    assert path_smoothness(np.zeros((2, 4, 3))) == 0.0
    with pytest.raises(DiffvaeError):
        path_smoothness(np.zeros((2, 2, 3)))


def test_roundtrip_error_on_signed_scale_and_uint8():
    x = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    x_rec = x.clone()
    x_rec[0, 0, 0, 0] = 255  # one pixel off by the full range 2 on [-1, 1]
    mse = 4.0 / x.numel()
    result = roundtrip_error(x, x_rec)
    assert result["mse"] == pytest.approx(mse, rel=1e-12)
    assert result["psnr_db"] == pytest.approx(10 * math.log10(255 ** 2 / (255 ** 2 / x.numel())), rel=1e-12)
    # a float reconstruction on [-1, 1] is compared on the same scale as the uint8 target
    assert roundtrip_error(x, x_rec.double() / 127.5 - 1) == pytest.approx(result)
    assert roundtrip_error(x.numpy(), x.numpy()) == {"mse": 0.0, "psnr_db": math.inf}
    with pytest.raises(DiffvaeError):
        roundtrip_error(x, x[:1])
