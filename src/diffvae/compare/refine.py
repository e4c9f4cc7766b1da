"""Compare's ``refine`` stage: the rest of the evaluation share spent where a verdict is still open.

After the first evaluation pass (look 1), the "best" questions still undecided get more information, cheapest
first, and are looked at again, at most :data:`MAX_LOOKS` looks in all:

1. bits/dim — the bound on further held-out images (the next images of the split, the same for every family
   in the question), appended to each family's per-image evidence: paired over more images;
2. FID@N / KID — further samples from **every** family (the sample count stays shared, so FID@N stays one
   estimand), appended to the features and per-sample sharpness; every sample figure is recomputed at the new N.

Each round aims at the 80%-power size of the open comparisons (at most doubling), within the time left, and
stops when every question is decided or the share is spent. The error rate stays valid under this optional
stopping: every look tests at α / MAX_LOOKS (a Bonferroni split of α over the looks, whatever the stopping
rule), which the report's decisions use from the first look on whenever this stage is planned
(``results["sequential"]``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from diffvae.compare.decisions import decide_all
from diffvae.compare.evidence import REFERENCE, load_evidence, save_evidence
from diffvae.metrics.distances import as_feature_matrix
from diffvae.metrics.paired import ALPHA, SequentialPlan, metric_interval
from diffvae.metrics.sharpness import laplacian_variance
from diffvae.evaluate import ratio_of_means_interval
from diffvae.evaluate import EvalConfig, sampling_speed
from diffvae.contract import BoundOptions, spec_of
from diffvae.api import load

MAX_LOOKS = 3
SAMPLE_METRICS = ("fid", "kid", "precision", "recall")


def sequential_plan(results: dict[str, Any]) -> SequentialPlan:
    """The plan the report's decisions use: α split over MAX_LOOKS looks when the refine stage was planned."""
    sequential = results.get("sequential") or {}
    return SequentialPlan(alpha=sequential.get("alpha", ALPHA), looks=int(sequential.get("max_looks", 1)))


def open_questions(results: dict[str, Any], evidence: dict[str, dict], plan: SequentialPlan, look: int) -> dict[str, dict]:
    """The undecided "best" entries of this look, by metric."""
    decider = decide_all(results, evidence, plan, look)
    return {best["metric"]: best for best in decider.best_entries.values() if not best["decided"]}


