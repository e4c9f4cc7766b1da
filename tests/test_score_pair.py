"""``diffvae score A B``: two sample sets against one reference, a paired test and a decision per metric."""

import argparse
import contextlib
import io
import json

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from diffvae.data import load_data
from diffvae.errors import DiffvaeError
from diffvae.score import add_arguments, run

SCHEMA_KEYS = {"question", "metric", "a", "b", "difference", "ci95", "p_value", "decided", "method", "lower_is_better",
               "n", "n_to_decide"}


def _cli(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run(parser.parse_args(argv)) == 0
    return json.loads(out.getvalue())


def _by_metric(results):
    return {c["metric"]: c for c in results["comparisons"]}


def _check_schema(results, a, b):
    for c in results["comparisons"]:
        assert set(c) == SCHEMA_KEYS and c["a"] == a and c["b"] == b and c["question"] == "score"
        assert c["ci95"][0] <= c["difference"] <= c["ci95"][1]
        assert (c["decided"] is None) == (c["p_value"] >= 0.05)


def test_two_disjoint_halves_of_real_held_out_images_are_not_decided(tmp_path, feature_cache, monkeypatch):
    test = load_data("digits").test.numpy()
    np.savez(tmp_path / "A.npz", test[0::2])
    np.savez(tmp_path / "B.npz", test[1::2])
    monkeypatch.chdir(tmp_path)
    results = _cli(["A.npz", "B.npz", "--data", "digits", "--json"])
    _check_schema(results, "A.npz", "B.npz")
    assert {"fid", "kid", "precision", "recall", "sharpness_gap"} == set(_by_metric(results))
    assert all(c["decided"] is None for c in results["comparisons"])


def test_real_images_beat_the_same_images_blurred_by_one_pixel_on_fid_and_kid(tmp_path, feature_cache):
    train = load_data("digits").train.numpy()
    real, blurred = train[:300], gaussian_filter(train[300:600].astype(np.float64), sigma=(0, 0, 1, 1))
    np.savez(tmp_path / "real.npz", real)
    np.savez(tmp_path / "blurred.npz", np.clip(np.rint(blurred), 0, 255).astype(np.uint8))
    a, b = str(tmp_path / "real.npz"), f"npz:{tmp_path / 'blurred.npz'}"
    results = _by_metric(_cli([a, b, "--data", "digits", "--json"]))
    for metric in ("fid", "kid"):
        assert results[metric]["decided"] == "a" and results[metric]["difference"] < 0, results[metric]
        assert results[metric]["a"] == a and results[metric]["b"] == b
    assert results["sharpness_gap"]["decided"] == "a"  # blur moves sharpness away from real data's


def test_bad_pairs_are_one_line(tmp_path, feature_cache):
    np.savez(tmp_path / "A.npz", load_data("digits").test.numpy()[:2])
    with pytest.raises(DiffvaeError, match="at least 4"):
        _cli([str(tmp_path / "A.npz"), str(tmp_path / "A.npz"), "--data", "digits", "--json"])
    with pytest.raises(DiffvaeError, match="--data SPEC is required"):
        _cli([str(tmp_path / "A.npz"), str(tmp_path / "A.npz"), "--json"])
    with pytest.raises(DiffvaeError, match="apply to one run"):
        _cli([str(tmp_path / "A.npz"), str(tmp_path / "A.npz"), "--data", "digits", "--n", "5"])


def test_an_unavailable_device_is_refused_for_two_sample_sets(monkeypatch):
    """Regression (issue 27, hostile pass): ``score A B --device cuda`` on a machine without CUDA ran on the CPU and
    exited 0; it is refused before any file is read (the files here do not even exist)."""
    import torch

    from diffvae.score import score_pair

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DiffvaeError, match="--device cuda: CUDA is not available"):
        score_pair("npz:/no/such/a.npz", "npz:/no/such/b.npz", data="digits", device="cuda")
