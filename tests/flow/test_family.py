"""Flow matching as a family of the product, through the CLI as a user runs it: train / sample / eval /
invert / interpolate end to end, exact resume after an interruption and after SIGKILL, bad input in one
line that changes nothing, no pickle, and a torchrun launch — the same checks as the other families,
reusing their test helpers."""

from __future__ import annotations

import json
import shutil
import signal

import numpy as np
import pytest
import torch

from diffvae.api import load
from diffvae.cli import main
from diffvae.runs import RunDir, load_tensors
from test_bad_input import _one_error_line, _snapshot
from test_crash_resume import finish, start, wait_for
from test_distributed import BACKSTOP_S, KNOWN_TEARDOWN_ABORT, start_torchrun
from test_no_pickle import FEATURE_CACHE, no_pickle  # noqa: F401  (a fixture)

TINY = ["--data", "digits", "--channels", "8", "--channel-mult", "1", "--attention-levels", "", "--batch", "16",
        "--precision", "fp32", "--device", "cpu", "--seed", "2", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``diffvae train flow --data digits --steps 20`` (a small UNet)."""
    path = tmp_path_factory.mktemp("flow") / "run"
    assert main(["train", "flow", *TINY, "--steps", "20", "--checkpoint-every", "10", "--out", str(path)]) == 0
    return path


def test_train_sample_eval_invert_and_interpolate_end_to_end(run, tmp_path, capsys, monkeypatch):
    assert [r["step"] for r in RunDir(run).read_metrics()][-1] == 20
    assert main(["sample", str(run), "--n", "6", "--sampler", "euler", "--steps", "4", "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        assert f["images"].shape == (6, 1, 8, 8) and f["images"].dtype == np.uint8
    monkeypatch.setenv("DIFFVAE_CACHE", str(FEATURE_CACHE))
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--quick"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["family"] == "flow" and results["trained_steps"] == 20 and results["nfe"] == 50
    parts = results["prior_bpd"] - results["log_det_bpd"] + results["dequantization_bpd"]
    assert np.isfinite(results["bpd"]) and parts == pytest.approx(results["bpd"], rel=1e-6)
    assert np.isfinite(results["fid"])
    assert main(["invert", str(run), "--n", "4", "--steps", "20"]) == 0
    assert json.loads(capsys.readouterr().out)["psnr_db"] > 30  # ODE inversion, then generation (uint8 round trip)
    assert main(["interpolate", str(run), "--pairs", "2", "--frames", "3", "--out", str(tmp_path / "i.png")]) == 0
    model = load(run)
    assert model.family == "flow" and model.trained_steps == 20


def test_an_interrupted_run_resumes_bit_identical(tmp_path, monkeypatch):
    from diffvae.flow.model import FlowMatching

    flags = [*TINY, "--steps", "6", "--checkpoint-every", "2", "--log-every", "1"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert main(["train", "flow", *flags, "--out", str(ref)]) == 0
    real_loss, calls = FlowMatching.training_loss, []

    def interrupted(self, x):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_loss(self, x)

    monkeypatch.setattr(FlowMatching, "training_loss", interrupted)
    assert main(["train", "flow", *flags, "--out", str(cut)]) == 130
    monkeypatch.setattr(FlowMatching, "training_loss", real_loss)
    torch.manual_seed(999)  # a restarted process starts from another RNG state
    assert main(["train", "flow", "--out", str(cut), "--resume", "--quiet"]) == 0
    a, a_meta = load_tensors(ref / "checkpoint.safetensors")
    b, b_meta = load_tensors(cut / "checkpoint.safetensors")
    assert a_meta["step"] == b_meta["step"] == 6 and a.keys() == b.keys()
    assert any(k.startswith("ema/") for k in a) and any(k.startswith("optimizer/") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sigkill_then_resume_ends_bit_identical(tmp_path):
    flags = [*TINY, "--steps", "40", "--checkpoint-every", "4", "--log-every", "4"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    victim = start(["train", "flow", *flags, "--out", str(cut)])
    wait_for(cut / "checkpoint.safetensors", victim)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    killed_at = RunDir(cut).load_checkpoint()[1]["step"]
    resumed = start(["train", "flow", "--out", str(cut), "--resume", "--quiet"])
    reference = start(["train", "flow", *flags, "--out", str(ref)])
    for proc in (resumed, reference):
        rc, stderr = finish(proc, timeout=600)
        assert rc == 0, stderr
    a, a_meta = RunDir(ref).load_checkpoint()
    b, b_meta = RunDir(cut).load_checkpoint()
    assert 4 <= killed_at < 40 and a_meta["step"] == b_meta["step"] == 40
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_conditional_flow_trains_on_labels_and_samples_a_class_with_guidance(tmp_path):
    path = tmp_path / "cond"
    assert main(["train", "flow", *TINY, "--steps", "4", "--conditional", "--out", str(path)]) == 0
    config = json.loads((path / "config.json").read_text())["model"]
    assert config["conditional"] and config["num_classes"] == 10
    assert main(["sample", str(path), "--n", "4", "--steps", "3", "--class", "3", "--guidance", "2",
                 "--out", str(tmp_path / "c.npz")]) == 0
    with np.load(tmp_path / "c.npz", allow_pickle=False) as f:
        assert f["images"].shape == (4, 1, 8, 8)


BAD = {
    "train-unknown-sampler": ["train", "flow", *TINY, "--steps", "2", "--sampler", "ddim"],
    "train-zero-sample-steps": ["train", "flow", *TINY, "--steps", "2", "--sample-steps", "0"],
    "train-negative-invert-steps": ["train", "flow", *TINY, "--steps", "2", "--invert-steps", "-4"],
    "train-unknown-time-sampling": ["train", "flow", *TINY, "--steps", "2", "--time-sampling", "beta"],
    "train-zero-logit-std": ["train", "flow", *TINY, "--steps", "2", "--logit-std", "0"],
    "train-zero-probes": ["train", "flow", *TINY, "--steps", "2", "--likelihood-probes", "0"],
    "train-unknown-likelihood-solver": ["train", "flow", *TINY, "--steps", "2", "--likelihood-solver", "dopri5"],
    "sample-unknown-sampler": ["sample", "{run}", "--n", "2", "--sampler", "ddpm", "--out", "{tmp}/s.png"],
    "sample-zero-steps": ["sample", "{run}", "--n", "2", "--steps", "0", "--out", "{tmp}/s.png"],
    "sample-eta": ["sample", "{run}", "--n", "2", "--eta", "0.5", "--out", "{tmp}/s.png"],
    "invert-unknown-sampler": ["invert", "{run}", "--n", "2", "--sampler", "dpm++2m"],
    "sample-guidance-unconditional": ["sample", "{run}", "--n", "2", "--guidance", "2", "--out", "{tmp}/s.png"],
    "eval-unknown-sampler": ["eval", "{run}", "--quick", "--json", "--sampler", "ddim"],  # without --json a progress line comes first
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_changes_nothing(case, run, tmp_path, capsys):
    argv = [a.replace("{run}", str(run)).replace("{tmp}", str(tmp_path)) for a in BAD[case]]
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "new")]
    before = _snapshot(run.parent), _snapshot(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    _one_error_line(capsys.readouterr().err)
    assert (_snapshot(run.parent), _snapshot(tmp_path)) == before


def test_a_whole_session_runs_without_pickle(no_pickle, tmp_path, capsys):  # noqa: F811
    path = tmp_path / "run"
    assert main(["train", "flow", *TINY, "--steps", "4", "--checkpoint-every", "2", "--out", str(path)]) == 0
    assert main(["train", "flow", "--out", str(path), "--resume", "--quiet"]) == 0
    assert main(["sample", str(path), "--n", "2", "--steps", "3", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["invert", str(path), "--n", "2", "--steps", "3"]) == 0
    capsys.readouterr()
    assert main(["eval", str(path), "--json", "--quick"]) == 0
    assert "bpd" in json.loads(capsys.readouterr().out)


def test_torchrun_trains_one_flow_run_that_samples(tmp_path):
    out = tmp_path / "ddp"
    for _ in range(3):  # relaunched only after the known gloo teardown abort (tests/test_distributed.py)
        shutil.rmtree(out, ignore_errors=True)
        proc = start_torchrun(["-m", "diffvae", "train", "flow", *TINY, "--steps", "4", "--checkpoint-every", "2",
                               "--out", str(out)], cwd=tmp_path)
        _, stderr = proc.communicate(timeout=BACKSTOP_S)
        if proc.returncode == 0 or KNOWN_TEARDOWN_ABORT not in stderr:
            break
    assert proc.returncode == 0, stderr[-3000:]
    assert stderr.count("diffvae: trained flow") == 1
    tensors, meta = RunDir(out).load_checkpoint()
    assert meta["step"] == 4 and meta["world_size"] == 2
    assert not torch.equal(tensors["rng/torch"], tensors["rng/torch/rank1"])
    assert main(["sample", str(out), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s.npz")]) == 0
