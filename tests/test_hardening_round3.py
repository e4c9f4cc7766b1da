"""Issue 27 (hardening, round three): hostile cases on score, export, pack, --config, conditioning,
guidance, the monitor, caches, devices and odd paths. Each bad case ends in exactly one line
``diffvae: error: ...``, exit 2, no traceback, and leaves the workspace byte-identical."""

from __future__ import annotations

import errno
import json
import os
import shutil
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
    for name, files in {"someones-config": {"config.json": '{"lr": 0.1}', "notes.txt": "precious"},
                        "someones-results": {"results.json": "{}", "stages.json": "{}", "thesis.tex": "precious"},
                        "someones-export": {"model_index.json": "{}", "README.md": "# my pipeline"}}.items():
        (root / name).mkdir()
        for file, text in files.items():
            (root / name / file).write_text(text)
    (root / "marked-compare").mkdir()
    (root / "marked-compare" / ".diffvae").write_text('{"kind": "compare", "made_by": "diffvae"}')
    (root / "marked-compare" / "results.json").write_text("{}")
    (root / "holder").mkdir()
    np.savez(root / "big-samples.npz", images=np.zeros((10, 28, 28), np.uint8))
    np.savez(root / "float-samples.npz", images=np.zeros((10, 8, 8), np.float32))
    (root / "afile").write_text("a file")
    for name, text in {"unknown.json": '{"lrr": 1}', "bool-list.json": '{"quiet": [1]}', "flags.yaml": "lr: 1",
                       "array.json": "[1, 2]", "nested.json": '{"lr": {"a": 1}}', "help.json": '{"help": true}',
                       "self.json": '{"config": "self.json"}'}.items():
        (root / name).write_text(text)
    (root / "holder" / "inner").mkdir()
    _hostile_data(root)
    for name, file, text in [("stage-metrics-latin1", "autoencoder_metrics.jsonl", b'{"step": 1, "loss": 1.0}\n\xff\xfe\n'),
                             ("metrics-latin1", "metrics.jsonl", b'{"step": 1, "loss": 1.0}\n\xe9t\xe9\n')]:
        shutil.copytree(root / "run-swapped-pixels", root / name)
        (root / name / file).write_bytes(text)
    return root


