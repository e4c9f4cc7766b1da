"""The per-dataset feature network: accuracy on mnist, determinism, FID sanity, cache, fallback."""

import math

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch

from diffvae.data import ImageDataset, load_data
from diffvae.errors import DiffvaeError
from diffvae.metrics import features as features_module
from diffvae.metrics.features import FeatureNetConfig, get_feature_extractor, recognisability, train_feature_net
from diffvae.metrics.distances import fid
from diffvae.metrics.probe import linear_probe

QUICK_STEPS = 30


@pytest.fixture(scope="module")
def mnist():
    return load_data("mnist")


@pytest.fixture(scope="module")
def mnist_extractor(mnist, tmp_path_factory):
    return get_feature_extractor(mnist, cache_dir=tmp_path_factory.mktemp("cache"), seed=0)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _blur(images, sigma):
    blurred = scipy.ndimage.gaussian_filter(images.numpy().astype(np.float64), sigma=(0, 0, sigma, sigma))
    return torch.from_numpy(np.clip(np.round(blurred), 0, 255).astype(np.uint8))


@pytest.mark.slow
def test_mnist_classifier_is_accurate_on_held_out_digits(mnist, mnist_extractor):
    assert mnist_extractor.kind == "classifier" and mnist_extractor.name == "diffvae features, mnist"
    probs = mnist_extractor.predict_proba(mnist.test)
    accuracy = float((probs.argmax(axis=1) == mnist.test_labels.numpy()).mean())
    assert accuracy >= 0.97
    assert accuracy == mnist_extractor.info["held_out_accuracy"]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.slow
