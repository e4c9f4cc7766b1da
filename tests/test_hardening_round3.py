"""Issue 27 (hardening, round three): hostile cases on score, export, pack, --config, conditioning,
guidance, the monitor, caches, devices and odd paths. Each bad case ends in exactly one line
``diffvae: error: ...``, exit 2, no traceback, and leaves the workspace byte-identical."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffvae.cli import main

from test_bad_input import SMALL_VAE, _one_error_line, _snapshot

W = "{ws}"


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("round3")
    rng = np.random.default_rng(0)
    np.savez(root / "samples.npz", images=rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8))
    for name in ("swapped-shape", "swapped-pixels"):  # a run on an .npz, whose file is then replaced
        data = root / f"{name}.npz"
        np.savez(data, images=rng.integers(0, 256, (120, 8, 8), dtype=np.uint8))
        assert main(["train", "vae", "--data", f"npz:{data}", "--steps", "4", "--checkpoint-every", "2", *SMALL_VAE,
                     "--out", str(root / f"run-{name}")]) == 0
    np.savez(root / "swapped-shape.npz", images=rng.integers(0, 256, (120, 28, 28), dtype=np.uint8))
    np.savez(root / "swapped-pixels.npz", images=rng.integers(0, 256, (120, 8, 8), dtype=np.uint8))
    (root / "force.json").write_text('{"force": true, "data": "digits", "steps": 2}')
    (root / "resume.toml").write_text('resume = true\nsteps = 2\n')
    (root / "out.json").write_text(json.dumps({"out": str(root / "run-swapped-pixels"), "data": "digits", "steps": 2}))
    (root / "lr.json").write_text('{"lr": 0.01}')
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "deep.toml").write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    (root / "latin1.toml").write_bytes("steps = 2 # caf\xe9\n".encode("latin-1"))
    return root


CASES: dict[str, tuple[list[str], str]] = {  # name -> (argv, a fragment the error line must hold)
    "compare-device-cuda": (["compare", "--data", "digits", "--budget", "1", "--out", f"{W}/c", "--device", "cuda"],
                            "CUDA is not available"),
    "compare-device-cuda1": (["compare", "--data", "digits", "--budget", "1", "--out", f"{W}/c", "--device", "cuda:1"],
                             "CUDA is not available"),
    "compare-device-mps": (["compare", "--data", "digits", "--budget", "1", "--out", f"{W}/c", "--device", "mps"], "MPS"),
    "compare-device-tpu": (["compare", "--data", "digits", "--budget", "1", "--out", f"{W}/c", "--device", "tpu"], "--device"),
    "score-device-cuda": (["score", f"npz:{W}/samples.npz", "--data", "digits", "--device", "cuda"], "CUDA is not available"),
    "score-device-mps": (["score", f"npz:{W}/samples.npz", "--data", "digits", "--device", "mps"], "MPS"),
    "score-device-bogus": (["score", f"npz:{W}/samples.npz", "--data", "digits", "--device", "gpu0"], "--device"),
    # ------------------------------------------------ a run is bound to its data (--resume, eval, sample)
    "resume-data-swapped-shape": (["train", "vae", "--resume", "--out", f"{W}/run-swapped-shape"], "changed since"),
    "resume-data-swapped-pixels": (["train", "vae", "--resume", "--out", f"{W}/run-swapped-pixels"], "changed since"),
    "resume-data-swapped-steps": (["train", "vae", "--resume", "--steps", "4", "--out", f"{W}/run-swapped-pixels"],
                                  "changed since"),
    "eval-data-swapped-pixels": (["eval", f"{W}/run-swapped-pixels", "--out", f"{W}/e.json"], "changed since"),
    "eval-data-swapped-shape": (["eval", f"{W}/run-swapped-shape", "--out", f"{W}/e.json"], "changed since"),
    # ------------------------------------------------ --config: one file, no destructive keys, no abbreviations
    "config-sets-force": (["train", "vae", "--config", f"{W}/force.json", "--out", f"{W}/run-swapped-pixels"],
                          "'force' cannot come from a file"),
    "config-sets-resume": (["train", "vae", "--config", f"{W}/resume.toml", "--out", f"{W}/run-swapped-pixels"],
                           "'resume' cannot come from a file"),
    "config-chooses-out-under-force": (["train", "vae", "--config", f"{W}/out.json", "--force"], "give --out on the command line"),
    "compare-config-sets-force": (["compare", "--config", f"{W}/force.json", "--out", f"{W}/c"], "'force' cannot come from a file"),
    "config-twice": (["train", "vae", "--config", f"{W}/lr.json", "--config", f"{W}/out.json", "--out", f"{W}/n"],
                     "--config given 2 times"),
    "config-twice-equals": (["compare", "--config=" + f"{W}/lr.json", "--config", f"{W}/lr.json", "--data", "digits",
                             "--out", f"{W}/c"], "--config given 2 times"),
    "config-abbreviated": (["train", "vae", "--confi", f"{W}/lr.json", "--data", "digits", "--steps", "2", "--out", f"{W}/n"],
                           "unrecognized arguments: --confi"),
    "out-abbreviated": (["train", "vae", "--data", "digits", "--steps", "2", "--ou", f"{W}/n"], "--ou"),
    "steps-abbreviated": (["train", "vae", "--data", "digits", "--step", "2", "--out", f"{W}/n"], "--step"),
    "sample-n-abbreviated-force": (["sample", f"{W}/run-swapped-pixels", "--n", "2", "--out", f"{W}/s.png", "--forc"], "--forc"),
    "compare-budget-abbreviated": (["compare", "--data", "digits", "--budg", "1", "--out", f"{W}/c"], "--budg"),
    "config-nested-json": (["train", "vae", "--config", f"{W}/deep.json", "--out", f"{W}/n"], "--config"),
    "config-nested-toml": (["train", "vae", "--config", f"{W}/deep.toml", "--out", f"{W}/n"], "--config"),
    "config-not-utf8": (["train", "vae", "--config", f"{W}/latin1.toml", "--data", "digits", "--out", f"{W}/n"], "not valid TOML"),
}


@pytest.fixture
def no_accelerator(monkeypatch):
    """This machine as one without CUDA or MPS, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None:
        monkeypatch.setattr(mps, "is_available", lambda: False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_case_is_one_line_and_changes_nothing(case, ws, capsys, no_accelerator):
    argv, fragment = CASES[case]
    before = _snapshot(ws)
    capsys.readouterr()
    rc = main([a.replace(W, str(ws)) for a in argv])
    captured = capsys.readouterr()
    assert rc == 2, (rc, captured.err)
    assert fragment in _one_error_line(captured.err)
    assert captured.out == ""
    assert _snapshot(ws) == before
