"""Intervals for the printed figures and paired tests between two families — pure functions of tensors.

**The estimand of a sample metric.** The printed FID is *FID@N*: the Fréchet distance between the N
generated samples' features and the shared reference set (the held-out split), at the sample count N
every family shares. Its interval is for that quantity, E[FID@N | reference] over draws of the
generated set, so it is built by resampling the generated set only and is centred on the printed
value: θ̂ ± z·s, with s the spread of θ̂ over generated sets. s is estimated by the delete-one
jackknife of the generated rows (:func:`jackknife_sd`) — the bootstrap of a resample with repeated
rows inflates FID's spread when d ≳ N (benchmarks/bench_calibration.py measures both). KID (the
unbiased MMD²) and the k-NN precision/recall get the same treatment.

**Paired comparisons** (:class:`Comparison`, one estimand: metric(a) − metric(b), the printed
difference):

* sample metrics — :func:`paired_sample_difference`: by default the paired jackknife (delete-one over
  each family's generated rows, and over the shared reference's rows deleted from both sides at once,
  so the reference's own noise cancels in the difference), or the paired bootstrap (each generated set
  resampled independently, ONE reference resample shared by both per replicate; its spread is inflated
  for FID at d ≳ N, 3–4.6× at d = 128, N = 50…200); normal interval around the observed difference;
* per-item figures measured on the same items (bits/dim on the same held-out images, probe
  correctness on the same test images) — :func:`paired_mean_difference`: a paired t-test on the
  per-item differences;
* repeated timings — :func:`welch_difference`: Welch's unequal-variance t-test;
* per-sample figures of independent samples against a shared reference (sharpness) —
  :func:`paired_scalar_bootstrap`.

Several comparisons behind one verdict are controlled by :func:`holm`; a comparison looked at
again after more evaluation uses :class:`SequentialPlan` (alpha spent by a Bonferroni split over at
most K looks: valid under any stopping rule). :func:`samples_for_power` is the 80%-power sample size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Callable, Sequence

import torch
from scipy import stats

from diffvae.errors import DiffvaeError
from diffvae.metrics.bootstrap import (
    _rows_per_chunk,
    counts_from_indices,
    fid_replicates,
    mmd2_replicates,
    precision_recall_replicates,
    resample_indices,
    weighted_mean_and_covariance,
)
from diffvae.metrics.distances import as_feature_matrix, frechet_distances, mean_and_covariance
from diffvae.metrics.bootstrap import wilson_interval

ALPHA = 0.05
POWER = 0.8
DEFAULT_RESAMPLES = 400
SAMPLE_METRICS = ("fid", "kid", "precision", "recall")
LOWER_IS_BETTER = {"fid": True, "kid": True, "precision": False, "recall": False, "bpd": True,
                   "ms_per_sample": True, "probe_accuracy": False, "midpoint_fid": True, "sharpness_gap": True,
                   "conditional_accuracy": False}


def _z(level: float = 0.95) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2.0)


# ----------------------------------------------------------------------------- one comparison

@dataclass(frozen=True)
class Comparison:
    """metric(a) − metric(b) with its 95% interval and two-sided p-value (H0: no difference)."""

    metric: str
    difference: float
    ci95: tuple[float, float]
    p_value: float
    se: float  # standard error of the difference
    n: int  # sample size per side (items, samples or repeats)
    method: str
    lower_is_better: bool = True
    n_scales: bool = True  # the difference's estimand does not depend on n (False: FID@N, k-NN precision/recall)
    extra: dict = field(default_factory=dict)

    def decided(self, alpha: float = ALPHA) -> str | None:
        """"a" or "b", the better one, when p < alpha; else None."""
        if not (self.p_value < alpha) or self.difference == 0:
            return None
        return "a" if (self.difference < 0) == self.lower_is_better else "b"

    def entry(self, question: str, a: str, b: str, alpha: float = ALPHA, note: str = "") -> dict:
        """The comparison as one entry of ``results["comparisons"]`` (or ``diffvae score``'s), decided at
        ``alpha`` (already adjusted for multiplicity and looks, which ``note`` states)."""
        finite = lambda v: v if isinstance(v, (int, float)) and math.isfinite(v) else None  # noqa: E731
        return {"question": question, "metric": self.metric, "a": a, "b": b, "difference": finite(self.difference),
                "ci95": [finite(self.ci95[0]), finite(self.ci95[1])], "p_value": finite(self.p_value),
                "decided": self.decided(alpha), "method": self.method + note, "lower_is_better": self.lower_is_better,
                "n": self.n, "n_to_decide": None if self.decided(alpha) else self.n_to_decide(alpha)}

    def n_to_decide(self, alpha: float = ALPHA, power: float = POWER) -> int | None:
        """:func:`samples_for_power` on this difference, or None where it cannot be computed honestly."""
        if not self.n_scales:
            return None
        return samples_for_power(self.difference, self.se * math.sqrt(self.n), alpha, power)


def normal_comparison(metric: str, difference: float, se: float, n: int, method: str, level: float = 0.95,
                      **kw) -> Comparison:
    """difference ± z·se and p = 2(1 − Φ(|difference| / se)); se = 0 gives a point interval."""
    if not (math.isfinite(difference) and math.isfinite(se)):
        return Comparison(metric, difference, (math.nan, math.nan), math.nan, se, n, method, **kw)
    half = _z(level) * se
    p = (0.0 if difference != 0 else 1.0) if se == 0 else 2.0 * NormalDist().cdf(-abs(difference) / se)
    return Comparison(metric, difference, (difference - half, difference + half), p, se, n, method, **kw)


def t_comparison(metric: str, difference: float, se: float, df: float, n: int, method: str, level: float = 0.95,
                 **kw) -> Comparison:
    """difference ± t_{df}·se and the two-sided t-test p-value."""
    if not (math.isfinite(difference) and math.isfinite(se) and df > 0):
        return Comparison(metric, difference, (math.nan, math.nan), math.nan, se, n, method, **kw)
    half = float(stats.t.ppf(0.5 + level / 2.0, df)) * se
    p = (0.0 if difference != 0 else 1.0) if se == 0 else float(2.0 * stats.t.sf(abs(difference) / se, df))
    return Comparison(metric, difference, (difference - half, difference + half), p, se, n, method, **kw)


def paired_mean_difference(metric: str, a: torch.Tensor, b: torch.Tensor, *, lower_is_better: bool = True,
                           unit: str = "held-out images") -> Comparison:
    """Paired t-test on per-item values measured on the same items in the same order:
    d̄ = mean(aᵢ − bᵢ), se = sd(aᵢ − bᵢ)/√n, t with n − 1 degrees of freedom."""
    a, b = a.double().flatten(), b.double().flatten()
    if a.numel() != b.numel() or a.numel() < 2:
        raise DiffvaeError(f"a paired comparison needs the same items (≥ 2) on both sides, got {a.numel()} and {b.numel()}")
    d = a - b
    n = d.numel()
    return t_comparison(metric, float(d.mean()), float(d.std()) / math.sqrt(n), n - 1, n,
                        f"paired t-test over the same {n} {unit}", lower_is_better=lower_is_better)


def paired_proportion_difference(metric: str, a: torch.Tensor, b: torch.Tensor, *, lower_is_better: bool = False,
                                 unit: str = "test images", level: float = 0.95) -> Comparison:
    """Difference of two proportions of successes (0/1) on the same items: (n₁₀ − n₀₁)/n with n₁₀ the items
    only a got right. Interval: Agresti–Min (0.5 added to each of the four cells, a Wald interval on n + 2),
    widened to contain the observed difference; p-value: the exact McNemar test (binomial on the discordant
    items)."""
    a, b = a.double().flatten(), b.double().flatten()
    if a.numel() != b.numel() or a.numel() < 1 or not bool(((a == 0) | (a == 1)).all() and ((b == 0) | (b == 1)).all()):
        raise DiffvaeError("a paired proportion needs 0/1 outcomes on the same items on both sides")
    n = a.numel()
    n10, n01 = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    difference = (n10 - n01) / n
    p10, p01 = (n10 + 0.5) / (n + 2), (n01 + 0.5) / (n + 2)
    se = math.sqrt(max(p10 + p01 - (p10 - p01) ** 2, 0.0) / (n + 2))
    half = _z(level) * se
    ci = (min(p10 - p01 - half, difference), max(p10 - p01 + half, difference))
    p = float(stats.binomtest(n10, n10 + n01, 0.5).pvalue) if n10 + n01 else 1.0
    return Comparison(metric, difference, ci, p, se, n, f"paired over the same {n} {unit}: exact McNemar test, "
                      "Agresti–Min interval", lower_is_better=lower_is_better)


def independent_proportion_difference(metric: str, p_a: float, n_a: int, p_b: float, n_b: int, *,
                                      lower_is_better: bool = False, level: float = 0.95) -> Comparison:
    """Two proportions from independent samples (each family's own samples, e.g. conditional accuracy):
    d = p_a − p_b with Newcombe's hybrid score interval (his method 10: the sides' Wilson intervals (l, u) combined,
    d − √((p_a − l_a)² + (u_b − p_b)²) to d + √((u_a − p_a)² + (p_b − l_b)²)) and the pooled two-proportion z-test,
    z = d / √(p̄(1 − p̄)(1/n_a + 1/n_b)) (the χ² test of the 2×2 table without continuity correction)."""
    method = f"two independent proportions ({n_a} and {n_b} samples): Newcombe hybrid score interval, pooled z-test"
    if n_a < 1 or n_b < 1:
        return Comparison(metric, p_a - p_b, (math.nan, math.nan), math.nan, math.nan, min(n_a, n_b), method,
                          lower_is_better=lower_is_better)
    (la, ua), (lb, ub) = wilson_interval(p_a, n_a, level), wilson_interval(p_b, n_b, level)
    d = p_a - p_b
    ci = (d - math.hypot(p_a - la, ub - p_b), d + math.hypot(ua - p_a, p_b - lb))
    pooled = (p_a * n_a + p_b * n_b) / (n_a + n_b)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    p = (0.0 if d != 0 else 1.0) if se0 == 0 else 2.0 * NormalDist().cdf(-abs(d) / se0)
    se = math.sqrt(max(p_a * (1 - p_a), 0.0) / n_a + max(p_b * (1 - p_b), 0.0) / n_b)
    return Comparison(metric, d, ci, p, se, min(n_a, n_b), method, lower_is_better=lower_is_better)


def welch_difference(metric: str, a: torch.Tensor, b: torch.Tensor, *, lower_is_better: bool = True,
                     unit: str = "timed repeats") -> Comparison:
    """Welch's t-test on two independent sets of repeats: se² = s_a²/n_a + s_b²/n_b,
    Welch–Satterthwaite degrees of freedom."""
    a, b = a.double().flatten(), b.double().flatten()
    if a.numel() < 2 or b.numel() < 2:
        raise DiffvaeError(f"Welch's test needs ≥ 2 repeats per side, got {a.numel()} and {b.numel()}")
    va, vb = float(a.var()) / a.numel(), float(b.var()) / b.numel()
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (a.numel() - 1) + vb ** 2 / (b.numel() - 1)) if va + vb > 0 else float(a.numel() + b.numel() - 2)
    return t_comparison(metric, float(a.mean() - b.mean()), se, df, min(a.numel(), b.numel()),
                        f"Welch t-test over {a.numel()} and {b.numel()} {unit}", lower_is_better=lower_is_better)


# ----------------------------------------------------------------------------- sample metrics

def _resample_counts(n: int, n_boot: int, generator: torch.Generator | None) -> torch.Tensor:
    return counts_from_indices(resample_indices(n, n_boot, generator), n)


def metric_of_counts(metric: str, reference: torch.Tensor, generated: torch.Tensor, counts_ref: torch.Tensor,
                     counts_gen: torch.Tensor, k: int = 3) -> torch.Tensor:
    """(B,) ``metric`` (fid, kid, precision, recall) of each weighted (resampled) pair of sets."""
    if metric in ("fid", "midpoint_fid"):
        return fid_replicates(reference, generated, counts_ref, counts_gen)
    if metric == "kid":
        return mmd2_replicates(reference, generated, counts_ref, counts_gen)
    if metric in ("precision", "recall"):
        return precision_recall_replicates(reference, generated, counts_ref, counts_gen, k=k)[metric]
    raise DiffvaeError(f"unknown sample metric {metric!r}")


def estimate(metric: str, reference: torch.Tensor, generated: torch.Tensor, k: int = 3) -> float:
    """``metric`` of all rows (each row once): FID@N, the unbiased MMD², or k-NN precision/recall."""
    ones = [torch.ones(1, x.shape[0], dtype=torch.float64) for x in (reference, generated)]
    return float(metric_of_counts(metric, reference, generated, *ones, k=k)[0])


def jackknife_counts(n: int) -> torch.Tensor:
    """(n, n) counts of the n delete-one subsets: row i leaves row i out."""
    return torch.ones(n, n, dtype=torch.float64) - torch.eye(n, dtype=torch.float64)


def jackknife_sd(metric: str, reference: torch.Tensor, generated: torch.Tensor, k: int = 3) -> float:
    """Delete-one jackknife standard deviation of ``metric`` over the generated rows (the reference fixed):
    s² = (n − 1)/n · Σᵢ (θ₍ᵢ₎ − θ̄₍·₎)²."""
    n = generated.shape[0]
    ref_once = torch.ones(1, reference.shape[0], dtype=torch.float64)
    step = max(1, min(n, _rows_per_chunk(generated.shape[1] ** 2)))
    values = torch.cat([metric_of_counts(metric, reference, generated, ref_once.expand(min(step, n - s), -1),
                                         jackknife_counts(n)[s:s + step], k=k) for s in range(0, n, step)])
    return math.sqrt((n - 1) / n * float((values - values.mean()).square().sum()))


def bootstrap_sd(metric: str, reference: torch.Tensor, generated: torch.Tensor, n_boot: int = DEFAULT_RESAMPLES,
                 generator: torch.Generator | None = None, k: int = 3) -> float:
    """Spread of ``metric`` over bootstrap resamples of the generated rows (the reference fixed)."""
    counts = _resample_counts(generated.shape[0], n_boot, generator)
    ref_once = torch.ones(n_boot, reference.shape[0], dtype=torch.float64)
    return float(metric_of_counts(metric, reference, generated, ref_once, counts, k=k).std())


def metric_interval(metric: str, reference, generated, level: float = 0.95, k: int = 3) -> tuple[float, tuple[float, float]]:
    """(θ̂, θ̂ ± z·s_jackknife): the printed figure at this N against this reference and its interval,
    which contains it. For precision/recall the interval is also widened to the Wilson interval of the
    share of queries (at a share of 0 or 1 the jackknife spread is 0)."""
    reference, generated = as_feature_matrix(reference, "reference features"), as_feature_matrix(generated, "generated features")
    value = estimate(metric, reference, generated, k)
    half = _z(level) * jackknife_sd(metric, reference, generated, k)
    low, high = value - half, value + half
    if metric in ("precision", "recall"):
        n = generated.shape[0] if metric == "precision" else reference.shape[0]
        w_low, w_high = wilson_interval(value, n, level)
        low, high = max(0.0, min(low, w_low)), min(1.0, max(high, w_high))
    return value, (low, high)


def paired_replicates(metric: str, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor, n_boot: int,
                      generator: torch.Generator | None = None, share_reference: bool = True, k: int = 3) -> torch.Tensor:
    """(n_boot,) replicates of metric(a) − metric(b): a's and b's rows resampled independently, the
    reference resampled once per replicate and shared by both (or kept whole: ``share_reference=False``)."""
    ca = _resample_counts(a.shape[0], n_boot, generator)
    cb = _resample_counts(b.shape[0], n_boot, generator)
    cr = (_resample_counts(reference.shape[0], n_boot, generator) if share_reference
          else torch.ones(n_boot, reference.shape[0], dtype=torch.float64))
    return metric_of_counts(metric, reference, a, cr, ca, k=k) - metric_of_counts(metric, reference, b, cr, cb, k=k)


def paired_jackknife_se(metric: str, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor, k: int = 3) -> float:
    """Standard error of metric(a) − metric(b) by the delete-one jackknife of each of the three sets: a's rows
    (b, reference fixed), b's rows, and the reference's rows deleted from both sides at once (shared):
    se² = s_a² + s_b² + s_ref²."""
    def deletions(counts: torch.Tensor, gen: torch.Tensor) -> torch.Tensor:
        ref_once = torch.ones(counts.shape[0], reference.shape[0], dtype=torch.float64)
        return metric_of_counts(metric, reference, gen, ref_once, counts, k=k)

    def spread(values: torch.Tensor) -> float:
        n = values.numel()
        return (n - 1) / n * float((values - values.mean()).square().sum())

    by_reference = (_fid_reference_deletions(reference, a, b) if metric in ("fid", "midpoint_fid")
                    else _reference_deletions(metric, reference, a, b, k))
    variance = (spread(deletions(jackknife_counts(a.shape[0]), a)) + spread(deletions(jackknife_counts(b.shape[0]), b))
                + spread(by_reference))
    return math.sqrt(variance)


def _reference_deletions(metric: str, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """(M,) metric(a) − metric(b) with reference row i left out of both."""
    m, step = reference.shape[0], 64
    out = []
    for s in range(0, m, step):
        cr = jackknife_counts(m)[s:s + step]
        ones = [torch.ones(cr.shape[0], x.shape[0], dtype=torch.float64) for x in (a, b)]
        out.append(metric_of_counts(metric, reference, a, cr, ones[0], k=k) - metric_of_counts(metric, reference, b, cr, ones[1], k=k))
    return torch.cat(out)


def _fid_reference_deletions(reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """:func:`_reference_deletions` for FID: each deleted reference's mean and covariance computed once for both."""
    m, step = reference.shape[0], max(1, _rows_per_chunk(reference.numel()))
    ma, sa = mean_and_covariance(a)
    mb, sb = mean_and_covariance(b)
    out = []
    for s in range(0, m, step):
        mr, sr = weighted_mean_and_covariance(reference, jackknife_counts(m)[s:s + step])
        out.append(frechet_distances(mr, sr, ma.expand_as(mr), sa.expand_as(sr))
                   - frechet_distances(mr, sr, mb.expand_as(mr), sb.expand_as(sr)))
    return torch.cat(out)


PAIRED_METHODS = ("jackknife", "bootstrap")


def paired_sample_difference(metric: str, reference, a, b, method: str = "jackknife", n_boot: int = DEFAULT_RESAMPLES,
                             generator: torch.Generator | None = None, k: int = 3, level: float = 0.95) -> Comparison:
    """The paired comparison of two generated feature sets against one shared reference (module docstring): the
    observed difference ± z·se, p from the normal approximation. ``method``: "jackknife" (default: delete-one
    over a's, b's and the shared reference's rows) or "bootstrap" (a's and b's rows resampled, one reference
    resample shared per replicate; its spread is inflated for FID at d ≳ N: benchmarks/bench_calibration.py)."""
    reference = as_feature_matrix(reference, "reference features")
    a, b = as_feature_matrix(a, "first generated features"), as_feature_matrix(b, "second generated features")
    if method not in PAIRED_METHODS:
        raise DiffvaeError(f"paired method must be one of {', '.join(PAIRED_METHODS)}, got {method!r}")
    difference = estimate(metric, reference, a, k) - estimate(metric, reference, b, k)
    if method == "jackknife":
        se = paired_jackknife_se(metric, reference, a, b, k)
        text = "paired jackknife: delete-one over each generated set and the shared reference; normal interval"
    else:
        if n_boot < 2:
            raise DiffvaeError(f"a paired bootstrap needs at least 2 resamples, got {n_boot}")
        se = float(paired_replicates(metric, reference, a, b, n_boot, generator, k=k).std())
        text = f"paired bootstrap: each generated set resampled, one reference resample shared, {n_boot} resamples; normal interval"
    return normal_comparison(metric, difference, se, min(a.shape[0], b.shape[0]), text, level,
                             lower_is_better=LOWER_IS_BETTER.get(metric, True), n_scales=metric == "kid")


def paired_scalar_bootstrap(metric: str, statistic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                            a: torch.Tensor, b: torch.Tensor, reference: torch.Tensor, n_boot: int = DEFAULT_RESAMPLES,
                            generator: torch.Generator | None = None, lower_is_better: bool = True,
                            n_scales: bool = True) -> Comparison:
    """statistic(mean_a, mean_ref) − statistic(mean_b, mean_ref) for per-sample values a, b (independent
    samples) and a shared per-item reference: weighted means of resampled counts, the reference resample
    shared. ``statistic`` maps (B,) means to (B,) values."""
    a, b, reference = (x.double().flatten() for x in (a, b, reference))

    def means(x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return counts @ x / counts.sum(1)

    once = lambda x: torch.ones(1, x.numel(), dtype=torch.float64)  # noqa: E731
    difference = float(statistic(means(a, once(a)), means(reference, once(reference)))[0]
                       - statistic(means(b, once(b)), means(reference, once(reference)))[0])
    cr = _resample_counts(reference.numel(), n_boot, generator)
    ca, cb = _resample_counts(a.numel(), n_boot, generator), _resample_counts(b.numel(), n_boot, generator)
    replicates = statistic(means(a, ca), means(reference, cr)) - statistic(means(b, cb), means(reference, cr))
    method = f"paired bootstrap: each sample set resampled, one reference resample shared, {n_boot} resamples; normal interval"
    return normal_comparison(metric, difference, float(replicates.std()), min(a.numel(), b.numel()), method,
                             lower_is_better=lower_is_better, n_scales=n_scales)


def sharpness_gap(sample_mean: torch.Tensor, real_mean: torch.Tensor) -> torch.Tensor:
    """|log(mean sharpness of samples / mean sharpness of real data)|: 0 = as sharp as real data."""
    return (sample_mean / real_mean).log().abs()


# ----------------------------------------------------------------------------- several comparisons

def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error ≤ α when each adjusted p < α rejects):
    p̃₍ᵢ₎ = max_{j ≤ i} min(1, (m − j + 1) p₍ⱼ₎) over the p-values sorted ascending."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (math.inf if not math.isfinite(p_values[i]) else p_values[i]))
    adjusted = [math.nan] * m
    running = 0.0
    for rank, i in enumerate(order):
        p = p_values[i]
        if not math.isfinite(p):
            adjusted[i] = math.nan
            continue
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def samples_for_power(difference: float, sd_per_unit: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Per-side sample size at which a two-sided level-alpha test of a paired difference has ``power``,
    if the true difference equals ``difference`` and one unit's sd is ``sd_per_unit``:

        n = ((z_{1−α/2} + z_{power}) · σ / δ)², rounded up;   None when δ = 0 or σ is unknown."""
    if not (math.isfinite(difference) and math.isfinite(sd_per_unit)) or difference == 0 or sd_per_unit <= 0:
        return None
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return math.ceil((z * sd_per_unit / abs(difference)) ** 2 * (1 - 1e-12))


@dataclass(frozen=True)
class SequentialPlan:
    """Alpha spending over at most ``looks`` looks at the same comparisons: look j tests at α/K
    (a Bonferroni split), so the chance of any false decision over all looks is ≤ α whatever rule
    decides to stop or to look again."""

    alpha: float = ALPHA
    looks: int = 1

    def level(self, look: int) -> float:
        if not 1 <= look <= self.looks:
            raise DiffvaeError(f"look {look} is outside 1..{self.looks}")
        return self.alpha / self.looks

    def describe(self) -> str:
        return ("" if self.looks == 1 else
                f"; alpha spending: α = {self.alpha:g} split evenly over at most {self.looks} looks (Bonferroni)")


def sample_comparisons(reference, a, b, sharp_a: torch.Tensor | None = None, sharp_b: torch.Tensor | None = None,
                       sharp_reference: torch.Tensor | None = None, generator: torch.Generator | None = None,
                       metrics: Sequence[str] = SAMPLE_METRICS) -> list[Comparison]:
    """The paired comparison of two generated sets (features a, b) against one reference on every sample
    metric, and on the sharpness gap when the per-image sharpness of both sets and the reference is given:
    what ``diffvae score A B`` prints and compare's verdicts read."""
    out = [paired_sample_difference(metric, reference, a, b) for metric in metrics]
    if sharp_a is not None and sharp_b is not None and sharp_reference is not None:
        out.append(paired_scalar_bootstrap("sharpness_gap", sharpness_gap, sharp_a, sharp_b, sharp_reference,
                                           DEFAULT_RESAMPLES, generator))
    return out
