"""Linear probe: how linearly decodable the labels are from a set of features.

A multinomial logistic regression on standardised features (mean 0, variance 1 per dimension,
statistics from the training split only), fitted on the training split, scored as accuracy on
the test split. Used on a model's latents or encoder features to measure representation quality.
"""

from __future__ import annotations

import numpy as np
import torch

from diffvae.errors import DiffvaeError


def _as_numpy(array: np.ndarray | torch.Tensor, dtype: type) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=dtype)


def linear_probe(
    train_feats: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor,
    test_feats: np.ndarray | torch.Tensor,
    test_labels: np.ndarray | torch.Tensor,
    max_iter: int = 1000,
) -> float:
    """Test accuracy of multinomial logistic regression (L2, C = 1, lbfgs) on standardised features."""
    return float(probe_correct(train_feats, train_labels, test_feats, test_labels, max_iter).mean())


def probe_correct(
    train_feats: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor,
    test_feats: np.ndarray | torch.Tensor,
    test_labels: np.ndarray | torch.Tensor,
    max_iter: int = 1000,
) -> np.ndarray:
    """Whether the probe (:func:`linear_probe`) classifies each test image correctly, (N,) bool, in order:
    the per-image outcomes a paired comparison of two latents on the same test images needs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x_train, x_test = _as_numpy(train_feats, np.float64), _as_numpy(test_feats, np.float64)
    y_train, y_test = _as_numpy(train_labels, np.int64), _as_numpy(test_labels, np.int64)
    x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DiffvaeError("linear_probe: features and labels differ in length")
    if x_train.shape[1] != x_test.shape[1]:
        raise DiffvaeError(f"linear_probe: train and test features differ in dimension: {x_train.shape[1]} vs {x_test.shape[1]}")
    if len(x_test) == 0 or len(np.unique(y_train)) < 2:
        raise DiffvaeError("linear_probe needs a non-empty test set and at least two classes in training")
    if not (np.isfinite(x_train).all() and np.isfinite(x_test).all()):
        raise DiffvaeError("linear_probe: features contain NaN or infinite values")
    scaler = StandardScaler().fit(x_train)
    classifier = LogisticRegression(max_iter=max_iter).fit(scaler.transform(x_train), y_train)
    return classifier.predict(scaler.transform(x_test)) == y_test
