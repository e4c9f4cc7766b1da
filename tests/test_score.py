"""``diffvae score``: sample quality of any model's samples, the same numbers as ``eval``."""

import argparse
import contextlib
import io
import json

import numpy as np
import pytest

from diffvae.api import DataConfig, load, train_run
from diffvae.data import load_data
from diffvae.diffusion.model import DDPMConfig
from diffvae.errors import DiffvaeError
from diffvae.evaluate import EvalConfig, evaluate, sampling_speed
from diffvae.score import add_arguments, format_score, run, score
from diffvae.train import TrainConfig

SAMPLE_QUALITY_KEYS = {"fid", "kid", "kid_std", "precision", "recall", "fid_ci95", "kid_ci95", "precision_ci95",
                       "recall_ci95", "n_samples", "sharpness", "sharpness_real", "sharpness_ratio",
                       "sharpness_ratio_ci95", "confident_fraction", "class_entropy_bits", "class_entropy_max_bits",
                       "class_histogram", "class_entropy_ratio", "class_entropy_ratio_ci95", "classes_below_half",
                       "classes_missing", "feature_space", "reference", "data", "image_shape", "data_dims"}
CONFIG = dict(n_samples=60, bootstrap=20, midpoints=12, probe_train=120, probe_test=60, bound_n=4, seed=3)


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory, feature_cache):
    path = tmp_path_factory.mktemp("score") / "ddpm"
    config = DDPMConfig(channels=16, channel_mult=(1, 2), timesteps=100, invert_steps=10, sample_steps=5)
    train_run("ddpm", DataConfig("digits"), config, TrainConfig(steps=30, batch_size=64, precision="fp32", device="cpu"),
              out=path, progress=False)
    return path


@pytest.fixture(scope="module")
def eval_results(ddpm_run):
    return evaluate(load(ddpm_run), EvalConfig.quick(**CONFIG))


def _cli(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run(parser.parse_args(argv)) == 0
    return json.loads(out.getvalue())


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_score_of_saved_samples_equals_eval(ddpm_run, eval_results, tmp_path, layout):
    """pythae / diffusers write N×H×W×C uint8; diffvae sample writes N×C×H×W: both score exactly as eval."""
    samples, _ = sampling_speed(load(ddpm_run), EvalConfig.quick(**CONFIG))  # the draws eval made
    array = samples.numpy() if layout == "NCHW" else samples.permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "samples.npz", images=array)
    results = _cli([f"npz:{tmp_path / 'samples.npz'}", "--data", "digits", "--json", "--seed", "3", "--bootstrap", "20"])
    assert SAMPLE_QUALITY_KEYS <= set(results)
    for key in SAMPLE_QUALITY_KEYS:
        assert results[key] == eval_results[key], key  # identical, not close
    assert results["feature_space"] == "diffvae features, digits"
    assert results["n_samples"] == 60 and results["samples"].startswith("npz:")


def test_score_of_a_run_equals_eval(ddpm_run, eval_results):
    results = score(str(ddpm_run), n=60, seed=3, bootstrap=20)
    assert results["family"] == "ddpm"
    for key in SAMPLE_QUALITY_KEYS:
        assert results[key] == eval_results[key], key


def test_real_held_out_images_score_as_perfect(tmp_path, feature_cache):
    """The reference scored against itself: FID 0, KID ≈ 0, precision = recall = 1, sharpness ratio 1."""
    test = load_data("digits").test
    np.savez(tmp_path / "real.npz", test.numpy())
    results = score(f"npz:{tmp_path / 'real.npz'}", data="digits", bootstrap=0)
    assert abs(results["fid"]) < 1e-4
    # every KID subset is the whole set (180 < 500) on both sides, so MMD²_u = −2 (mean k(x,x) − mean_{i≠j} k(x_i,x_j)) / m,
    # ≤ 0 for a positive-definite kernel (Σ_ij ‖φ(x_i) − φ(x_j)‖² ≥ 0), and the same for every subset
    assert results["kid"] <= 0.0 and results["kid_std"] < 1e-6
    assert results["precision"] == 1.0 and results["recall"] == 1.0 and results["sharpness_ratio"] == 1.0
    assert "fid_ci95" not in results  # --bootstrap 0: no intervals
    assert "samples" in format_score(results) and "FID" in format_score(results)


