"""Conditional runs end to end (issue 16): --conditional through the engine, the families, sample --class,
bad inputs in one line before the disk is touched, exact resume, no pickle, and the conditional evaluation."""

from __future__ import annotations

import hashlib
import shutil
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffvae.api import DataConfig, load, train_run
from diffvae.cli import main
from diffvae.conditioning import conditioned_config, sampling_labels
from diffvae.data import load_data
from diffvae.evaluate import EvalConfig, conditional_quality
from diffvae.train import TrainConfig, batch_indices, train
from diffvae.vae.model import VAE, VAEConfig
from tests.test_no_pickle import no_pickle  # noqa: F401  (the pickle guard fixture: every entry point refuses)

COMMON = ["--data", "digits", "--precision", "fp32", "--device", "cpu", "--quiet"]
TINY_DDPM = ["--channels", "8", "--channel-mult", "1", "--timesteps", "50", "--sample-steps", "4", "--batch", "16"]
SMALL_VAE = ["--width", "16", "--latent-dim", "4", "--batch", "32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("conditional")
    assert main(["train", "ddpm", "--conditional", *COMMON, *TINY_DDPM, "--steps", "3", "--out", str(root / "ddpm")]) == 0
    assert main(["train", "vae", "--conditional", *COMMON, *SMALL_VAE, "--steps", "30", "--out", str(root / "vae")]) == 0
    assert main(["train", "vae", *COMMON, *SMALL_VAE, "--steps", "2", "--out", str(root / "plain")]) == 0
    np.savez(root / "unlabelled.npz", images=np.zeros((20, 8, 8), dtype=np.uint8))
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_config_json_records_the_condition(runs):
    model = json.loads((runs / "ddpm" / "config.json").read_text())["model"]
    assert (model["conditional"], model["num_classes"], model["p_uncond"]) == (True, 10, 0.1)
    plain = json.loads((runs / "plain" / "config.json").read_text())["model"]
    assert (plain["conditional"], plain["num_classes"]) == (False, 0)
    assert load(runs / "ddpm").denoiser.unet.class_embed.num_embeddings == 11


def test_sample_follows_class_flags(runs, tmp_path):
    assert main(["sample", str(runs / "ddpm"), "--n", "6", "--classes", "0,1,2", "--guidance", "2",
                 "--out", str(tmp_path / "d.npz")]) == 0
    assert main(["sample", str(runs / "vae"), "--n", "4", "--class", "7", "--out", str(tmp_path / "v.npz")]) == 0
    with np.load(tmp_path / "d.npz") as f:
        assert f["images"].shape == (6, 1, 8, 8)


def test_labels_cycle_through_classes(runs):
    model = load(runs / "ddpm")
    assert sampling_labels(model, 5, classes="3,1")["labels"].tolist() == [3, 1, 3, 1, 3]
    assert sampling_labels(model, 3, class_=9, guidance=0)["labels"].tolist() == [9, 9, 9]


BAD = {
    "class-on-unconditional-run": (["sample", "{plain}", "--n", "2", "--class", "1", "--out", "{tmp}/a.png"], "trained unconditionally"),
    "class-out-of-range": (["sample", "{ddpm}", "--n", "2", "--class", "10", "--out", "{tmp}/a.png"], "out of range"),
    "classes-not-numbers": (["sample", "{ddpm}", "--n", "2", "--classes", "1,x", "--out", "{tmp}/a.png"], "comma-separated"),
    "class-and-classes": (["sample", "{ddpm}", "--n", "2", "--class", "1", "--classes", "1", "--out", "{tmp}/a.png"], "not both"),
    "negative-guidance": (["sample", "{ddpm}", "--n", "2", "--class", "1", "--guidance", "-1", "--out", "{tmp}/a.png"], ">= 0"),
    "guidance-on-vae": (["sample", "{vae}", "--n", "2", "--class", "1", "--guidance", "2", "--out", "{tmp}/a.png"], "one step"),
    "guidance-1e39": (["sample", "{ddpm}", "--n", "2", "--class", "1", "--guidance", "1e39", "--out", "{tmp}/a.png"], "<= 1000"),
    "eval-guidance-1e39": (["eval", "{ddpm}", "--quick", "--guidance", "1e39"], "<= 1000"),
    "export-conditional-run": (["export", "{ddpm}", "--to", "diffusers", "{tmp}/e"], "class-conditional run"),
    "guidance-without-class": (["sample", "{ddpm}", "--n", "2", "--guidance", "3", "--out", "{tmp}/a.png"], "give --class K"),
    "eval-guidance-unconditional": (["eval", "{plain}", "--quick", "--guidance", "2"], "unconditionally"),
    "conditional-without-labels": (["train", "vae", "--conditional", "--data", "npz:{root}/unlabelled.npz", "--steps", "2",
                                    "--out", "{tmp}/new"], "needs labelled data"),
    "p-uncond-above-one": (["train", "ddpm", "--conditional", *COMMON, *TINY_DDPM, "--p-uncond", "1.5", "--steps", "2",
                            "--out", "{tmp}/new"], "p-uncond"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_before_the_disk(case, runs, tmp_path, capsys):
    argv, message = BAD[case]
    argv = [a.format(plain=runs / "plain", ddpm=runs / "ddpm", vae=runs / "vae", root=runs, tmp=tmp_path) for a in argv]
    before = _snapshot(runs)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffvae: error: ") and message in err[0], err
    assert _snapshot(runs) == before and not any(tmp_path.iterdir())  # nothing written, nothing changed


def test_the_engine_gives_labels_to_conditional_models_only(monkeypatch):
    dataset = load_data("digits")
    seen = {}
    for conditional in (False, True):
        config = conditioned_config(VAEConfig(width=16, latent_dim=4, conditional=conditional), dataset)
        model = VAE(config, dataset.image_shape)
        original = model.training_loss

        def spy(x, labels=None, _original=original, _key=conditional):
            seen.setdefault(_key, []).append(labels)
            return _original(x, labels) if labels is not None else _original(x)

        model.training_loss = spy
        train(model, dataset.train, TrainConfig(steps=2, batch_size=8, precision="fp32", device="cpu", seed=4),
              labels=dataset.train_labels, progress=False)
    assert seen[False] == [None, None]
    expected = dataset.train_labels[batch_indices(0, dataset.train.shape[0], 8, 4)]
    assert torch.equal(seen[True][0], expected)  # the batch's own labels, in the batch's order


def test_an_interrupted_conditional_run_resumes_bit_identical(tmp_path, monkeypatch):
    from diffvae.diffusion.model import DDPM, DDPMConfig
    from diffvae.runs import RunDir

    dataset = load_data("digits")
    model_config = lambda: DDPMConfig(channels=8, channel_mult=(1,), timesteps=50, conditional=True, p_uncond=0.5)  # noqa: E731
    train_config = lambda: TrainConfig(steps=8, batch_size=16, precision="fp32", device="cpu", seed=3,  # noqa: E731
                                       checkpoint_every=3)
    ref = train_run("ddpm", DataConfig("digits"), model_config(), train_config(), out=tmp_path / "ref", progress=False,
                    dataset=dataset)
    original, calls = DDPM.training_loss, []

    def dies_at_step_5(self, x, labels=None):
        calls.append(labels)
        if len(calls) == 1 + 5:  # check_fit's probe, then steps 0..4
            raise KeyboardInterrupt
        return original(self, x, labels)

    monkeypatch.setattr(DDPM, "training_loss", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_run("ddpm", DataConfig("digits"), model_config(), train_config(), out=tmp_path / "cut", progress=False,
                  dataset=dataset)
    assert all(y is not None for y in calls) and RunDir(tmp_path / "cut").load_checkpoint()[1]["step"] == 3
    monkeypatch.setattr(DDPM, "training_loss", original)
    torch.manual_seed(999)
    resumed = train_run("ddpm", DataConfig("digits"), None, None, out=tmp_path / "cut", resume=True, progress=False,
                        dataset=dataset)
    for (name, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_vae_follows_its_label_and_bounds_log_p_x_given_y(runs):
    model = load(runs / "vae")
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = model.sample(8, g(), labels=torch.zeros(8, dtype=torch.long))
    b = model.sample(8, g(), labels=torch.full((8,), 5))
    assert not torch.equal(a, b)  # the same z decoded under two labels
    x = load_data("digits").test[:4]
    with torch.no_grad():
        given = model.bound(x, generator=g(), labels=torch.tensor([0, 1, 2, 3]))["bpd"]
        other = model.bound(x, generator=g(), labels=torch.tensor([4, 5, 6, 7]))["bpd"]
    assert given.shape == (4,) and not torch.equal(given, other)


class _Oracle:
    """A 'model' whose samples of class k are held-out images of class k (or, ``ignore``, of class 0)."""

    def __init__(self, dataset, ignore=False):
        self.dataset, self.ignore = dataset, ignore
        self.config = VAEConfig(conditional=True, num_classes=dataset.num_classes)

    def parameters(self):  # a model without parameters samples on the cpu (diffvae.precision.model_device)
        return iter(())

    def sample(self, n, generator=None, labels=None, **_):
        out = []
        for i, y in enumerate(labels.tolist()):
            pool = self.dataset.test[self.dataset.test_labels == (0 if self.ignore else y)]
            out.append(pool[i % pool.shape[0]])
        return torch.stack(out)


def test_conditional_accuracy_is_the_classifiers_accuracy_per_class(feature_cache):
    from diffvae.metrics.features import get_feature_extractor

    dataset = load_data("digits")
    extractor = get_feature_extractor(dataset)
    config = EvalConfig(per_class_n=6, batch_size=16)
    got = conditional_quality(_Oracle(dataset), dataset, config, extractor)
    per_class = []
    for c in range(dataset.num_classes):  # the reference: the classifier on the very images, class by class
        pool = dataset.test[dataset.test_labels == c]
        images = torch.stack([pool[i % pool.shape[0]] for i in range(c * 6, c * 6 + 6)])
        per_class.append(float((extractor.predict_proba(images).argmax(1) == c).mean()))
    assert got["conditional_accuracy_per_class"] == pytest.approx(per_class)
    assert got["conditional_accuracy"] == pytest.approx(sum(per_class) / len(per_class))
    assert got["conditional_accuracy"] > 0.8
    ignoring = conditional_quality(_Oracle(dataset, ignore=True), dataset, config, extractor)
    assert ignoring["conditional_accuracy"] < 0.2  # a model that ignores its label scores about 1/K
    assert len(got["per_class_fid"]) == dataset.num_classes


def test_no_pickle_in_a_conditional_session(no_pickle, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "ddpm", "--conditional", *COMMON, *TINY_DDPM, "--steps", "2", "--checkpoint-every", "1",
                 "--out", str(run)]) == 0
    assert main(["train", "ddpm", "--out", str(run), "--resume", "--quiet"]) == 0
    assert main(["sample", str(run), "--n", "2", "--class", "3", "--guidance", "3", "--out", str(tmp_path / "s.npz")]) == 0
    assert load(run).config.num_classes == 10


def test_eval_of_a_conditional_run_reports_accuracy_per_class_fid_and_the_sweep(runs, capsys, feature_cache):
    capsys.readouterr()
    assert main(["eval", str(runs / "ddpm"), "--quick", "--json", "--guidance", "2"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["guidance"] == 2.0 and results["conditional_guidance"] == 2.0
    assert 0.0 <= results["conditional_accuracy"] <= 1.0 and len(results["per_class_fid"]) == 10
    sweep = results["guidance_sweep"]
    assert [row["guidance"] for row in sweep] == [0.0, 1.0, 2.0, 3.0, 5.0]
    assert all({"fid", "accuracy", "ms_per_sample", "precision", "recall"} <= set(row) for row in sweep)
    assert results["best_guidance_accuracy"] in [row["guidance"] for row in sweep]
    best = max(sweep, key=lambda r: r["accuracy"])
    control = results["controllability"]
    assert (control["accuracy"], control["guidance"], control["fid"]) == (best["accuracy"], best["guidance"], best["fid"])
    assert control["fid_at_w1"] == sweep[1]["fid"] and control["recall_at_w1"] == sweep[1]["recall"]
    capsys.readouterr()
    assert main(["eval", str(runs / "vae"), "--quick", "--json"]) == 0
    vae = json.loads(capsys.readouterr().out)
    assert "conditional_accuracy" in vae and "guidance_sweep" not in vae  # one-shot: no guidance to sweep
    assert vae["controllability"] == {"accuracy": vae["conditional_accuracy"], "guidance": None}


def test_latent_diffusion_trains_its_prior_on_labels(tmp_path, monkeypatch):
    from diffvae.latent.model import LatentDiffusion

    seen = []
    original = LatentDiffusion.training_loss
    monkeypatch.setattr(LatentDiffusion, "training_loss", lambda self, x, labels=None: seen.append(labels) or original(self, x, labels))
    run = tmp_path / "ldm"
    assert main(["train", "ldm", "--conditional", *COMMON, "--channels", "8", "--channel-mult", "1", "--timesteps", "50",
                 "--sample-steps", "3", "--ae-width", "8", "--batch", "16", "--steps", "5", "--out", str(run)]) == 0
    assert seen and all(y is not None and y.shape == (16,) for y in seen)  # stage 2 (the prior) sees the labels
    model = load(run)
    images = model.sample(4, torch.Generator().manual_seed(0), labels=torch.tensor([0, 1, 2, 3]), guidance=3.0)
    assert images.shape == (4, 1, 8, 8) and images.dtype == torch.uint8


def test_torchrun_trains_a_conditional_run(tmp_path):
    """Two gloo ranks: each rank's slice of the batch carries its labels (diffvae.train.BatchSource)."""
    from tests.test_distributed import BACKSTOP_S, KNOWN_TEARDOWN_ABORT, start_torchrun

    run = tmp_path / "run"
    args = ["-m", "diffvae", "train", "vae", "--conditional", *COMMON, *SMALL_VAE, "--steps", "4", "--out", str(run)]
    for _ in range(3):  # relaunched only on the known gloo teardown abort (tests/test_distributed.py)
        proc = start_torchrun(args, cwd=tmp_path)
        _, stderr = proc.communicate(timeout=BACKSTOP_S)
        if proc.returncode == 0 or KNOWN_TEARDOWN_ABORT not in stderr:
            break
        shutil.rmtree(run, ignore_errors=True)
    assert proc.returncode == 0, stderr[-3000:]
    model = load(run)
    assert model.trained_steps == 4 and model.config.num_classes == 10
    assert model.sample(2, torch.Generator().manual_seed(0), labels=torch.tensor([1, 2])).shape == (2, 1, 8, 8)