def refine(ctx, results: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Rounds of more information for the open questions (module docstring); updates ``results["families"]``
    and the evidence files; returns ``results["refinement"]``."""
    t0 = time.perf_counter()
    plan = sequential_plan(results)
    evidence = load_evidence(ctx.out, [*results.get("families", {}), REFERENCE])
    rounds = []
    for look in range(1, plan.looks):
        left = lambda: seconds - (time.perf_counter() - t0)  # noqa: E731
        open_now = open_questions(results, evidence, plan, look)
        if not open_now or left() <= 1.0:
            break
        added = {}
        if "bpd" in open_now:
            added["bpd_images"] = _more_images(ctx, results, evidence, open_now["bpd"], left() * 0.5)
        if ("fid" in open_now or "kid" in open_now) and left() > 1.0:
            added["samples"] = _more_samples(ctx, results, evidence, left() / (plan.looks - look))
        rounds.append({"after_look": look, "open": sorted(open_now), **added})
        if not any(added.values()):
            break
    results["sequential"]["looks"] = 1 + len([r for r in rounds if any(v for k, v in r.items() if k not in ("after_look", "open"))])
    return {"rounds": rounds, "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------- bits/dim

def _more_images(ctx, results, evidence, best: dict[str, Any], seconds: float) -> int:
    """The bound of the two families of the open bits/dim question on the next held-out images; returns how
    many images were added to each."""
    fams = [best["leader"], best["runner_up"]]
    have = min(evidence[f]["bpd"].numel() for f in fams if "bpd" in evidence.get(f, {}))
    total = ctx.dataset.test.shape[0]
    target = min(total, max(have + 1, min(2 * have, best_target(best, have))))
    if target <= have or any("bpd" not in evidence.get(f, {}) for f in fams):
        return 0
    models = {f: load(ctx.out / "runs" / f, device="cpu") for f in fams}
    t0 = time.perf_counter()
    first = _bounds(models[fams[0]], ctx.dataset, results["families"][fams[0]], have, have + 2)  # a pilot of 2 images
    per_image = (time.perf_counter() - t0) / 2
    affordable = int(max(0.0, seconds - 2 * per_image * len(fams)) / (len(fams) * max(per_image, 1e-6)))
    stop = max(min(total, have + 2), min(target, have + 2 + affordable))
    for f in fams:
        new = first if f == fams[0] else _bounds(models[f], ctx.dataset, results["families"][f], have, have + 2)
        if stop > have + 2:
            new = torch.cat([new, _bounds(models[f], ctx.dataset, results["families"][f], have + 2, stop)])
        evidence[f]["bpd"] = torch.cat([evidence[f]["bpd"][:have], new])
        _update_bpd(results["families"][f], evidence[f]["bpd"])
        save_evidence(ctx.out, f, evidence[f], {"family": f})
    return stop - have


def best_target(best: dict[str, Any], have: int) -> int:
    """The 80%-power size the open question names (its confidence text carries it), else double."""
    text = best.get("confidence", "")
    digits = "".join(ch for ch in text.split("about ")[-1].split(" ")[0] if ch.isdigit()) if "about " in text else ""
    return int(digits) if digits else 2 * have


def _bounds(model, dataset, family: dict[str, Any], start: int, stop: int) -> torch.Tensor:
    """Per-image bits/dim of held-out images [start, stop) with the options of the family's evaluation."""
    cfg = family.get("eval_config") or {}
    fit_n = cfg.get("variance_fit_n", 64)
    options = BoundOptions(importance_samples=cfg.get("iwae_samples", 100), timesteps=cfg.get("bound_timesteps", 16),
                           fit_data=dataset.train[:fit_n] if fit_n else None)
    with torch.no_grad():
        bound = model.bound(dataset.test[start:stop], generator=torch.Generator().manual_seed(cfg.get("seed", 0) + start),
                            **spec_of(model).bound_kwargs(options))
    return bound["bpd"].detach().double().cpu()


def _update_bpd(family: dict[str, Any], per_image: torch.Tensor) -> None:
    n = per_image.numel()
    family["bpd"], family["bpd_sem"], family["bpd_n"] = float(per_image.mean()), float(per_image.std()) / math.sqrt(n), n
    family["bpd_ci95"] = [family["bpd"] - 1.96 * family["bpd_sem"], family["bpd"] + 1.96 * family["bpd_sem"]]
    family["bpd_refined"] = True  # its parts (bpd's bound_parts) stay from the first pass's images


# ----------------------------------------------------------------------------- samples

def _more_samples(ctx, results, evidence, seconds: float) -> int:
    """The same number of further samples from every family (as many as the time allows, at most the current
    count): features and sharpness appended, every sample figure recomputed. Returns the samples added."""
    fams = [f for f in results.get("families", {}) if "features" in evidence.get(f, {})]
    if len(fams) < 2 or "features" not in evidence.get(REFERENCE, {}):
        return 0
    n = min(evidence[f]["features"].shape[0] for f in fams)
    ms = sum(float(results["families"][f].get("ms_per_sample") or 0.0) for f in fams) * 2.0  # features and bookkeeping too
    extra = min(n, int(seconds * 1000.0 / max(ms, 1e-6)))
    if extra < 10:
        return 0
    extractor = ctx.extractor()
    for f in fams:
        images = _samples(load(ctx.out / "runs" / f, device="cpu"), results["families"][f], extra, seed_offset=n)
        evidence[f]["features"] = torch.cat([evidence[f]["features"][:n], as_feature_matrix(extractor.features(images))])
        evidence[f]["sharpness"] = torch.cat([evidence[f]["sharpness"][:n], laplacian_variance(images).double()])
        _update_samples(results["families"][f], evidence[f], evidence[REFERENCE])
        save_evidence(ctx.out, f, evidence[f], {"family": f})
    results["eval_samples"] = n + extra
    return extra


def _samples(model, family: dict[str, Any], n: int, seed_offset: int) -> torch.Tensor:
    """n further samples drawn as the evaluation drew its own (sampler, precision), from another seed."""
    cfg = dict(family.get("eval_config") or {})
    config = EvalConfig(n_samples=n, seed=int(cfg.get("seed", 0)) + 1000 + seed_offset,
                        sampler_kwargs=dict(cfg.get("sampler_kwargs") or {}), precision=cfg.get("precision", "auto"),
                        guidance=cfg.get("guidance"), batch_size=int(cfg.get("batch_size", 250)))
    samples, _ = sampling_speed(model, config)
    return samples.cpu()


def _update_samples(family: dict[str, Any], evidence: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    """FID@N, KID, precision and recall with their intervals, and the sharpness ratio, at the new N."""
    for metric in SAMPLE_METRICS:
        family[metric], ci = metric_interval(metric, reference["features"], evidence["features"])
        family[f"{metric}_ci95"] = list(ci)
    family["n_samples"] = int(evidence["features"].shape[0])
    family["sharpness"] = float(evidence["sharpness"].mean())
    if "sharpness" in reference and float(reference["sharpness"].mean()) > 0:
        family["sharpness_ratio"] = float(evidence["sharpness"].mean() / reference["sharpness"].mean())
        family["sharpness_ratio_ci95"] = ratio_of_means_interval(evidence["sharpness"], reference["sharpness"])
    family["samples_refined"] = True  # recognisability and class coverage stay from the first pass's samples
