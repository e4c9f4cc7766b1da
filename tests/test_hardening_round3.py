"""Issue 27 (hardening, round three): hostile cases on score, export, pack, --config, conditioning,
guidance, the monitor, caches, devices and odd paths. Each bad case ends in exactly one line
``diffvae: error: ...``, exit 2, no traceback, and leaves the workspace byte-identical."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffvae.cli import main

from test_bad_input import _one_error_line, _snapshot

W = "{ws}"


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("round3")
    np.savez(root / "samples.npz", images=np.random.default_rng(0).integers(0, 256, (40, 1, 8, 8), dtype=np.uint8))
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
