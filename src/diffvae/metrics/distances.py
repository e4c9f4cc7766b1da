"""Distances between two sets of feature vectors: FID, KID and k-NN precision/recall.

Every function takes two (N, d) arrays (numpy or torch) of features of the same network and
computes in float64. Which network produced them is the caller's business
(:mod:`diffvae.metrics.features`); the numbers are only comparable for the same one.
"""

from __future__ import annotations

import numpy as np
import torch

from diffvae.errors import DiffvaeError

ArrayLike = np.ndarray | torch.Tensor


def as_feature_matrix(features: ArrayLike, name: str = "features", min_rows: int = 2) -> torch.Tensor:
    """A finite (N, d) float64 CPU tensor from a numpy array or torch tensor, or a DiffvaeError."""
    matrix = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    matrix = matrix.detach().cpu().to(torch.float64)
    if matrix.ndim != 2:
        raise DiffvaeError(f"{name} must be a 2-D (N, d) array, got shape {tuple(matrix.shape)}")
    if matrix.shape[0] < min_rows:
        raise DiffvaeError(f"{name} needs at least {min_rows} rows, got {matrix.shape[0]}")
    if not torch.isfinite(matrix).all():
        raise DiffvaeError(f"{name} contain NaN or infinite values")
    return matrix


def _check_same_dim(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise DiffvaeError(f"feature sets differ in dimension: {a.shape[1]} vs {b.shape[1]}")


def mean_and_covariance(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """μ = mean of the rows and the unbiased covariance Σ = (X − μ)ᵀ(X − μ) / (N − 1)."""
    mean = features.mean(dim=0)
    centered = features - mean
    return mean, centered.T @ centered / (features.shape[0] - 1)


def psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Square root S of a symmetric positive semi-definite matrix (S S = M, S symmetric), via
    M = V diag(λ) Vᵀ → S = V diag(√max(λ, 0)) Vᵀ; rounding's tiny negative eigenvalues become 0.
    Batched over leading dimensions: (..., d, d)."""
    symmetric = 0.5 * (matrix + matrix.mT)
    eigenvalues, eigenvectors = torch.linalg.eigh(symmetric)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt().unsqueeze(-2)) @ eigenvectors.mT


def trace_sqrt_product(sigma_a: torch.Tensor, sigma_b: torch.Tensor) -> torch.Tensor:
    """Tr (Σa Σb)^{1/2} for symmetric PSD Σa, Σb (batched over leading dimensions).

    Σa Σb has non-negative eigenvalues λᵢ and Tr (Σa Σb)^{1/2} = Σᵢ √λᵢ, computed with ``eigvalsh`` of a
    similar symmetric PSD matrix: Lᵀ Σb L when Σa = L Lᵀ is positive definite (Cholesky; Σa Σb =
    L (Lᵀ Σb L) L⁻¹), else √Σa Σb √Σa (conjugate by √Σa; eigendecomposition, for singular Σa).
    """
    d = sigma_a.shape[-1]
    a, b = sigma_a.reshape(-1, d, d), sigma_b.reshape(-1, d, d)
    chol, info = torch.linalg.cholesky_ex(a)
    product = chol.mT @ b @ chol
    singular = info != 0
    if singular.any():
        root = psd_sqrt(a[singular])
        product[singular] = root @ b[singular] @ root
    eigenvalues = torch.linalg.eigvalsh(0.5 * (product + product.mT))
    return eigenvalues.clamp(min=0).sqrt().sum(-1).reshape(sigma_a.shape[:-2])


def frechet_distances(mean_a: torch.Tensor, sigma_a: torch.Tensor, mean_b: torch.Tensor, sigma_b: torch.Tensor) -> torch.Tensor:
    """Fréchet (2-Wasserstein²) distance between N(μa, Σa) and N(μb, Σb), batched: means (..., d),
    covariances (..., d, d) → (...):

        d² = ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^{1/2})
    """
    mean_term = (mean_a - mean_b).square().sum(-1)
    traces = sigma_a.diagonal(dim1=-2, dim2=-1).sum(-1) + sigma_b.diagonal(dim1=-2, dim2=-1).sum(-1)
    return mean_term + traces - 2.0 * trace_sqrt_product(sigma_a, sigma_b)


def frechet_distance(mean_a: torch.Tensor, sigma_a: torch.Tensor, mean_b: torch.Tensor, sigma_b: torch.Tensor) -> float:
    """:func:`frechet_distances` of one pair of Gaussians, as a float."""
    return float(frechet_distances(mean_a, sigma_a, mean_b, sigma_b))


def fid(a: ArrayLike, b: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two (N, d) feature sets (Heusel et al. 2017):
    :func:`frechet_distance` of their means and unbiased covariances. 0 for identical sets."""
    a, b = as_feature_matrix(a, "first feature set"), as_feature_matrix(b, "second feature set")
    _check_same_dim(a, b)
    return frechet_distance(*mean_and_covariance(a), *mean_and_covariance(b))


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The KID kernel k(x, y) = (x·y / d + 1)³ for all pairs of rows (Bińkowski et al. 2018)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased estimate of MMD² between the distributions of the rows of x (m×d) and y (n×d):

        MMD²_u = Σ_{i≠j} k(xᵢ, xⱼ) / (m(m−1)) + Σ_{i≠j} k(yᵢ, yⱼ) / (n(n−1)) − 2 Σ_{i,j} k(xᵢ, yⱼ) / (mn)
    """
    m, n = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * k_xy.sum() / (m * n))


def kid(
    a: ArrayLike,
    b: ArrayLike,
    subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and (population) standard deviation of
    :func:`unbiased_mmd2` over ``subsets`` random subsets of ``subset_size`` rows drawn without
    replacement from each set; ``subset_size`` is clipped to the smaller set's size."""
    a, b = as_feature_matrix(a, "first feature set"), as_feature_matrix(b, "second feature set")
    _check_same_dim(a, b)
    if subsets < 1:
        raise DiffvaeError(f"kid needs at least one subset, got subsets={subsets}")
    size = min(subset_size, a.shape[0], b.shape[0])
    if size < 2:
        raise DiffvaeError(f"kid needs subsets of at least 2 rows, got subset_size={subset_size}")
    scores = torch.tensor([
        unbiased_mmd2(a[torch.randperm(a.shape[0], generator=generator)[:size]],
                      b[torch.randperm(b.shape[0], generator=generator)[:size]])
        for _ in range(subsets)
    ], dtype=torch.float64)
    return float(scores.mean()), float(scores.std(unbiased=False))


def _pairwise_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ‖xᵢ − yⱼ‖ between all rows (float64, via ‖x‖² + ‖y‖² − 2 x·y)."""
    return torch.cdist(x, y, compute_mode="use_mm_for_euclid_dist")


def knn_radii(features: torch.Tensor, k: int, chunk: int = 512) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row of the same set (itself excluded)."""
    radii = []
    for start in range(0, features.shape[0], chunk):
        distances = _pairwise_distances(features[start:start + chunk], features)
        rows = torch.arange(distances.shape[0])
        distances[rows, rows + start] = torch.inf
        radii.append(distances.kthvalue(k, dim=1).values)
    return torch.cat(radii)


def fraction_in_manifold(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk: int = 512) -> float:
    """Fraction of query rows q with ‖q − sᵢ‖ ≤ rᵢ for at least one support row sᵢ: the share of
    queries inside the union of k-NN balls around the support set."""
    inside = [
        (_pairwise_distances(queries[start:start + chunk], support) <= radii[None, :]).any(dim=1)
        for start in range(0, queries.shape[0], chunk)
    ]
    return float(torch.cat(inside).to(torch.float64).mean())


def precision_recall(real: ArrayLike, fake: ArrayLike, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its points with radius the distance to the
    point's k-th nearest neighbour within the set (itself excluded).
    precision = share of fake points inside the real manifold (how realistic samples are);
    recall = share of real points inside the fake manifold (how much of the data is covered).
    """
    real, fake = as_feature_matrix(real, "real features"), as_feature_matrix(fake, "fake features")
    _check_same_dim(real, fake)
    if k < 1 or k >= min(real.shape[0], fake.shape[0]):
        raise DiffvaeError(f"precision_recall needs 1 <= k < the size of each set, got k={k}")
    return {
        "precision": fraction_in_manifold(fake, real, knn_radii(real, k)),
        "recall": fraction_in_manifold(real, fake, knn_radii(fake, k)),
    }
