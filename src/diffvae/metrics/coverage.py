"""Class coverage of generated samples: is every class of the data generated, and about as often as it should be?

The feature network's classifier (:func:`diffvae.metrics.features.recognisability`) puts each sample in a class;
its histogram (the share of samples predicted as each class) is compared with the share each class should have.
``diffvae eval`` passes the **held-out split's label frequencies** as that expected share (not 1/K), so a data set
whose classes are unequal is measured against its own mix.

* ``class_entropy_ratio`` — the histogram's entropy over its maximum, H(p) / log₂ K, in [0, 1]: 1 when the samples
  cover the K classes evenly, log₂ 2 / log₂ K when they fall in two, 0 when in one (mode collapse). Its maximum is
  that of an even histogram, so with unequal expected classes a perfect model scores H(expected) / log₂ K < 1.
* ``classes_below_half`` — the share of the expected classes (expected share > 0) whose generated share is below
  half their expected share.
* ``classes_missing`` — how many expected classes no sample was put in.
* ``class_entropy_ratio_ci95`` (:func:`entropy_ratio_interval`) — a jackknife interval over the samples around
  the ratio.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from diffvae.errors import DiffvaeError


def _shares(values, what: str) -> np.ndarray:
    shares = np.asarray(values, dtype=np.float64)
    if shares.ndim != 1 or shares.size < 1 or not np.isfinite(shares).all() or (shares < 0).any() or shares.sum() <= 0:
        raise DiffvaeError(f"{what} must be a non-empty vector of non-negative counts or shares, got {values!r}")
    return shares / shares.sum()


def entropy_bits(shares: np.ndarray) -> float:
    """−Σ p log₂ p over the non-zero shares."""
    nonzero = shares[shares > 0]
    return float(-(nonzero * np.log2(nonzero)).sum()) + 0.0  # + 0.0: one class gives 0, not −0


def entropy_ratio(shares: np.ndarray) -> float:
    """H(p) / log₂ K for a histogram of K classes (1 for K = 1: one class is all there is to cover)."""
    return 1.0 if shares.size == 1 else entropy_bits(shares) / math.log2(shares.size)


def label_coverage(histogram, labels, num_classes: int) -> dict:
    """:func:`class_coverage` of ``histogram`` against the frequencies of the integer class ``labels`` (e.g. the
    held-out split's) over ``num_classes`` classes."""
    return class_coverage(histogram, np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes))


def class_coverage(histogram, expected) -> dict:
    """``class_entropy_ratio``, ``classes_below_half`` and ``classes_missing`` (see the module) of the generated
    class ``histogram`` (counts or shares, length K) against the ``expected`` shares (counts or shares, length K)."""
    generated, wanted = _shares(histogram, "the class histogram"), _shares(expected, "the expected class shares")
    if generated.size != wanted.size:
        raise DiffvaeError(f"the class histogram has {generated.size} classes but the expected shares {wanted.size}")
    present = wanted > 0
    return {
        "class_entropy_ratio": entropy_ratio(generated),
        "classes_below_half": float((generated[present] < wanted[present] / 2).mean()),
        "classes_missing": int((generated[present] == 0).sum()),
    }


def entropy_ratio_interval(counts, level: float = 0.95) -> tuple[float, float]:
    """θ̂ ± z·s of the class-entropy ratio θ̂ of integer class ``counts`` of N ≥ 2 samples, s the delete-one
    jackknife over the samples (as the other sample figures, :func:`diffvae.metrics.paired.metric_interval`):
    an interval for the figure at this N, which contains it. Deleting any sample of class k gives the same
    θ₍k₎ (the counts less one in class k), so s² = (N − 1)/N · Σₖ cₖ (θ₍k₎ − θ̄)², θ̄ = Σₖ cₖ θ₍k₎ / N.
    Clipped to [0, 1], the ratio's range (every sample in one class: a spread of 0, [0, 0]).

    Simulated (N = 100–1000, 500 repeats), it covered the expected ratio at N in 93–99% of repeats for an even
    model and for skewed ones; at an exactly even collapse onto a few classes, where the entropy is stationary
    and the jackknife's first-order spread vanishes, in only 74–85% (a narrow interval around a low ratio)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size < 1 or (counts < 0).any() or (counts != np.round(counts)).any() or counts.sum() < 2:
        raise DiffvaeError(f"class counts must be non-negative integers of at least 2 samples, got {counts.tolist()!r}")
    n = counts.sum()
    deleted = [entropy_ratio((counts - np.eye(counts.size)[k]) / (n - 1)) if counts[k] else 0.0 for k in range(counts.size)]
    deleted = np.asarray(deleted)
    mean = float((counts * deleted).sum() / n)
    sd = math.sqrt((n - 1) / n * float((counts * (deleted - mean) ** 2).sum()))
    value, half = entropy_ratio(counts / n), NormalDist().inv_cdf(0.5 + level / 2.0) * sd
    return (max(value - half, 0.0), min(value + half, 1.0))
