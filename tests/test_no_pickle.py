"""Nothing is pickled: checkpoints, caches and outputs are safetensors / JSON / PNG / npz only.

1. With every pickle entry point and ``torch.load`` / ``torch.save`` made to raise, a whole
   session works in-process: train (and resume) → sample → load → invert → interpolate → eval,
   for a VAE and a diffusion run; and an ``.npz`` holding a pickled object array is refused.
2. The source tree never calls them (checked on the syntax tree, so docstrings do not count).
"""

from __future__ import annotations

import _pickle
import ast
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import diffvae
from diffvae.api import load
from diffvae.cli import main

SRC = Path(diffvae.__file__).parent
FEATURE_CACHE = Path(tempfile.gettempdir()) / "diffvae-test-feature-cache"  # shared by the test files that evaluate


def _forbidden(name: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{name} was called: diffvae must not pickle")

    return refuse


def _forbidden_class(base: type, name: str) -> type:
    """A subclass of ``base`` that refuses to be instantiated (a class, so modules imported
    later can still subclass it)."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{name} was instantiated: diffvae must not pickle")

    return type(base.__name__, (base,), {"__init__": refuse})


@pytest.fixture
def no_pickle(monkeypatch):
    for module in (pickle, _pickle):
        for name in ("load", "loads", "dump", "dumps"):
            monkeypatch.setattr(module, name, _forbidden(f"{module.__name__}.{name}"))
        for name in ("Unpickler", "Pickler"):
            monkeypatch.setattr(module, name, _forbidden_class(getattr(module, name), f"{module.__name__}.{name}"))
    for name in ("load", "save"):
        monkeypatch.setattr(torch, name, _forbidden(f"torch.{name}"))
        monkeypatch.setattr(torch.serialization, name, _forbidden(f"torch.serialization.{name}"))
    monkeypatch.setenv("DIFFVAE_CACHE", str(FEATURE_CACHE))


def test_the_guard_is_armed(no_pickle):
    with pytest.raises(AssertionError, match="must not pickle"):
        pickle.loads(b"\x80\x04K\x01.")
    with pytest.raises(AssertionError, match="must not pickle"):
        torch.load("anything.pt")
    with pytest.raises(AssertionError, match="must not pickle"):
        pickle.Unpickler(None)


def test_a_whole_session_runs_without_pickle(no_pickle, tmp_path, capsys):
    vae, ddpm = tmp_path / "vae", tmp_path / "ddpm"
    common = ["--data", "digits", "--precision", "fp32", "--device", "cpu", "--quiet", "--checkpoint-every", "10"]
    assert main(["train", "vae", *common, "--steps", "20", "--width", "16", "--latent-dim", "4", "--batch", "32",
                 "--out", str(vae)]) == 0
    assert main(["train", "ddpm", *common, "--steps", "2", "--channels", "8", "--channel-mult", "1",
                 "--timesteps", "50", "--batch", "16", "--out", str(ddpm)]) == 0
    # resume reads the checkpoint (model, EMA, optimizer and RNG state) back
    assert main(["train", "vae", "--out", str(vae), "--resume", "--quiet"]) == 0

    assert main(["sample", str(vae), "--n", "4", "--out", str(tmp_path / "v.npz")]) == 0
    assert main(["sample", str(ddpm), "--n", "2", "--steps", "3", "--out", str(tmp_path / "d.png")]) == 0
    assert main(["interpolate", str(vae), "--pairs", "2", "--frames", "3", "--out", str(tmp_path / "i.png")]) == 0
    assert main(["invert", str(vae), "--n", "4"]) == 0
    assert load(vae).trained_steps == 20 and load(ddpm, weights="model").trained_steps == 2
    with np.load(tmp_path / "v.npz", allow_pickle=False) as f:
        assert f["images"].shape == (4, 1, 8, 8)

    capsys.readouterr()
    assert main(["eval", str(vae), "--json", "--quick"]) == 0
    assert "fid" in capsys.readouterr().out
    assert any(FEATURE_CACHE.rglob("*.safetensors"))  # the feature network is cached as safetensors too


def test_an_npz_holding_pickled_objects_is_refused_not_unpickled(tmp_path, capsys, monkeypatch):
    path = tmp_path / "objects.npz"
    np.savez(path, images=np.array([np.zeros((8, 8), np.uint8), "not an image"], dtype=object))
    monkeypatch.setattr(pickle, "load", _forbidden("pickle.load"))
    rc = main(["data", "info", f"npz:{path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("diffvae: error:"), err


FORBIDDEN_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _pickle_uses(path: Path) -> list[str]:
    """Imports of pickling modules, ``torch.load``/``torch.save``/``torch.serialization``, and
    ``allow_pickle=True`` / ``weights_only=False`` anywhere in a source file."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    found = []
    restricted = {id(call.func) for call in ast.walk(tree) if isinstance(call, ast.Call)  # torch.load(..., weights_only=True)
                  and ast.unparse(call.func) == "torch.load" and any(
                      k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                      for k in call.keywords)}
    for node in ast.walk(tree):
        where = f"{path.relative_to(SRC.parent)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[0] in FORBIDDEN_MODULES or module == "torch.serialization" or (
                    module == "torch" and any(a.name in ("load", "save", "serialization") for a in node.names)):
                found.append(f"{where} from {module} import ...")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "torch" and node.attr in ("load", "save", "serialization") and id(node) not in restricted:
                found.append(f"{where} torch.{node.attr}")
            if node.value.id in FORBIDDEN_MODULES:
                found.append(f"{where} {node.value.id}.{node.attr}")
        elif isinstance(node, ast.keyword):
            if node.arg in ("allow_pickle", "weights_only") and not (
                    isinstance(node.value, ast.Constant) and node.value.value is (node.arg == "weights_only")):
                found.append(f"{where} {node.arg}={ast.unparse(node.value)}")
    return found


def test_the_detector_finds_pickle_uses(tmp_path, monkeypatch):
    bad = SRC / "__detector_probe__.py"  # not written: parse a string through the same function
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (
        "import pickle\nimport torch\nfrom torch import load\nx = torch.load('a')\nimport numpy as np\n"
        "np.load('b', allow_pickle=True)\ny = np.load('c', allow_pickle=False)\n"
        "w = torch.load('d', weights_only=True)\nv = torch.load('e', weights_only=False)\n"))
    uses = _pickle_uses(bad)
    # import pickle, from torch import load, torch.load('a'), allow_pickle=True, torch.load('e') and its weights_only=False;
    # torch.load(..., weights_only=True) (tensors only: a user's Inception weights file) passes
    assert len(uses) == 6, uses
    assert not any(":8 " in use for use in uses), uses


def test_the_source_tree_never_pickles():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    uses = [use for path in files for use in _pickle_uses(path)]
    assert uses == []
