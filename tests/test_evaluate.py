"""One evaluation for every family: the same schema, sensible values, on tiny digits runs."""

import json

import pytest
import torch

from diffvae.api import DataConfig, load, train_run
from diffvae.evaluate import EvalConfig, evaluate, format_table
from diffvae.train import TrainConfig

COMMON = {"family", "data", "data_dims", "latent_dims", "latent_ratio", "feature_space", "fid", "kid", "kid_std", "precision",
          "recall", "sharpness", "sharpness_ratio", "confident_fraction", "class_entropy_bits", "nfe", "ms_per_sample",
          "bpd", "roundtrip_mse", "roundtrip_psnr_db", "midpoint_fid", "path_smoothness", "latent_std",
          "probe_accuracy", "probe_chance"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, feature_cache):
    root = tmp_path_factory.mktemp("eval")
    data = DataConfig("digits")
    small = {"vae": {}, "ddpm": dict(channels=16, channel_mult=(1, 2), timesteps=100, invert_steps=10, sample_steps=5),
             "ldm": dict(channels=16, channel_mult=(1,), timesteps=100, invert_steps=10, sample_steps=5)}
    out = {}
    for family, overrides in small.items():
        from diffvae.families import get_family

        config_class, _ = get_family(family).load()
        train_run(family, data, config_class(**overrides), TrainConfig(steps=30, batch_size=64, precision="fp32", device="cpu"),
                  out=root / family, progress=False)
        out[family] = load(root / family)
    return out


@pytest.fixture(scope="module")
def results(runs):
    cfg = EvalConfig.quick(n_samples=60, midpoints=12, probe_train=120, probe_test=60, bound_n=4)
    return {family: evaluate(model, cfg) for family, model in runs.items()}


def test_every_family_reports_the_same_schema(results):
    for family, res in results.items():
        missing = COMMON - {k for k, v in res.items() if v is not None}
        assert not missing, (family, missing)
        json.dumps(res, allow_nan=False)  # strict JSON: no NaN or inf
    assert {"active_units", "kl_per_dim", "mutual_info", "iwae_bpd"} <= set(results["vae"])
    assert {"decoder_bpd", "diffusion_bpd", "prior_bpd"} <= set(results["ddpm"])


def test_values_reflect_each_family(results):
    vae, ddpm = results["vae"], results["ddpm"]
    assert vae["nfe"] == 1 and ddpm["nfe"] == 5
    assert vae["latent_dims"] == 16 and ddpm["latent_dims"] == 64 and ddpm["latent_ratio"] == 1.0
    assert 0 < vae["iwae_bpd"] <= vae["bpd"] + 0.05
    for res in results.values():
        assert 0.0 <= res["precision"] <= 1.0 and 0.0 <= res["recall"] <= 1.0
        assert 0.0 <= res["probe_accuracy"] <= 1.0 and res["probe_chance"] == pytest.approx(0.1)
        assert res["ms_per_sample"] > 0 and res["fid"] > 0
    assert ddpm["roundtrip_psnr_db"] > vae["roundtrip_psnr_db"]  # DDIM inversion is near-exact; a 30-step VAE is not
    assert ddpm["diffusion_bpd"] + ddpm["decoder_bpd"] + ddpm["prior_bpd"] == pytest.approx(ddpm["bpd"], rel=1e-6)


def test_human_readable_table(results):
    text = format_table(results["vae"])
    assert text.startswith("vae on digits") and "FID" in text and "active units" in text
    low, high = results["vae"]["fid_ci95"]
    assert f"[{low:.4g}, {high:.4g}]" in text  # the interval beside the figure


def test_class_coverage_against_the_held_out_label_frequencies(results):
    """Issue 24: the entropy ratio is class_entropy_bits over its maximum; below-half and missing classes are
    read against the held-out split's own label frequencies; eval's table prints them."""
    import numpy as np

    from diffvae.data import load_data

    labels = load_data("digits").test_labels.numpy()
    expected = np.bincount(labels, minlength=10) / len(labels)
    for family, res in results.items():
        histogram = np.array(res["class_histogram"])
        assert res["class_entropy_ratio"] == pytest.approx(res["class_entropy_bits"] / res["class_entropy_max_bits"], rel=1e-12)
        assert res["classes_below_half"] == pytest.approx(float(np.mean(histogram < expected / 2))), family
        assert res["classes_missing"] == int(np.sum(histogram == 0)), family
        low, high = res["class_entropy_ratio_ci95"]
        assert 0.0 <= low <= res["class_entropy_ratio"] <= high <= 1.0
    text = format_table(results["vae"])
    assert f"{'class entropy / its maximum':<34} {results['vae']['class_entropy_ratio']:.4g} [" in text
    assert "share of classes under half expected" in text


INTERVALS = ("fid", "kid", "precision", "recall", "midpoint_fid", "ms_per_sample")


def test_every_sample_quality_and_speed_figure_has_an_interval(results):
    for family, res in results.items():
        for key in INTERVALS:
            low, high = res[f"{key}_ci95"]
            assert low <= high and (low < high or key in ("precision", "recall")), (family, key, low, high)  # recall can be 0 flat
        for key in ("precision", "recall", "ms_per_sample"):  # centred on the estimate (no bias correction)
            assert res[f"{key}_ci95"][0] <= res[key] <= res[f"{key}_ci95"][1], (family, key)
        assert res["fid_ci95"][0] >= 0 and res["ms_per_sample_repeats"] >= 5


