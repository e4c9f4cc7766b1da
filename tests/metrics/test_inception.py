"""``--features inception:PATH``: Inception-v3 pool3 features from a local weights file, checked against
torch-fidelity's own extractor and torchmetrics' FID; every bad weights file or flag is one line, exit 2.

The real weights cannot be fetched offline, so the weights file is a seeded random initialisation of exactly
torch-fidelity's network (He-scaled convolutions and perturbed batch-norm statistics, so that pool3 features
are of order one rather than vanishing), saved as .pth and as .safetensors. Images are few (Inception runs
at 299×299 on one CPU thread).
"""

from __future__ import annotations

import json
import math
import os
import sys
from unittest import mock

import numpy as np
import pytest
import torch

from diffvae.cli import main
from diffvae.data import ImageDataset, load_data
from diffvae.evaluate import EvalConfig, sample_quality
from diffvae.metrics.inception import NEEDS_TORCH_FIDELITY, load_inception, parse_features

try:
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception
    WHY_NOT = ""
except Exception as err:  # not installed, or installed with a torchvision built for another torch
    tf_inception, WHY_NOT = None, f"{type(err).__name__}: {err}"
needs_torch_fidelity = pytest.mark.skipif(tf_inception is None, reason=f"torch-fidelity not importable ({WHY_NOT})")


def _random_inception(seed: int = 0) -> torch.nn.Module:
    """torch-fidelity's InceptionV3 built without its weight loading (neither download nor file), re-initialised."""
    with mock.patch.object(tf_inception, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        net = tf_inception.FeatureExtractorInceptionV3("random", ["2048"])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
            elif isinstance(module, torch.nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=g))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=g))
                module.weight.copy_(0.5 + torch.rand(shape, generator=g))
                module.bias.copy_(0.1 * torch.randn(shape, generator=g))
    return net.eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("inception")
    state = {k: v.contiguous() for k, v in _random_inception().state_dict().items()}
    torch.save(state, folder / "inception-random.pth")
    save_file(state, str(folder / "inception-random.safetensors"))
    return {"pth": folder / "inception-random.pth", "safetensors": folder / "inception-random.safetensors"}


@pytest.fixture(scope="module")
def reference_net(weights):
    """torch-fidelity's own extractor, loaded by torch-fidelity itself from the .pth (its own torch.load)."""
    return tf_inception.FeatureExtractorInceptionV3("reference", ["2048"],
                                                    feature_extractor_weights_path=str(weights["pth"]))


