"""Class coverage (diffvae.metrics.coverage): the entropy ratio, the classes below half their expected share and the
missing classes against hand computations and scipy's entropy; the jackknife interval against a literal delete-one
loop and by its coverage of the expected figure on simulated predictions."""

import math

import numpy as np
import pytest
import scipy.stats

from diffvae.errors import DiffvaeError
from diffvae.metrics.coverage import class_coverage, entropy_ratio_interval, label_coverage


def test_an_even_histogram_covers_every_class():
    out = class_coverage([0.1] * 10, [0.1] * 10)
    assert out == {"class_entropy_ratio": pytest.approx(1.0, abs=1e-12), "classes_below_half": 0.0, "classes_missing": 0}


def test_a_collapse_to_two_of_ten_classes():
    out = class_coverage([0, 0, 0.5, 0, 0, 0, 0, 0.5, 0, 0], [1] * 10)  # expected as counts: the same shares
    assert out["class_entropy_ratio"] == pytest.approx(math.log2(2) / math.log2(10), rel=1e-12)
    assert out["classes_below_half"] == pytest.approx(0.8) and out["classes_missing"] == 8


def test_below_half_is_measured_against_the_expected_shares_not_one_over_k():
    expected = [70, 10, 10, 10]  # held-out label counts: one class is most of the data
    generated = [0.76, 0.08, 0.08, 0.08]
    out = class_coverage(generated, expected)
    assert out["classes_below_half"] == 0.0  # 0.08 ≥ 0.1 / 2: each class is generated as often as it should be
    assert class_coverage(generated, [1, 1, 1, 1])["classes_below_half"] == 0.75  # against 1/K: three below 0.125
    assert out["class_entropy_ratio"] == pytest.approx(scipy.stats.entropy(generated, base=2) / 2, rel=1e-12)
    assert class_coverage([0.9, 0.04, 0.06, 0.0], expected) == {
        "class_entropy_ratio": pytest.approx(scipy.stats.entropy([0.9, 0.04, 0.06], base=2) / 2, rel=1e-12),
        "classes_below_half": 0.5, "classes_missing": 1}  # 0.04 < 0.05, 0 < 0.05; 0.06 is not


def test_against_a_brute_force_loop():
    rng = np.random.default_rng(0)
    for _ in range(20):
        k = int(rng.integers(2, 12))
        generated = rng.integers(0, 30, k) * (rng.random(k) < 0.7)
        generated[0] += 1
        expected = rng.integers(0, 50, k)
        expected[-1] += 1
        p, q = generated / generated.sum(), expected / expected.sum()
        entropy = -sum(x * math.log2(x) for x in p if x > 0)
        below = [p[i] < q[i] / 2 for i in range(k) if q[i] > 0]
        out = class_coverage(generated, expected)
        assert out["class_entropy_ratio"] == pytest.approx(entropy / math.log2(k), rel=1e-12, abs=1e-15)
        assert out["classes_below_half"] == pytest.approx(sum(below) / len(below))
        assert out["classes_missing"] == sum(1 for i in range(k) if q[i] > 0 and p[i] == 0)


def test_a_class_absent_from_the_held_out_split_is_not_counted():
    out = class_coverage([0.5, 0.5, 0.0], [1, 1, 0])
    assert out["classes_below_half"] == 0.0 and out["classes_missing"] == 0
    assert out["class_entropy_ratio"] == pytest.approx(1 / math.log2(3))  # the maximum is still log₂ K


def test_one_class_is_fully_covered():
    assert class_coverage([5], [3]) == {"class_entropy_ratio": 1.0, "classes_below_half": 0.0, "classes_missing": 0}


@pytest.mark.parametrize("histogram, expected", [([0.5, 0.5], [1, 1, 1]), ([], []), ([-1, 2], [1, 1]),
                                                 ([0, 0], [1, 1]), ([1, float("nan")], [1, 1]), ([1, 1], [[1, 1]])])
def test_bad_histograms_are_refused(histogram, expected):
    with pytest.raises(DiffvaeError):
        class_coverage(histogram, expected)


def _ratio(counts):
    return class_coverage(counts, np.ones(len(counts)))["class_entropy_ratio"]


def test_the_interval_is_the_literal_delete_one_jackknife():
    counts = np.array([7, 0, 3, 12, 1, 5])
    predictions = np.repeat(np.arange(6), counts)  # one predicted class per sample
    n = len(predictions)
    deleted = np.array([_ratio(np.bincount(np.delete(predictions, i), minlength=6)) for i in range(n)])
    sd = math.sqrt((n - 1) / n * ((deleted - deleted.mean()) ** 2).sum())
    value = _ratio(counts)
    low, high = entropy_ratio_interval(counts)
    assert low == pytest.approx(value - 1.959963984540054 * sd, rel=1e-9)
    assert high == pytest.approx(min(1.0, value + 1.959963984540054 * sd), rel=1e-9)
    assert low < value < high


def test_the_interval_stays_in_range_and_is_flat_for_a_full_collapse():
    assert entropy_ratio_interval([0, 40, 0]) == (0.0, 0.0)
    assert all(math.copysign(1.0, x) == 1.0 for x in (*entropy_ratio_interval([0, 40, 0]), _ratio([0, 40, 0])))  # "0", not "-0"
    low, high = entropy_ratio_interval([52, 48] + [50] * 8)
    assert low < _ratio([52, 48] + [50] * 8) < high == 1.0
    for bad in ([1], [0.5, 2], [-1, 3], []):
        with pytest.raises(DiffvaeError):
            entropy_ratio_interval(bad)


@pytest.mark.parametrize("shares", [[0.1] * 10, [0.3, 0.2, 0.15, 0.1, 0.1, 0.05, 0.04, 0.03, 0.02, 0.01]])
def test_the_interval_covers_the_expected_figure_at_this_n(shares):
    """Simulated predictions of an even model and of one that under-generates some classes: the jackknife
    interval covers the expected ratio at this N (the plug-in entropy is biased low, so this is what it is an
    interval for)."""
    rng = np.random.default_rng(1)
    shares, n = np.array(shares), 300
    target = np.mean([_ratio(rng.multinomial(n, shares)) for _ in range(4000)])
    covered = [low <= target <= high for low, high in (entropy_ratio_interval(rng.multinomial(n, shares)) for _ in range(400))]
    assert np.mean(covered) >= 0.9


def test_label_coverage_measures_against_the_labels_own_frequencies():
    """Unequal classes: 6, 3 and 1 labels. A histogram in that mix has no class under half; one that drops the
    third class has it missing and under half, exactly as class_coverage given the counts by hand."""
    labels = np.array([0] * 6 + [1] * 3 + [2])
    assert label_coverage([0.6, 0.3, 0.1], labels, 3) == class_coverage([0.6, 0.3, 0.1], [6, 3, 1])
    dropped = label_coverage([0.7, 0.3, 0.0], labels, 3)
    assert dropped["classes_missing"] == 1 and dropped["classes_below_half"] == pytest.approx(1 / 3)
    padded = label_coverage([0.5, 0.5, 0.0, 0.0], np.array([0, 1]), 4)  # classes no label has are not expected
    assert padded["classes_missing"] == 0 and padded["classes_below_half"] == 0.0
