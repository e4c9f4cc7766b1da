"""The refine stage: open verdicts get more held-out images (bits/dim) and more samples from every family
(FID@N / KID), the figures are recomputed from the grown evidence, and every look tests at α / K."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from diffvae.api import DataConfig, load, train_run
from diffvae.compare.decisions import Decider
from diffvae.compare.evidence import REFERENCE, load_evidence, save_evidence
from diffvae.compare.refine import MAX_LOOKS, _more_samples, refine, sequential_plan
from diffvae.evaluate import EvalConfig, evaluate
from diffvae.metrics import paired as P
from diffvae.metrics.sharpness import laplacian_variance
from diffvae.train import TrainConfig
from diffvae.vae.model import VAEConfig


class PixelFeatures:
    """A stand-in feature network: the pixels themselves."""

    name, kind = "pixels", "pixels"

    def features(self, images):
        return images.flatten(1).double().numpy()  # as the feature network: numpy


@dataclasses.dataclass
class Context:
    out: Path
    dataset: object

    def extractor(self):
        return PixelFeatures()


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """Two VAEs trained alike from two seeds (registered as "vae" and "ldm" so the report knows them: only their
    evidence and figures matter here), evaluated on 4 held-out images and 30 samples."""
    out = tmp_path_factory.mktemp("refine")
    data = DataConfig("digits")
    dataset = data.load()
    results = {"families": {}, "sequential": {"alpha": 0.05, "max_looks": MAX_LOOKS, "looks": 1}}
    for i, fam in enumerate(("vae", "ldm")):
        train_run("vae", data, VAEConfig(latent_dim=4, width=16), TrainConfig(steps=20, batch_size=64, precision="fp32",
                                                                               device="cpu", seed=i),
                  out=out / "runs" / fam, progress=False)
        evidence = {}
        cfg = EvalConfig.quick(n_samples=30, midpoints=6, probe_train=60, probe_test=30, bound_n=4, iwae_samples=4)
        res = evaluate(load(out / "runs" / fam), cfg, dataset=dataset, extractor=PixelFeatures(), evidence=evidence)
        res["eval_config"] = dataclasses.asdict(cfg)
        results["families"][fam] = res
        save_evidence(out, fam, evidence)
    save_evidence(out, REFERENCE, {"features": torch.as_tensor(PixelFeatures().features(dataset.test)), "sharpness": laplacian_variance(dataset.test)})
    return Context(out, dataset), results


def test_every_look_tests_at_alpha_over_the_looks():
    plan = sequential_plan({"sequential": {"alpha": 0.05, "max_looks": 3}})
    assert plan.level(1) == pytest.approx(0.05 / 3) and sequential_plan({}).level(1) == 0.05
    results = {"families": {f: {"bpd": 1.0 + i * 0.1, "bpd_ci95": [0.95 + i * 0.1, 1.05 + i * 0.1]} for i, f in enumerate(("vae", "ddpm"))}}
    # the unpaired test from the intervals: z = 0.1 / (0.05·√2 / 1.96) = 2.77, p = 0.0056: decided at 0.05 and at 0.05/3
    for looks, decided in ((1, "a"), (3, "a"), (20, None)):
        entry = Decider(results, plan=P.SequentialPlan(0.05, looks)).question("best:likelihood", "bpd", [("vae", "ddpm")])[0]
        assert entry["decided"] == decided
        assert ("alpha spending" in entry["method"]) == (looks > 1)


def test_refine_grows_the_evidence_of_open_questions_and_recomputes_the_figures(compared):
    ctx, results = compared
    before = load_evidence(ctx.out, ["vae", "ldm"])
    log = refine(ctx, results, seconds=120.0)
    after = load_evidence(ctx.out, ["vae", "ldm", REFERENCE])
    first = log["rounds"][0]
    assert first["after_look"] == 1
    assert "bpd" in first["open"] and first["bpd_images"] > 0  # two alike VAEs: their bounds are not told apart on 4 images
    for fam in ("vae", "ldm"):
        grown = after[fam]["bpd"]
        assert grown.numel() == 4 + sum(r.get("bpd_images", 0) for r in log["rounds"])
        torch.testing.assert_close(grown[:4], before[fam]["bpd"][:4])  # the first pass's images, kept, in order
        assert results["families"][fam]["bpd_n"] == grown.numel()
        assert results["families"][fam]["bpd"] == pytest.approx(float(grown.mean()))
    assert results["sequential"]["looks"] == 1 + len(log["rounds"]) <= MAX_LOOKS
    assert math.isfinite(log["seconds"])


def test_more_samples_come_from_every_family_and_the_figures_move_to_the_new_n(compared):
    ctx, results = compared
    evidence = load_evidence(ctx.out, ["vae", "ldm", REFERENCE])
    before = {fam: evidence[fam]["features"].shape[0] for fam in ("vae", "ldm")}
    added = _more_samples(ctx, results, evidence, seconds=60.0)
    after = load_evidence(ctx.out, ["vae", "ldm", REFERENCE])
    assert added > 0
    for fam in ("vae", "ldm"):
        n = after[fam]["features"].shape[0]
        assert n == min(before.values()) + added  # the sample count stays shared: FID@N stays one estimand
        figures = results["families"][fam]
        assert figures["n_samples"] == n == after[fam]["sharpness"].numel()
        assert figures["fid"] == pytest.approx(P.estimate("fid", after[REFERENCE]["features"], after[fam]["features"]))
        assert figures["fid_ci95"][0] <= figures["fid"] <= figures["fid_ci95"][1]
