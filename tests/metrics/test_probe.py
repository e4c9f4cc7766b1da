"""Linear probe: separates linearly separable classes, chance on shuffled labels."""

import numpy as np
import pytest
import torch

from diffvae.errors import DiffvaeError
from diffvae.metrics.probe import linear_probe


def _blobs(n_per_class, classes, dim, separation, seed, centre_seed=0):
    """Unit Gaussians around class centres drawn once per ``centre_seed``; ``seed`` draws the points."""
    centres = np.random.default_rng(centre_seed).normal(size=(classes, dim)) * separation
    labels = np.repeat(np.arange(classes), n_per_class)
    features = centres[labels] + np.random.default_rng(seed).normal(size=(len(labels), dim))
    return features, labels


def test_separable_classes_are_decoded():
    x_train, y_train = _blobs(100, 5, 16, separation=4.0, seed=0)
    x_test, y_test = _blobs(100, 5, 16, separation=4.0, seed=1)  # fresh points, same classes
    # features on wildly different scales: standardisation must make this irrelevant
    scales = 10.0 ** np.linspace(-3, 3, 16)
    assert linear_probe(torch.from_numpy(x_train * scales), y_train, x_test * scales, torch.from_numpy(y_test)) >= 0.98


def test_shuffled_labels_give_chance_accuracy():
    classes, n_test = 10, 2000
    x_train, y_train = _blobs(100, classes, 16, separation=4.0, seed=2)
    x_test, y_test = _blobs(n_test // classes, classes, 16, separation=4.0, seed=3)
    rng = np.random.default_rng(4)
    accuracy = linear_probe(x_train, rng.permutation(y_train), x_test, rng.permutation(y_test))
    chance, sd = 1 / classes, np.sqrt(0.1 * 0.9 / n_test)
    assert abs(accuracy - chance) < 5 * sd


def test_bad_input():
    x, y = _blobs(10, 2, 3, 1.0, 0)
    with pytest.raises(DiffvaeError):
        linear_probe(x, y[:-1], x, y)
    with pytest.raises(DiffvaeError):
        linear_probe(x, np.zeros_like(y), x, y)
    with pytest.raises(DiffvaeError):
        linear_probe(x, y, x[:, :2], y)