def test_bootstrap_zero_turns_the_intervals_off(runs):
    res = evaluate(runs["vae"], EvalConfig.quick(n_samples=30, midpoints=6, probe_train=60, probe_test=30, bound_n=4, bootstrap=0))
    assert not any(f"{key}_ci95" in res for key in ("fid", "kid", "precision", "recall", "midpoint_fid"))
    assert res["fid"] > 0 and res["ms_per_sample_ci95"] is not None  # the speed interval needs no bootstrap


def test_sample_quality_gives_evals_figures_for_the_same_samples(runs, results):
    """``sample_quality`` (what ``diffvae score`` builds on) is exactly eval's sample-quality part."""
    from diffvae.api import run_data
    from diffvae.evaluate import sample_quality, sampling_speed
    from diffvae.metrics.features import get_feature_extractor

    model = runs["vae"]
    cfg = EvalConfig.quick(n_samples=60, midpoints=12, probe_train=120, probe_test=60, bound_n=4)
    dataset = run_data(model)
    samples, _ = sampling_speed(model, cfg, torch.Generator().manual_seed(cfg.seed))
    quality = sample_quality(samples, dataset, cfg, get_feature_extractor(dataset))
    keys = {"fid", "kid", "kid_std", "precision", "recall", "fid_ci95", "kid_ci95", "precision_ci95", "recall_ci95", "n_samples",
            "sharpness", "sharpness_real", "sharpness_ratio", "sharpness_ratio_ci95", "confident_fraction", "class_entropy_bits",
            "class_entropy_max_bits", "class_histogram", "class_entropy_ratio", "class_entropy_ratio_ci95", "classes_below_half",
            "classes_missing", "feature_space", "reference"}
    assert set(quality) == keys
    assert {k: results["vae"][k] for k in keys} == quality


def test_sample_quality_refuses_what_is_not_uint8_images_of_the_data(runs):
    from diffvae.api import run_data
    from diffvae.errors import DiffvaeError
    from diffvae.evaluate import sample_quality

    dataset = run_data(runs["vae"])
    with pytest.raises(DiffvaeError, match="uint8 images of shape"):
        sample_quality(torch.zeros(4, 1, 8, 8), dataset)
    with pytest.raises(DiffvaeError, match="uint8 images of shape"):
        sample_quality(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), dataset)


def test_pixel_diffusion_reports_its_probability_flow_ode_likelihood(runs, results):
    """``ode_bpd``: the spec's probability-flow likelihood on the first ode_n held-out images with the
    evaluation's seed (the math is checked against closed forms in tests/flow/test_ode_likelihood.py); a family
    without one (the VAE) reports none, and ode_n = 0 turns it off."""
    from diffvae.contract import spec_of
    from diffvae.data import load_data

    cfg = EvalConfig.quick()
    model = runs["ddpm"]
    direct = spec_of(model).ode_likelihood(model, load_data("digits").test[: cfg.ode_n], cfg.ode_steps,
                                           torch.Generator().manual_seed(cfg.seed))
    assert results["ddpm"]["ode_bpd"] == pytest.approx(float(direct["ode_bpd"].double().mean()), rel=1e-9)
    assert results["ddpm"]["ode_bpd_n"] == cfg.ode_n and 0 < results["ddpm"]["ode_bpd"] < 20
    assert "ode_bpd" not in results["vae"]
    assert "ode_bpd" not in evaluate(model, EvalConfig.quick(ode_n=0, n_samples=20, midpoints=4, probe_train=40, probe_test=20))


def test_one_ode_image_has_no_spread_and_no_warning(runs):
    """ode_n 1 (compare under load): the bits/dim of one image, its SEM NaN, without torch's degrees-of-freedom warning."""
    import warnings

    from diffvae.evaluate import likelihood
    from diffvae.data import load_data

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = likelihood(runs["ddpm"], load_data("digits"), EvalConfig.quick(bound_n=2, ode_n=1, variance_fit_n=0))
    assert out["ode_bpd_n"] == 1 and 0 < out["ode_bpd"] < 20 and out["ode_bpd_sem"] != out["ode_bpd_sem"]


def test_every_interval_contains_its_figure(results):
    """Issue 23: each ``<metric>_ci95`` is an interval for the printed ``<metric>`` (FID@N at this N against this
    reference, not a population value it may exclude), so it contains it; nothing is clipped."""
    checked = 0
    for family, res in results.items():
        for key, ci in res.items():
            if key.endswith("_ci95") and ci is not None and isinstance(res.get(key[:-5]), (int, float)):
                assert ci[0] <= res[key[:-5]] <= ci[1], (family, key, ci, res[key[:-5]])
                checked += 1
    assert checked >= 3 * 8


def test_the_evaluation_hands_over_its_evidence(runs):
    """What compare's paired tests read: per-sample features and sharpness, per-image bits/dim on the first
    held-out images in order, midpoint features, the timed batches, the probe's per-image outcomes."""
    from diffvae.evaluate import EVIDENCE_KEYS

    cfg = EvalConfig.quick(n_samples=40, midpoints=8, probe_train=120, probe_test=30, bound_n=4)
    evidence = {}
    res = evaluate(runs["vae"], cfg, evidence=evidence)
    assert set(evidence) == set(EVIDENCE_KEYS)
    assert evidence["features"].shape[0] == 40 and evidence["midpoint_features"].shape[0] == 8
    assert float(evidence["bpd"].mean()) == pytest.approx(res["bpd"], rel=1e-9) and evidence["bpd"].numel() == 4
    assert float(evidence["probe_correct"].double().mean()) == pytest.approx(res["probe_accuracy"])
    assert float(evidence["ms_repeats"].mean()) == pytest.approx(res["ms_per_sample"])
    assert evidence["sharpness"].numel() == 40