def _reference_features(net, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        rgb = images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images
        return net(rgb)[0].double().numpy()


@needs_torch_fidelity
@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_features_equal_torch_fidelitys_own_extractor(weights, reference_net, kind):
    digits = load_data("digits").train[:4]  # greyscale 8×8: replicated to RGB, resized to 299 inside the network
    colour = torch.randint(0, 256, (2, 3, 11, 7), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    extractor = load_inception(weights[kind], device="cpu")
    for images in (digits, colour):
        ours, reference = extractor.features(images), _reference_features(reference_net, images)
        assert ours.shape == (images.shape[0], 2048) and ours.dtype == np.float64
        assert np.abs(ours - reference).max() <= 1e-5 * np.abs(reference).max()
        assert reference.std(axis=0).mean() > 1e-3  # the images' features differ: the comparison has teeth
    assert extractor.name == "Inception-v3 pool3 (2048-d), weights " + weights[kind].name + \
        " (not the standard FID weights)"
    assert not hasattr(extractor, "predict_proba") and extractor.info["standard_weights"] is False


@needs_torch_fidelity
def test_the_standard_file_is_recognised_by_its_sha256(weights, monkeypatch):
    import hashlib

    from diffvae.metrics import inception

    digest = hashlib.sha256(weights["pth"].read_bytes()).hexdigest()
    monkeypatch.setattr(inception, "STANDARD_SHA256_PREFIX", digest[:8])
    extractor = load_inception(weights["pth"], device="cpu")
    assert extractor.info["weights_sha256"] == digest and extractor.info["standard_weights"] is True
    assert extractor.name.endswith("(the standard FID weights)")


@needs_torch_fidelity
def test_loading_never_downloads_nor_unpickles(weights, monkeypatch):
    """torch-fidelity's own loaders (a download; an unrestricted torch.load) and the network are never touched."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("torch-fidelity's own weight loading was called")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(torch, "load", refuse)  # the .safetensors path never calls torch.load at all
    extractor = load_inception(weights["safetensors"], device="cpu")
    assert extractor.info["weights"] == str(weights["safetensors"])
    assert tf_inception.load_state_dict_from_url is refuse  # restored after the construction


def _wrapped_for_torchmetrics(net):
    class PoolThree(torch.nn.Module):
        """uint8 (N, 1|3, H, W) → torch-fidelity's pool3 features in float64, for torchmetrics' FID."""

        num_features = 2048

        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, images):
            return torch.from_numpy(_reference_features(self.net, images))

    return PoolThree()


@needs_torch_fidelity
def test_score_cli_fid_in_inception_space_equals_torchmetrics(weights, reference_net, tmp_path, capsys):
    """diffvae score npz:... --features inception:PATH --json end to end; its FID equals torchmetrics' FID
    with the same network as its feature module, on the same reference (the held-out split) and samples."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    digits = load_data("digits").train
    np.savez(tmp_path / "reference.npz", images=digits[:120].numpy())  # its held-out split: 12 images
    samples = (digits[200:212].int() * 3 // 4).to(torch.uint8)  # dimmed digits: really different from the reference
    np.savez(tmp_path / "samples.npz", images=samples.numpy())
    argv = ["score", f"npz:{tmp_path / 'samples.npz'}", "--data", f"npz:{tmp_path / 'reference.npz'}",
            "--features", f"inception:{weights['pth']}", "--bootstrap", "0", "--device", "cpu", "--json"]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["feature_space"] == f"Inception-v3 pool3 (2048-d), weights {weights['pth'].name} " \
                                      "(not the standard FID weights)"
    assert results["n_samples"] == 12 and "confident_fraction" not in results

    reference = load_data(f"npz:{tmp_path / 'reference.npz'}").test
    metric = FrechetInceptionDistance(feature=_wrapped_for_torchmetrics(reference_net), reset_real_features=False)
    metric.update(reference, real=True)
    metric.update(samples, real=False)
    expected = float(metric.compute())
    assert expected > 1e-2  # the two sets differ
    assert results["fid"] == pytest.approx(expected, rel=1e-3)


@needs_torch_fidelity
def test_sample_quality_copes_without_a_classifier(weights):
    """Labelled data but Inception features: no recognisability keys (its classes are not the data's)."""
    digits = load_data("digits")
    small = ImageDataset("digits (6 held out)", digits.train[:6], digits.test[:6], digits.train_labels[:6],
                         digits.test_labels[:6], digits.num_classes)
    out = sample_quality(digits.train[10:16], small, EvalConfig(bootstrap=0), extractor=load_inception(weights["pth"]))
    assert out["feature_space"].startswith("Inception-v3 pool3") and math.isfinite(out["fid"]) and out["fid"] > 0
    assert not {"confident_fraction", "class_entropy_bits", "class_histogram"} & set(out)


class _Payload:
    """Unpickling this would run code (append to CALLED): weights_only loading must refuse it."""

    def __reduce__(self):
        return (_record_call, ("unpickled",))


CALLED: list[str] = []


def _record_call(what):
    CALLED.append(what)
    return what


def _bad_weights(folder, weights) -> dict[str, tuple[str, str]]:
    """name → (the --features value, a phrase the one-line error must hold)."""
    truncated_pth, truncated_st = folder / "truncated.pth", folder / "truncated.safetensors"
    truncated_pth.write_bytes(weights["pth"].read_bytes()[: os.path.getsize(weights["pth"]) // 2])
    truncated_st.write_bytes(weights["safetensors"].read_bytes()[:5000])
    torch.save(torch.nn.Linear(4, 2).state_dict(), folder / "linear.pth")
    state = torch.load(weights["pth"], weights_only=True)
    state["fc.weight"] = torch.zeros(10, 2048)
    torch.save(state, folder / "wrong-fc.pth")
    torch.save({"weights": _Payload()}, folder / "payload.pth")
    return {
        "missing file": (f"inception:{folder / 'absent.pth'}", "not found"),
        "a folder": (f"inception:{folder}", "is not a file"),
        "truncated .pth": (f"inception:{truncated_pth}", "cannot read the Inception weights"),
        "truncated .safetensors": (f"inception:{truncated_st}", "cannot read the Inception weights"),
        "another network": (f"inception:{folder / 'linear.pth'}", "not a state dict of torch-fidelity's Inception-v3"),
        "another head size": (f"inception:{folder / 'wrong-fc.pth'}", "size mismatch"),
        "a pickled object": (f"inception:{folder / 'payload.pth'}", "cannot read the Inception weights"),
        "empty path": ("inception:", "needs the path"),
        "unknown space": ("foo", "--features must be local or inception:PATH"),
    }


@needs_torch_fidelity
def test_bad_weights_and_flags_are_one_line_and_write_nothing(weights, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    np.savez(inputs / "samples.npz", images=load_data("digits").train[:4].numpy())
    cases = _bad_weights(inputs, weights)
    before = sorted(tmp_path.rglob("*"))
    for name, (value, phrase) in cases.items():
        rc = main(["score", f"npz:{inputs / 'samples.npz'}", "--data", "digits", "--features", value, "--json"])
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("diffvae: error:"), (name, captured.err)
        assert phrase in err[0], (name, err[0])
        assert captured.out == "", name
    assert sorted(tmp_path.rglob("*")) == before  # nothing written
    assert CALLED == []  # the pickled object was never built


def test_features_flag_values():
    assert parse_features(None).kind == parse_features("local").kind == parse_features(" LOCAL ").kind == "local"
    spec = parse_features("inception:~/w/pt_inception-2015-12-05-6726825d.pth")
    assert spec.kind == "inception" and spec.path.name == "pt_inception-2015-12-05-6726825d.pth"
    assert "~" not in str(spec.path)


def test_without_torch_fidelity_the_flag_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # `import torch_fidelity` now fails as if absent
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    np.savez(tmp_path / "samples.npz", images=np.zeros((4, 8, 8), np.uint8))
    rc = main(["score", f"npz:{tmp_path / 'samples.npz'}", "--data", "digits",
               "--features", f"inception:{tmp_path / 'w.pth'}"])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    assert captured.err.strip() == f"diffvae: error: {NEEDS_TORCH_FIDELITY}"
    assert NEEDS_TORCH_FIDELITY == "--features inception needs torch-fidelity (pip install 'diffvae[inception]')"


def test_weights_files_that_need_unpickling_or_hold_integers_are_refused_without_torchs_advice(tmp_path):
    """Issue 27: refusing a pickled .pth relayed torch's text, which advises loading with weights_only=False;
    integer weights were accepted (and silently converted to floats by load_state_dict)."""
    from safetensors.torch import save_file

    from diffvae.errors import DiffvaeError
    from diffvae.metrics.inception import read_weights

    torch.save({"weights": _Payload()}, tmp_path / "payload.pth")
    with pytest.raises(DiffvaeError) as refused:
        read_weights(tmp_path / "payload.pth")
    message = str(refused.value)
    assert "pickled Python objects" in message and "weights_only" not in message and "\n" not in message
    assert "\x1b" not in message and CALLED == []
    state = {"Conv2d_1a_3x3.conv.weight": torch.zeros(2, 3, 3, 3), "fc.weight": torch.ones(4, 2, dtype=torch.int8)}
    torch.save(state, tmp_path / "ints.pth")
    save_file(state, str(tmp_path / "ints.safetensors"))
    for name in ("ints.pth", "ints.safetensors"):
        with pytest.raises(DiffvaeError, match="fc.weight holds int8 values; Inception-v3 weights must be floating point"):
            read_weights(tmp_path / name)
    counters = {"bn.running_mean": torch.zeros(3), "bn.num_batches_tracked": torch.tensor(0)}
    torch.save(counters, tmp_path / "counters.pth")
    assert read_weights(tmp_path / "counters.pth").keys() == counters.keys()  # batch-norm counters are integers