def test_folder_of_samples_is_scored_in_file_order(tmp_path, feature_cache):
    from PIL import Image

    test = load_data("digits").test[:40]
    for i, image in enumerate(test):
        Image.fromarray(image[0].numpy()).save(tmp_path / f"{i:03d}.png")
    np.savez(tmp_path.parent / "same.npz", test.numpy())
    from_folder = score(f"folder:{tmp_path}", data="digits", bootstrap=0)
    from_npz = score(f"npz:{tmp_path.parent / 'same.npz'}", data="digits", bootstrap=0)
    assert from_folder["fid"] == from_npz["fid"] and from_folder["kid"] == from_npz["kid"]


def _bad_inputs(tmp_path):
    np.savez(tmp_path / "big.npz", np.zeros((10, 16, 16, 3), np.uint8))
    np.savez(tmp_path / "empty.npz", np.zeros((0, 8, 8), np.uint8))
    np.savez(tmp_path / "one.npz", np.zeros((1, 8, 8), np.uint8))
    np.savez(tmp_path / "float.npz", np.zeros((10, 8, 8), np.float32))
    folder = tmp_path / "pngs"
    folder.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "a.png")
    return {
        "no such file": ([f"npz:{tmp_path / 'missing.npz'}", "--data", "digits"], "not found"),
        "wrong size": ([f"npz:{tmp_path / 'big.npz'}", "--data", "digits"], "reference data is 1×8×8"),
        "empty": ([f"npz:{tmp_path / 'empty.npz'}", "--data", "digits"], "no images"),
        "one image": ([f"npz:{tmp_path / 'one.npz'}", "--data", "digits"], "need at least 4 samples"),
        "floats": ([f"npz:{tmp_path / 'float.npz'}", "--data", "digits"], "uint8"),
        "folder of other size": ([f"folder:{folder}", "--data", "digits"], "16×16"),
        "no --data": ([f"npz:{tmp_path / 'one.npz'}"], "--data SPEC is required"),
        "plain path": ([str(tmp_path / "one.dat"), "--data", "digits"], "npz:"),  # PATH.npz alone is read as npz:PATH
        "--n without a run": ([f"npz:{tmp_path / 'big.npz'}", "--data", "digits", "--n", "5"], "run directory"),
        "negative bootstrap": ([f"npz:{tmp_path / 'big.npz'}", "--data", "digits", "--bootstrap", "-1"], "--bootstrap"),
    }


def test_bad_input_is_one_line(tmp_path):
    for name, (argv, expected) in _bad_inputs(tmp_path).items():
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        with pytest.raises(DiffvaeError) as caught:
            run(parser.parse_args(argv))
        message = str(caught.value)
        assert expected in message and "\n" not in message, (name, message)


def test_diffvae_score_is_a_cli_command(tmp_path, capsys, feature_cache):
    """``diffvae score`` through the CLI: the same JSON as the function, bad input one line with exit 2."""
    from diffvae.cli import main

    images = load_data("digits").test[:40].numpy()
    np.savez(tmp_path / "s.npz", images=images)
    argv = [f"npz:{tmp_path / 's.npz'}", "--data", "digits", "--bootstrap", "0"]
    assert main(["score", *argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(score(argv[0], data="digits", bootstrap=0)))
    assert printed["n_samples"] == 40 and printed["fid"] is not None
    assert main(["score", f"npz:{tmp_path / 'none.npz'}", "--data", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffvae: error:") and "\n" not in err
    assert main(["--help"]) == 0 and "score" in capsys.readouterr().out