def _hostile_data(root: Path) -> None:
    """.npz files whose headers or labels claim more than they hold, and a pack edited to declare 20 classes."""
    import io
    import zipfile

    def npz_declaring(name: str, shape: tuple[int, ...], real: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.lib.format.write_array_header_2_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
        with zipfile.ZipFile(root / name, "w") as archive:
            archive.writestr("images.npy", buffer.getvalue() + real.tobytes())

    zeros = np.zeros((40, 8, 8), np.uint8)
    npz_declaring("huge-header.npz", (12_250_000_000, 8, 8), zeros)  # 784 billion bytes declared
    npz_declaring("short-data.npz", (400, 8, 8), zeros)  # declares 10× the bytes it holds
    np.savez(root / "label-1e12.npz", images=zeros, labels=np.array([10**12] + [0] * 39))
    np.savez(root / "label-inf.npz", images=zeros, y=np.array([np.inf] + [0.0] * 39))
    np.savez(root / "labels-short.npz", images=zeros, y=np.zeros(7, np.int64))
    np.savez(root / "two-arrays.npz", a=zeros, b=zeros)
    np.savez(root / "three-samples.npz", images=zeros[:3])
    np.savez(root / "thirty-images.npz", images=np.random.default_rng(1).integers(0, 256, (30, 8, 8), dtype=np.uint8))
    from diffvae.data import pack

    tampered = pack("digits", root / "pack-20-classes", limit=200)
    manifest = json.loads((tampered / "pack.json").read_text())
    manifest["num_classes"], manifest["class_names"] = 20, None  # consistent with each other, not with the labels
    (tampered / "pack.json").write_text(json.dumps(manifest))


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
    # ------------------------------------------------ --force replaces only what diffvae made; no output over a run
    "train-force-someones-config": (["train", "vae", "--data", "digits", "--steps", "2", "--force", "--out", f"{W}/someones-config"],
                                    "not a diffvae run folder: it holds 'config.json', 'notes.txt'"),
    "train-force-a-compare-folder": (["train", "vae", "--data", "digits", "--steps", "2", "--force", "--out", f"{W}/marked-compare"],
                                     "it is a diffvae compare folder"),
    "train-force-someones-results": (["train", "vae", "--data", "digits", "--steps", "2", "--force", "--out", f"{W}/someones-results"],
                                     "not a diffvae run folder"),
    "compare-force-someones-results": (["compare", "--data", "digits", "--budget", "1", "--force", "--out", f"{W}/someones-results"],
                                       "not a diffvae compare folder: it holds 'results.json', 'stages.json', 'thesis.tex'"),
    "compare-force-someones-config": (["compare", "--data", "digits", "--budget", "1", "--force", "--out", f"{W}/someones-config"],
                                      "not a diffvae compare folder"),
    "compare-force-a-run": (["compare", "--data", "digits", "--budget", "1", "--force", "--out", f"{W}/run-swapped-pixels"],
                            "it is a diffvae run folder"),
    "export-force-someones-folder": (["export", f"{W}/run-swapped-pixels", "--to", "diffusers", "--force", f"{W}/someones-export"],
                                     "not a diffvae export folder"),
    "export-force-folder-holding-the-run": (["export", f"{W}/run-swapped-pixels", "--to", "diffusers", "--force", W],
                                            "holds the run being exported"),
    "export-force-dot-holding-the-run": (["export", f"{W}/run-swapped-pixels", "--to", "diffusers", "--force", f"{W}/."],
                                         "holds the run being exported"),
    "export-force-onto-the-run": (["export", f"{W}/run-swapped-pixels", "--to", "diffusers", "--force", f"{W}/run-swapped-pixels"],
                                  "holds the run being exported"),
    "export-force-a-compare-folder": (["export", f"{W}/run-swapped-pixels", "--to", "diffusers", "--force", f"{W}/marked-compare"],
                                      "it is a diffvae compare folder"),
    "export-inside-a-run": (["export", f"{W}/run-swapped-shape", "--to", "diffusers", f"{W}/run-swapped-pixels/x"],
                            "inside a diffvae run"),
    "pack-inside-a-run": (["data", "pack", "digits", "--out", f"{W}/run-swapped-pixels/pack"], "inside the run"),
    "pack-deep-inside-a-run": (["data", "pack", "digits", "--out", f"{W}/run-swapped-pixels/a/b/pack"], "inside the run"),
    "pack-force-someones-folder": (["data", "pack", "digits", "--force", "--out", f"{W}/someones-config"], "not a diffvae pack"),
    "sample-into-a-run": (["sample", f"{W}/run-swapped-pixels", "--n", "2", "--out", f"{W}/run-swapped-shape/s.png"],
                          "inside the run"),
    # ------------------------------------------------ inputs against the resources they claim
    "npz-header-declares-784-gb": (["train", "vae", "--data", f"npz:{W}/huge-header.npz", "--steps", "2", "--out", f"{W}/n"],
                                   "declares 784000000000 bytes"),
    "npz-header-beyond-the-file": (["train", "vae", "--data", f"npz:{W}/short-data.npz", "--steps", "2", "--out", f"{W}/n"],
                                   "declares 25600 bytes of data but the file holds 2560"),
    "data-info-npz-header-784-gb": (["data", "info", f"npz:{W}/huge-header.npz"], "declares 784000000000 bytes"),
    "score-samples-header-784-gb": (["score", f"npz:{W}/huge-header.npz", "--data", "digits"], "declares 784000000000 bytes"),
    "pack-npz-header-784-gb": (["data", "pack", f"npz:{W}/huge-header.npz", "--out", f"{W}/p"], "declares 784000000000 bytes"),
    "npz-label-1e12": (["train", "vae", "--conditional", "--data", f"npz:{W}/label-1e12.npz", "--steps", "2", "--out", f"{W}/n"],
                       "class label of 1000000000000"),
    "npz-label-inf": (["train", "vae", "--conditional", "--data", f"npz:{W}/label-inf.npz", "--steps", "2", "--out", f"{W}/n"],
                      "class labels beyond"),
    "npz-labels-wrong-length": (["train", "vae", "--conditional", "--data", f"npz:{W}/labels-short.npz", "--steps", "2",
                                 "--out", f"{W}/n"], "holds 7 labels for 40 images"),
    "npz-labels-wrong-length-unconditional": (["data", "info", f"npz:{W}/labels-short.npz"], "holds 7 labels for 40 images"),
    "npz-several-arrays-names-the-flag": (["data", "info", f"npz:{W}/two-arrays.npz"], "pick one with --key NAME"),
    "pack-declares-20-classes": (["train", "vae", "--conditional", "--data", f"packed:{W}/pack-20-classes", "--steps", "2",
                                  "--out", f"{W}/n"], "'num_classes' is 20 but the labels are 0..9"),
    "pack-declares-20-classes-info": (["data", "info", f"packed:{W}/pack-20-classes"], "'num_classes' is 20"),
    # ------------------------------------------------ numbers against their documented ranges
    "score-seed-huge": (["score", f"npz:{W}/samples.npz", "--data", "digits", "--seed", str(10**30)], "--seed must be an integer in [0, 4294967295]"),
    "score-seed-negative": (["score", f"npz:{W}/samples.npz", "--data", "digits", "--seed", "-1"], "--seed must be"),
    "score-bootstrap-huge": (["score", f"npz:{W}/samples.npz", "--data", "digits", "--bootstrap", str(10**12)],
                             "--bootstrap must be an integer in [0, 100000]"),
    "score-n-huge": (["score", f"{W}/run-swapped-pixels", "--n", str(10**12)], "--n must be an integer in [4, 1000000]"),
    "score-n-one": (["score", f"{W}/run-swapped-pixels", "--n", "1"], "--n must be"),
    "sample-guidance-1e39": (["sample", f"{W}/run-swapped-pixels", "--n", "2", "--class", "0", "--guidance", "1e39",
                              "--out", f"{W}/s.png"], "trained unconditionally"),
    "score-three-samples": (["score", f"npz:{W}/three-samples.npz", "--data", "digits"], "3 samples: FID, KID and precision/recall"),
    "score-three-held-out": (["score", f"npz:{W}/samples.npz", "--data", f"npz:{W}/thirty-images.npz"],
                             "3 held-out images: FID, KID and precision/recall"),
    "budget-recipe-then-refusal-ddpm": (["train", "ddpm", "--data", "digits", "--budget", "1", "--out", f"{W}/run-swapped-pixels"],
                                        "already exists"),
    "budget-recipe-then-refusal-vae": (["train", "vae", "--data", "digits", "--budget", "1", "--out", f"{W}/run-swapped-pixels"],
                                       "already exists"),
    "budget-recipe-then-bad-data": (["train", "ldm", "--data", f"npz:{W}/label-1e12.npz", "--conditional", "--budget", "1",
                                     "--out", f"{W}/n"], "class label of"),
    # ------------------------------------------------ score
    "score-samples-key-on-a-folder": (["score", f"folder:{W}/holder", "--data", "digits", "--samples-key", "x"], "--samples-key applies"),
    "score-samples-key-missing": (["score", f"npz:{W}/samples.npz", "--data", "digits", "--samples-key", "x"], "has no array 'x'"),
    "score-samples-other-size": (["score", f"npz:{W}/big-samples.npz", "--data", "digits"], "reference data is 1×8×8"),
    "score-samples-floats": (["score", f"npz:{W}/float-samples.npz", "--data", "digits"], "must be uint8"),
    "score-features-bogus": (["score", f"npz:{W}/samples.npz", "--data", "digits", "--features", "clip"], "--features must be"),
    "score-features-inception-empty": (["score", f"npz:{W}/samples.npz", "--data", "digits", "--features", "inception:"],
                                       "needs the path"),
    "score-n-on-files": (["score", f"npz:{W}/samples.npz", "--data", "digits", "--n", "10"], "apply when SAMPLES is a run"),
    "score-sampler-on-files": (["score", f"npz:{W}/samples.npz", "--data", "digits", "--sampler", "ddim"], "apply when SAMPLES"),
    "score-bootstrap-negative": (["score", f"npz:{W}/samples.npz", "--data", "digits", "--bootstrap", "-1"], "--bootstrap must be"),
    "score-seed-text": (["score", f"npz:{W}/samples.npz", "--data", "digits", "--seed", "abc"], "--seed"),
    "score-data-missing": (["score", f"npz:{W}/samples.npz", "--data", f"npz:{W}/none.npz"], "none.npz"),
    "score-spec-empty": (["score", "npz:", "--data", "digits"], "npz"),
    "score-without-data": (["score", f"npz:{W}/samples.npz"], "--data SPEC is required"),
    # ------------------------------------------------ export
    "export-to-onnx": (["export", f"{W}/run-swapped-pixels", "--to", "onnx", f"{W}/e"], "invalid choice: 'onnx'"),
    "export-missing-run": (["export", f"{W}/no-run", "--to", "diffusers", f"{W}/e"], "no-run"),
    "export-out-is-a-file": (["export", f"{W}/run-swapped-pixels", "--to", "diffusers", f"{W}/afile"], "exists and is not a folder"),
    "export-out-exists": (["export", f"{W}/run-swapped-pixels", "--to", "diffusers", f"{W}/holder"], "already exists"),
    # ------------------------------------------------ data pack / packed
    "pack-out-is-a-file": (["data", "pack", "digits", "--out", f"{W}/afile"], "is a file"),
    "pack-unknown-spec": (["data", "pack", "cifar", "--out", f"{W}/p"], "cifar"),
    "pack-size-zero": (["data", "pack", "digits", "--size", "0", "--out", f"{W}/p"], "--size"),
    "pack-limit-negative": (["data", "pack", "digits", "--limit", "-1", "--out", f"{W}/p"], "--limit"),
    "packed-missing": (["data", "info", f"packed:{W}/no-pack"], "no such directory"),
    "packed-not-a-pack": (["data", "info", f"packed:{W}/holder"], "not a diffvae pack"),
    "pack-force-onto-a-run": (["data", "pack", "digits", "--force", "--out", f"{W}/run-swapped-pixels"], "not a diffvae pack"),
    # ------------------------------------------------ --config files
    "config-unknown-key": (["train", "vae", "--config", f"{W}/unknown.json", "--out", f"{W}/n"], "unknown key 'lrr'"),
    "config-bool-as-list": (["train", "vae", "--config", f"{W}/bool-list.json", "--out", f"{W}/n"], "must be true or false"),
    "config-yaml": (["train", "vae", "--config", f"{W}/flags.yaml", "--out", f"{W}/n"], "must be a .json or .toml"),
    "config-array": (["train", "vae", "--config", f"{W}/array.json", "--out", f"{W}/n"], "must hold one table"),
    "config-nested-value": (["train", "vae", "--config", f"{W}/nested.json", "--out", f"{W}/n"], "must be a number"),
    "config-help-key": (["train", "vae", "--config", f"{W}/help.json", "--out", f"{W}/n"], "unknown key 'help'"),
    "config-config-key": (["train", "vae", "--config", f"{W}/self.json", "--out", f"{W}/n"], "unknown key 'config'"),
    "config-on-sample": (["sample", f"{W}/run-swapped-pixels", "--config", f"{W}/unknown.json", "--out", f"{W}/s.png"],
                         "unrecognized arguments: --config"),
    "config-missing-file": (["compare", "--config", f"{W}/none.toml", "--out", f"{W}/c"], "cannot read --config"),
    # ------------------------------------------------ devices for every command
    "train-device-cuda": (["train", "vae", "--data", "digits", "--steps", "2", "--device", "cuda", "--out", f"{W}/n"], "CUDA is not available"),
    "sample-device-cuda": (["sample", f"{W}/run-swapped-pixels", "--device", "cuda", "--out", f"{W}/s.png"], "CUDA is not available"),
    "eval-device-mps": (["eval", f"{W}/run-swapped-shape", "--device", "mps"], "MPS"),
    "train-device-cuda-garbage": (["train", "vae", "--data", "digits", "--steps", "2", "--device", "cuda:x", "--out", f"{W}/n"], "CUDA"),
    "score-run-device-cuda": (["score", f"{W}/run-swapped-pixels", "--device", "cuda"], "CUDA is not available"),
    # ------------------------------------------------ monitor flags
    "eval-every-negative": (["train", "vae", "--data", "digits", "--steps", "2", "--eval-every", "-1", "--out", f"{W}/n"], "--eval-every"),
    "sample-every-text": (["train", "vae", "--data", "digits", "--steps", "2", "--sample-every", "x", "--out", f"{W}/n"], "--sample-every"),
    "eval-every-float": (["train", "vae", "--data", "digits", "--steps", "2", "--eval-every", "2.5", "--out", f"{W}/n"], "--eval-every"),
    # ------------------------------------------------ odd outputs
    "sample-out-txt": (["sample", f"{W}/run-swapped-pixels", "--out", f"{W}/s.txt"], "--out must end in"),
    "plot-out-inside-run": (["plot", f"{W}/run-swapped-pixels", "--out", f"{W}/run-swapped-pixels/c.png"], "inside the run"),
    "plot-not-a-run": (["plot", f"{W}/holder", "--out", f"{W}/c.png"], "not a diffvae run"),
    "sample-out-is-a-folder": (["sample", f"{W}/run-swapped-pixels", "--out", f"{W}/holder"], "--out must end in"),
    # ------------------------------------------------ damaged files read through the schema
    "plot-stage-metrics-not-utf8": (["plot", f"{W}/stage-metrics-latin1", "--out", f"{W}/c.png"], "not UTF-8 at byte 25"),
    "plot-metrics-not-utf8": (["plot", f"{W}/metrics-latin1", "--out", f"{W}/c.png"], "not UTF-8 at byte 25"),
    # ------------------------------------------------ one line, whatever the path holds
    "newline-in-run-path": (["sample", f"{W}/no\nsuch run", "--n", "2", "--out", f"{W}/s.png"], "no\\nsuch run"),
    "newline-in-data-path": (["train", "vae", "--data", f"npz:{W}/x\ny.npz", "--steps", "2", "--out", f"{W}/n"], "x\\ny.npz"),
    "escape-in-data-path": (["train", "vae", "--data", f"npz:{W}/e\x1b[2J.npz", "--steps", "2", "--out", f"{W}/n"], "e\\x1b[2J.npz"),
    "carriage-return-in-config-path": (["train", "vae", "--config", f"{W}/a\rb.json", "--out", f"{W}/n"], "a\\rb.json"),
    "newline-in-export-out": (["export", f"{W}/run-swapped-pixels", "--to", "diffusers", f"{W}/no\nparent/e"], "no\\nparent"),
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


def test_force_replaces_marked_and_older_runs_and_outputs_may_sit_beside_a_stray_config(tmp_path, capsys):
    """The other side of the refusals: a run made before marks (config.json by schema) is still replaced by --force;
    a new run carries the mark; an output in a folder that merely holds someone's config.json is written."""
    from diffvae.marker import MARKER, marker_kind

    run = tmp_path / "run"
    argv = ["train", "vae", "--data", "digits", "--steps", "2", *SMALL_VAE, "--out", str(run)]
    assert main(argv) == 0 and marker_kind(run) == "run"
    (run / MARKER).unlink()  # as an older diffvae left it
    assert main([*argv, "--force"]) == 0 and marker_kind(run) == "run"
    stray = tmp_path / "project"
    stray.mkdir()
    (stray / "config.json").write_text('{"lr": 0.1}')
    assert main(["sample", str(run), "--n", "2", "--out", str(stray / "s.png")]) == 0
    assert (stray / "s.png").is_file()


def test_export_force_dot_is_refused_in_one_line(ws, capsys, monkeypatch):
    """``export --force .`` in the folder holding the run: one line (an internal error before)."""
    monkeypatch.chdir(ws)
    before = _snapshot(ws)
    assert main(["export", "run-swapped-pixels", "--to", "diffusers", "--force", "."]) == 2
    assert "holds the run being exported" in _one_error_line(capsys.readouterr().err)
    assert _snapshot(ws) == before


# ----------------------------------------------------------------------------- writes are complete or absent

def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    from diffvae.errors import DiffvaeError
    from diffvae.runs import atomic_write_bytes

    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(b"the previous checkpoint")
    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(DiffvaeError) as refused:
        atomic_write_bytes(path, b"x" * 5000)
    assert str(refused.value) == f"cannot write {path}: No space left on device (4.9 KiB to write)"
    assert path.read_bytes() == b"the previous checkpoint" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_train_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """Regression (issue 27): a full disk during train was an internal error."""
    monkeypatch.setattr(os, "fsync", _disk_full)
    run = tmp_path / "run"
    assert main(["train", "vae", "--data", "digits", "--steps", "2", *SMALL_VAE, "--out", str(run)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"diffvae: error: cannot write {run}/") and "No space left on device" in line
    assert not run.exists()


def test_a_full_disk_while_training_names_the_file(tmp_path, monkeypatch, capsys):
    """The disk fills after the run was created: the metrics or the checkpoint write is one line naming it."""
    from diffvae.runs import RunDir

    real = RunDir.write_config
    monkeypatch.setattr(RunDir, "write_config", lambda self, config: (real(self, config), monkeypatch.setattr(os, "fsync", _disk_full)))
    run = tmp_path / "run"
    assert main(["train", "vae", "--data", "digits", "--steps", "4", "--checkpoint-every", "2", *SMALL_VAE,
                 "--out", str(run)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"cannot write {run}" in line and "No space left on device" in line
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_pack_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """Regression (issue 27): data pack on a full disk left its partial shards in a hidden temporary folder."""
    import diffvae.pack as pack_module

    class FullFile:
        def __init__(self, *args, **kwargs):
            pass

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            pass

    monkeypatch.setattr(pack_module, "open", FullFile, raising=False)
    out = tmp_path / "pack"
    assert main(["data", "pack", "digits", "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"diffvae: error: cannot write {out}: No space left on device (") and "to write)" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES])
def test_export_that_cannot_be_written_keeps_the_earlier_export(tmp_path, err):
    from diffvae.errors import DiffvaeError
    from diffvae.export import _write_atomically
    from diffvae.runs import write_marker

    out = tmp_path / "export"
    out.mkdir()
    (out / "model_index.json").write_text("the earlier export")
    write_marker(out, "export")

    def write(folder):
        (folder / "unet").mkdir()
        raise OSError(err, os.strerror(err), str(folder / "unet" / "diffusion_pytorch_model.safetensors"))

    with pytest.raises(DiffvaeError, match=f"cannot write .*diffusion_pytorch_model.safetensors: {os.strerror(err)}"):
        _write_atomically(out, True, write)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert (out / "model_index.json").read_text() == "the earlier export"


@pytest.mark.parametrize("argv, resumable", [(["data", "pack", "digits", "--out", "{tmp}/p"], False),
                                            (["score", "npz:{tmp}/s.npz", "--data", "digits"], False),
                                            (["export", "{tmp}/run", "--to", "diffusers", "{tmp}/e"], False),
                                            (["train", "vae", "--data", "digits", "--steps", "2", "--out", "{tmp}/r"], True)])
def test_an_interrupt_suggests_resume_only_where_there_is_one(argv, resumable, tmp_path, monkeypatch, capsys):
    """Issue 27: interrupting pack/export/score suggested --resume, which they do not have."""
    import diffvae.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    real_build = cli.build_parser

    def build():
        parser = real_build()
        parser.set_defaults(_run_command=interrupted)
        for action in parser._subparsers._group_actions:
            for sub in action.choices.values():
                sub.set_defaults(_run_command=interrupted)
                for inner in getattr(sub, "_subparsers", None) and sub._subparsers._group_actions or []:
                    for leaf in inner.choices.values():
                        leaf.set_defaults(_run_command=interrupted)
        return parser

    monkeypatch.setattr(cli, "build_parser", build)
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 130
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith("diffvae: interrupted; ")
    assert ("--resume" in line) is resumable


def test_device_auto_says_what_it_chose(tmp_path, capsys):
    from diffvae.train import resolve_device

    base = ["train", "vae", "--data", "digits", "--steps", "2", "--width", "16", "--latent-dim", "4", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert capsys.readouterr().err.strip().endswith(f"on {resolve_device('auto')} (--device auto)")
    assert main([*base, "--device", "cpu", "--out", str(tmp_path / "b")]) == 0
    assert "--device auto" not in capsys.readouterr().err
