"""The VAE spec's posterior-collapse claim: decided on the KL drop with its interval, not on active units."""

import math

import pytest
from scipy import stats

from diffvae.vae.family import SPEC, collapse_verdict


def study(without=(5.3, 0.6), with_fb=(9.0, 0.5), units=(2, 8)):
    """KL (nats) ± 95% half-width of the PixelCNN-decoder runs without and with free bits (λ = 0.5, 16 dims)."""
    arm = lambda kl, half, au: {"kl_nats": kl, "kl_nats_ci95": [kl - half, kl + half], "kl_n": 500, "active_units": au,
                                "mutual_info": 2.9, "mutual_info_max": math.log(500), "kl_per_dim": [kl / 16] * 16}
    return {"free_bits": 0.5, "without_free_bits": arm(*without, units[0]), "with_free_bits": arm(*with_fb, units[1])}


def own(kl=43.8, half=1.2):
    """The VAE's own (convolutional) decoder's evaluation."""
    return {"kl_nats": kl, "kl_nats_ci95": [kl - half, kl + half], "kl_n": 500, "mutual_info": 5.3, "mutual_info_max": math.log(500)}


def test_a_kl_drop_whose_interval_excludes_zero_is_collapse():
    verdict, evidence, entry = collapse_verdict(study(), own())
    assert verdict == "held"
    se = math.hypot(1.2, 0.6) / stats.norm.ppf(0.975)
    assert entry["difference"] == pytest.approx(43.8 - 5.3) and entry["decided"] == "a" and entry["metric"] == "kl_nats"
    assert entry["ci95"] == pytest.approx([38.5 - 1.96 * se, 38.5 + 1.96 * se], rel=1e-4)
    assert entry["p_value"] == pytest.approx(2 * stats.norm.sf(38.5 / se))
    assert "KL (nats) with the VAE's own decoder 43.8 [42.6, 45] → with a PixelCNN decoder 5.3 [4.7, 5.9]: drop 38.5" in evidence
    assert "MI (nats, no interval) 5.3 → 2.9" in evidence


def test_active_units_alone_do_not_decide():
    """Fewer active units with the PixelCNN, but a KL drop the interval cannot tell from 0: not decided."""
    verdict, evidence, entry = collapse_verdict(study(without=(42.0, 3.0), units=(1, 8)), own(43.8, 3.0))
    assert verdict == "not decided at this budget" and entry["decided"] is None
    assert entry["ci95"][0] < 0 < entry["ci95"][1]


def test_a_powerful_decoder_that_keeps_more_kl_did_not_collapse():
    verdict, _, entry = collapse_verdict(study(without=(60.0, 2.0)), own())
    assert verdict == "did not hold" and entry["decided"] == "b"


def test_without_the_vaes_own_kl_or_with_too_little_training_nothing_is_decided():
    verdict, evidence, entry = collapse_verdict(study(), None)
    assert verdict == "not decided at this budget" and entry is None and "the drop is not known" in evidence
    verdict, evidence, _ = collapse_verdict(study(with_fb=(0.5, 0.1)), own())  # the free-bits run far below λ·L = 8 nats
    assert verdict == "not decided at this budget" and "trained too little" in evidence


def test_the_claim_stores_its_comparison_under_the_family_name():
    results = {"collapse": study(), "families": {"vae": own()}, "comparisons": [{"question": "other", "a": "x", "b": "y"}]}
    (claim,) = SPEC.claims(results, "vae")
    assert claim["verdict"] == "held"
    entry = results["comparisons"][-1]
    assert (entry["question"], entry["a"], entry["b"]) == (f"claim:{claim['claim']}", "vae", "vae:pixelcnn")
    SPEC.claims(results, "vae")  # asked again: replaced, not duplicated
    assert len(results["comparisons"]) == 2