def test_fid_on_mnist_features_separates_real_from_noise_and_blur(mnist, mnist_extractor):
    train = mnist_extractor.features(mnist.train)
    test = mnist_extractor.features(mnist.test)
    assert train.shape == (len(mnist.train), mnist_extractor.feature_dim) and train.dtype == np.float64
    noise = torch.randint(0, 256, mnist.test.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    held_out = fid(train, test)
    assert 10 * held_out < fid(train, mnist_extractor.features(noise))
    assert 5 * held_out < fid(train, mnist_extractor.features(_blur(mnist.test, 1.5)))


def test_training_is_deterministic_given_the_seed_and_leaves_global_rng_alone(digits):
    config = FeatureNetConfig(digits.image_shape, "classifier", 10, steps=QUICK_STEPS)
    rng_before = torch.get_rng_state()
    first = train_feature_net(config, digits.train, digits.train_labels, seed=3).state_dict()
    assert torch.equal(torch.get_rng_state(), rng_before)
    second = train_feature_net(config, digits.train, digits.train_labels, seed=3).state_dict()
    other = train_feature_net(config, digits.train, digits.train_labels, seed=4).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_cache_round_trips_without_retraining(digits, tmp_path, monkeypatch):
    trained = get_feature_extractor(digits, cache_dir=tmp_path, steps=QUICK_STEPS)
    files = list((tmp_path / "features").iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors" and digits.content_hash() in files[0].name

    def refuse(*args, **kwargs):
        raise AssertionError("retrained although the cache holds the network")

    monkeypatch.setattr(features_module, "train_feature_net", refuse)
    loaded = get_feature_extractor(digits, cache_dir=tmp_path, steps=QUICK_STEPS)
    assert loaded.info == trained.info
    np.testing.assert_array_equal(loaded.features(digits.test), trained.features(digits.test))
    monkeypatch.setenv("DIFFVAE_CACHE", str(tmp_path))  # the default location follows $DIFFVAE_CACHE
    assert get_feature_extractor(digits, steps=QUICK_STEPS).info == trained.info


def test_corrupt_cache_is_rebuilt(digits, tmp_path):
    trained = get_feature_extractor(digits, cache_dir=tmp_path, steps=QUICK_STEPS)
    (path,) = (tmp_path / "features").iterdir()
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = get_feature_extractor(digits, cache_dir=tmp_path, steps=QUICK_STEPS)
    np.testing.assert_array_equal(rebuilt.features(digits.test), trained.features(digits.test))
    loaded_again = get_feature_extractor(digits, cache_dir=tmp_path, steps=QUICK_STEPS)  # the rebuilt file is valid
    assert loaded_again.info == rebuilt.info


def test_unlabelled_data_gets_the_autoencoder_fallback(digits, tmp_path):
    unlabelled = ImageDataset("digits-unlabelled", digits.train, digits.test, None, None, None)
    extractor = get_feature_extractor(unlabelled, cache_dir=tmp_path, steps=300)
    assert extractor.kind == "autoencoder" and extractor.name == "diffvae features, digits-unlabelled"
    train, test = extractor.features(digits.train), extractor.features(digits.test)
    assert test.shape == (len(digits.test), extractor.feature_dim)
    # it learned to reconstruct: far better than predicting the mean training image everywhere
    signed_test, signed_train = digits.test.double() / 127.5 - 1, digits.train.double() / 127.5 - 1
    mean_image_mse = float((signed_test - signed_train.mean(0)).square().mean())
    assert extractor.info["held_out_mse"] < 0.6 * mean_image_mse
    # and its bottleneck carries the classes it never saw (chance is 0.1)
    assert linear_probe(train, digits.train_labels, test, digits.test_labels) > 0.8
    with pytest.raises(DiffvaeError):
        extractor.predict_proba(digits.test)


def test_images_of_another_shape_or_dtype_are_refused(digits, tmp_path):
    extractor = get_feature_extractor(digits, cache_dir=tmp_path, steps=QUICK_STEPS)
    with pytest.raises(DiffvaeError, match="resolution"):
        extractor.features(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(DiffvaeError):
        extractor.features(digits.test.float())


def test_recognisability_against_direct_formulas():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 4)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    result = recognisability(torch.from_numpy(probs))
    counts = np.bincount(probs.argmax(1), minlength=4)
    assert result["class_histogram"] == pytest.approx(list(counts / 200))
    assert result["class_entropy_bits"] == pytest.approx(scipy.stats.entropy(counts, base=2), rel=1e-12)
    assert result["confident_fraction"] == pytest.approx(float((probs.max(1) >= 0.9).mean()))
    even = recognisability(np.eye(4)[np.arange(40) % 4])
    assert even["confident_fraction"] == 1.0 and even["class_entropy_bits"] == pytest.approx(math.log2(4))
    collapsed = recognisability(np.tile([0.5, 0.3, 0.2], (10, 1)))
    assert collapsed["confident_fraction"] == 0.0 and collapsed["class_entropy_bits"] == 0.0
    assert math.copysign(1.0, collapsed["class_entropy_bits"]) == 1.0  # printed "0", not "-0"
    with pytest.raises(DiffvaeError):
        recognisability(np.zeros((0, 3)))


def test_features_do_not_depend_on_the_memory_layout_of_the_images(mnist, mnist_extractor):
    """N×H×W×1 samples (as pythae/diffusers save them) permuted to N×1×H×W are a strided view; their features
    must equal those of the same images laid out contiguously, bit for bit (score vs eval)."""
    images = mnist.test[:64]
    nhwc = images.permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format)  # as read from an N×H×W×1 file
    view = nhwc.permute(0, 3, 1, 2)
    assert view.stride() != images.stride()
    assert np.array_equal(mnist_extractor.features(view), mnist_extractor.features(images))


def test_a_relabelled_data_set_gets_its_own_classifier(digits, tmp_path):
    """Regression (issue 27): the cache was keyed by the images only, so the same images with other labels
    reused the old classifier. The relabelled set's network is the one trained on its own labels."""
    import dataclasses

    get_feature_extractor(digits, cache_dir=tmp_path, steps=QUICK_STEPS)
    shift = lambda labels: (labels + 1) % 10  # noqa: E731 - every label changes
    relabelled = dataclasses.replace(digits, train_labels=shift(digits.train_labels), test_labels=shift(digits.test_labels))
    assert relabelled.content_hash() == digits.content_hash()  # the images are the same
    cached = get_feature_extractor(relabelled, cache_dir=tmp_path, steps=QUICK_STEPS)
    fresh = get_feature_extractor(relabelled, cache_dir=tmp_path / "fresh", steps=QUICK_STEPS)
    np.testing.assert_array_equal(cached.predict_proba(digits.test), fresh.predict_proba(digits.test))
    assert len(list((tmp_path / "features").iterdir())) == 2


def test_an_unusable_cache_folder_is_refused_before_training(digits, tmp_path, monkeypatch):
    """Issue 27: an unwritable DIFFVAE_CACHE failed score/eval only after the feature network had trained."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    def refuse(*args, **kwargs):
        raise AssertionError("trained although the cache cannot be written")

    monkeypatch.setattr(features_module, "train_feature_net", refuse)
    monkeypatch.setenv("DIFFVAE_CACHE", str(blocker / "cache"))
    with pytest.raises(DiffvaeError, match="cannot create the feature cache folder .*set DIFFVAE_CACHE"):
        get_feature_extractor(digits, steps=QUICK_STEPS)
