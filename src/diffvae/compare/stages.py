"""The stages of ``diffvae compare``: training a family, evaluating a family (sized to its time share)
and its sampler sweep. Each stage returns its result; the pipeline stores it. What differs between
families comes from their spec (:class:`diffvae.contract.FamilySpec`); a family's own stages (the
VAE's posterior-collapse study) live in its package (``spec.extra_stages``)."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffvae.api import load, train_run
from diffvae.compare.evidence import REFERENCE, evidence_path, save_evidence
from diffvae.contract import CompareContext
from diffvae.evaluate import EvalConfig, evaluate
from diffvae.families import get_family
from diffvae.images import save_grid
from diffvae.interpolation import interpolation_strip
from diffvae.metrics.distances import as_feature_matrix
from diffvae.metrics.paired import metric_interval
from diffvae.metrics.sharpness import laplacian_variance, sharpness
from diffvae.precision import sampling_precision
from diffvae.recipes import choose, describe, for_budget
from diffvae.runs import RunDir
from diffvae.snapshots import read_index
from diffvae.train import TrainConfig

SNAPSHOT_FIRST_FRACTION = 1 / 32  # first snapshot after this share of a family's training time, then every doubling


@dataclass
class StageInputs:
    """What a stage of compare is given (:class:`diffvae.contract.CompareContext`, also a family's own stage's)."""

    config: Any  # diffvae.compare.pipeline.CompareConfig: budget_minutes, seed, device, quiet, ...
    data_config: Any  # diffvae.data.DataConfig
    dataset: Any  # diffvae.sources.ImageDataset
    out: Any  # pathlib.Path of the compare folder; runs go under out / "runs"

    def model_config(self, family: str, **overrides: Any):
        """The family's config for compare on this data (its ``compare_model_overrides``), then ``overrides``."""
        return model_config_for(family, self.dataset.image_shape, **overrides)

    def train_config(self, family: str, seconds: float, **overrides: Any):
        """A TrainConfig for ``seconds`` of training of ``family`` under compare's seed and device."""
        return compare_train_config(family, seconds, self.config, **overrides)

    def train(self, family: str, run_dir, model_config, train_config):
        """Train into ``run_dir`` (replaced if it exists); returns the EMA model."""
        return train_run(family, self.data_config, model_config, train_config, out=run_dir, force=run_dir.exists(),
                         progress=not self.config.quiet, dataset=self.dataset)

    def load(self, run_dir):
        """The trained model of ``run_dir``, on the CPU."""
        return load(run_dir, device="cpu")


def compare_train_config(family: str, seconds: float, config, **overrides) -> TrainConfig:
    """The family's train defaults for ``seconds`` of training under compare's seed and device, then
    the family's ``compare_train_overrides``, then ``overrides``."""
    fam = get_family(family)
    values = dict(fam.train_defaults)
    values.update(budget_minutes=seconds / 60.0, seed=config.seed, device=config.device, checkpoint_every=200, log_every=10)
    values.update(fam.spec().compare_train_overrides(seconds))
    values.update(overrides)
    return TrainConfig(**values)


def model_config_for(family: str, image_shape: tuple[int, int, int], seconds: float = 0.0, **overrides):
    """Defaults sized for the data (the family's ``compare_model_overrides``), then ``overrides``."""
    fam = get_family(family)
    config_class, _ = fam.load()
    values: dict[str, Any] = dict(fam.spec().compare_model_overrides(tuple(image_shape), seconds))
    values.update(overrides)
    return config_class(**values)


def train_family(family: str, ctx: CompareContext, seconds: float, planned_seconds: float | None = None,
                 recipe_multiple: float = 1.0) -> dict[str, Any]:
    """Train ``family`` for ``seconds`` into runs/<family>, with its --budget recipe, if it has recipes: the recipe
    for ``seconds``, or with ``recipe_multiple`` ≠ 1 (``--recipes-at-forecast``) the recipe a compare that many times
    longer would train, for ``recipe_multiple`` × ``planned_seconds`` (the plan's share: a stage of a short compare
    gets less than its share, fixed costs weighing more). Returns ``results["training"][family]``."""
    run_dir = Path(ctx.out) / "runs" / family
    fam = get_family(family)
    planned_seconds = seconds if planned_seconds is None else planned_seconds
    recipe, recipe_info = for_budget(fam.recipes, seconds / 60.0, ctx.config.device)
    if recipe is not None:
        speed = recipe_info["machine_gflops"]  # planned_gflop: what forecasts scale to a longer compare's share
        recipe_info["planned_gflop"] = round(planned_seconds * speed, 1)
    if recipe is not None and recipe_multiple != 1.0:  # the record keeps this share's compute, and what the recipe was chosen for
        chosen_for = recipe_info["planned_gflop"] * recipe_multiple
        recipe = choose(fam.recipes, chosen_for)
        recipe_info = {**recipe_info, "recipe": recipe.name, "note": recipe.note, "chosen_for_gflop": round(chosen_for, 1)}
    if recipe is not None:
        print(f"[train:{family}] {describe(recipe_info)}", file=sys.stderr, flush=True)
    conditional = {"conditional": True} if ctx.config.conditional and fam.spec().conditional else {}
    config = model_config_for(family, ctx.dataset.image_shape, seconds, **(recipe.model if recipe else {}), **conditional)
    t0 = time.perf_counter()
    train_config = compare_train_config(family, seconds, ctx.config, snapshot_first_minutes=seconds / 60.0 * SNAPSHOT_FIRST_FRACTION,
                                        recipe=recipe.name if recipe else None, **(recipe.train if recipe else {}))
    ctx.train(family, run_dir, config, train_config)
    minutes = (time.perf_counter() - t0) / 60.0
    return training_summary(family, run_dir, minutes, recipe_info)


def training_summary(family: str, run_dir: Path, minutes: float, recipe_info: dict | None) -> dict[str, Any]:
    """What the report shows of a family's training: objective, minutes, steps, loss curve, speed, GFLOP."""
    rows = [r for r in RunDir(run_dir).read_metrics() if "loss" in r and "step" in r]  # training rows (not eval/holdout)
    index = read_index(run_dir) or {}
    final = (index.get("snapshots") or [{}])[-1]
    return {
        "objective": get_family(family).spec().objective,
        "minutes": minutes,
        "steps": int(rows[-1]["step"]) if rows else 0,
        "final_loss": float(rows[-1]["loss"]) if rows else None,
        "curve": [[int(r["step"]), float(r["loss"])] for r in rows],
        "images_per_s": float(sum(r.get("images_per_s", 0) for r in rows[-5:]) / max(1, len(rows[-5:]))) if rows else None,
        "gflop_per_image": index.get("gflop_per_image"),  # of one training step, measured (several stages: the last one's)
        "gflop": final.get("gflop"),  # to reach the final weights (every stage and pass included)
        "recipe": recipe_info or None,  # the compute-aware default chosen for this budget (diffvae.recipes)
    }


EVAL_FLOORS = {"bound_n": 16, "variance_fit_n": 16, "strips": 2, "roundtrip_n": 8, "probe_train": 100, "probe_test": 50, "ode_n": 2}
# Below the floors only when even they do not fit (a busy machine, large images): the sizes the report still
# states with their counts and intervals (issue 27: the budget held under load, quality absorbing it).
EVAL_MINIMA = {"bound_n": 4, "variance_fit_n": 4, "strips": 1, "roundtrip_n": 4, "probe_train": 30, "probe_test": 20, "ode_n": 1}
MIN_EVAL_SAMPLES = 50  # FID/KID of fewer samples say little
MIN_MIDPOINTS = 25  # midpoint pairs: each costs three inversions or regenerations, so they shrink first
FEWEST_MIDPOINTS = 10  # ... and below MIN_MIDPOINTS once the samples are at their minimum


def sized_eval_config(model, family: str, seconds: float, seed: int, n_samples: int, controllability: bool = True,
                      midpoints: int | None = None) -> EvalConfig:
    """The largest evaluation (up to the defaults) whose estimated network evaluations
    (``spec.evaluation_cost`` × ``spec.unit_cost_seconds``, measured now, under the machine's load of now) fit
    half of ``seconds``: the bound's, the interpolation's (strips, round trips) and the probe's sizes shrink
    together, to ``EVAL_FLOORS``, and below them towards ``EVAL_MINIMA`` when even the floors do not fit.

    ``n_samples`` and ``midpoints`` (default n/2) are the same for every family (:func:`evaluation_sizes`): FID
    and KID are biased by the sample count, so only equal counts compare. ``controllability=False`` leaves a conditional model's
    accuracy and guidance sweep to compare's own stage (:mod:`diffvae.compare.control`).
    """
    full = EvalConfig(seed=seed, n_samples=n_samples, midpoints=n_samples // 2 if midpoints is None else midpoints,
                      controllability=controllability)
    spec = get_family(family).spec()
    cost = spec.evaluation_cost(model, full)
    if cost is None:
        return full
    unit = spec.unit_cost_seconds(model)
    floors_seconds = spec.evaluation_cost(model, dataclasses.replace(full, **EVAL_FLOORS)) * unit
    if floors_seconds > 0.5 * seconds:  # even the floors do not fit: scale them to what is left, down to the minima
        scale = 0.5 * seconds / floors_seconds
        sized = {name: max(EVAL_MINIMA[name], int(floor * scale)) for name, floor in EVAL_FLOORS.items()}
    else:
        scale = min(1.0, 0.5 * seconds / max(1e-9, cost * unit))
        sized = {name: max(floor, int(getattr(full, name) * scale)) for name, floor in EVAL_FLOORS.items()}
    return dataclasses.replace(full, **sized)


def evaluation_sizes(families: tuple[str, ...], ctx: CompareContext, seconds: dict[str, float]) -> tuple[int, int]:
    """The sample count and midpoint pairs every family's evaluation shares: :func:`compare_samples` of the
    budget and half as many pairs, shrunk until the smallest evaluation of each trained family at those sizes
    (``EVAL_FLOORS``) fits its main share of ``seconds[family]`` — large images, slow samplers and a busy
    machine would otherwise overrun the budget. The pairs shrink first (to ``MIN_MIDPOINTS``; three inversions
    or regenerations each), then the samples (to ``MIN_EVAL_SAMPLES``), then the pairs again (to
    ``FEWEST_MIDPOINTS``). :func:`sized_eval_config` then fits the rest into half of the share, as the estimate
    is rough."""
    n = compare_samples(ctx.config.budget_minutes)
    pairs = n // 2
    for fam in families:
        run_dir = Path(ctx.out) / "runs" / fam
        if not (run_dir / "config.json").exists():
            continue
        model, spec = load(run_dir, device="cpu"), get_family(fam).spec()
        unit = None
        while n > MIN_EVAL_SAMPLES or pairs > FEWEST_MIDPOINTS:
            floor = EvalConfig(seed=ctx.config.seed, n_samples=n, midpoints=pairs, controllability=not ctx.config.conditional,
                               **EVAL_FLOORS)
            cost = spec.evaluation_cost(model, floor)
            unit = unit if unit is not None or cost is None else spec.unit_cost_seconds(model)
            if cost is None or cost * unit <= seconds[fam] * spec.eval_main_share():
                break
            if pairs > MIN_MIDPOINTS:
                pairs = max(MIN_MIDPOINTS, int(0.7 * pairs))
            elif n > MIN_EVAL_SAMPLES:
                n = max(MIN_EVAL_SAMPLES, int(0.8 * n))
            else:
                pairs = max(FEWEST_MIDPOINTS, int(0.7 * pairs))
    return n, min(pairs, n // 2)


def _family_figures(model, family: str, dataset, out: Path, seed: int) -> dict[str, str]:
    """A grid of 64 samples and four interpolation strips of held-out pairs, saved under ``figures/``."""
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        samples = model.sample(64, generator=g)
        save_grid(samples, out / f"figures/samples_{family}.png", nrow=8, scale=_scale(samples))
        idx = torch.randperm(dataset.test.shape[0], generator=g)[:8]
        strip = interpolation_strip(model, dataset.test[idx[:4]], dataset.test[idx[4:]], 9)
        save_grid(strip.flatten(0, 1), out / f"figures/interpolation_{family}.png", nrow=9, scale=_scale(samples))
    return {"samples": f"figures/samples_{family}.png", "interpolation": f"figures/interpolation_{family}.png"}


def compare_samples(budget_minutes: float) -> int:
    """Samples per family for FID/KID/precision/recall in ``compare`` (equal for all families)."""
    return 500 if budget_minutes >= 30 else 200 if budget_minutes >= 8 else 100


def sampler_sweep(model, family: str, dataset, extractor, out: Path, seconds: float, seed: int,
                  n_samples: int) -> list[dict[str, Any]]:
    """FID and ms/sample against NFE for each of the family's sweep settings, as many as fit ``seconds``."""
    spec = get_family(family).spec()
    real_features = extractor.features(dataset.test)
    unit = spec.unit_cost_seconds(model)
    n = n_samples
    rows = []
    spent = 0.0
    for sampler, steps in spec.sweep_settings(model):
        nfe = model.nfe(sampler=sampler, steps=steps)
        if spent + n * nfe * unit > seconds:
            continue
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        with torch.inference_mode(), sampling_precision(model):  # as evaluate()'s samples (diffvae.precision)
            samples = torch.cat([model.sample(min(100, n - i), generator=g, sampler=sampler, steps=steps) for i in range(0, n, 100)])
        elapsed = time.perf_counter() - t0
        spent += elapsed
        unit = elapsed / max(1, n * nfe)  # the cost under the load of now sizes the next setting
        figure = f"figures/samples_{family}_{sampler.replace('+', 'p')}_{steps}.png"
        save_grid(samples[:64], out / figure, nrow=8, scale=_scale(samples))
        value, ci = metric_interval("fid", real_features, extractor.features(samples))  # FID@n, its interval around it
        rows.append({"sampler": sampler, "steps": steps, "nfe": nfe, "n": n, "fid": value, "fid_ci95": list(ci),
                     "sharpness": sharpness(samples), "ms_per_sample": 1000.0 * elapsed / n, "figure": figure})
    return rows


def _scale(images: torch.Tensor) -> int:
    """Enlarge tiny images in figures so they can be seen."""
    return max(1, 64 // images.shape[-1])


def evaluate_family(family: str, ctx: CompareContext, seconds: float, n_samples: int | None = None,
                    midpoints: int | None = None) -> dict[str, Any]:
    """Sample and interpolation figures, then the one evaluation, sized to what is left of ``seconds``, and
    the sampler sweep with the rest; returns ``results["families"][family]``."""
    t_start = time.perf_counter()
    out, dataset, config = Path(ctx.out), ctx.dataset, ctx.config
    extractor = ctx.extractor()
    model = load(out / "runs" / family, device="cpu")
    spec = get_family(family).spec()
    figures = _family_figures(model, family, dataset, out, config.seed)
    left = seconds - (time.perf_counter() - t_start)
    n_samples = n_samples or compare_samples(config.budget_minutes)
    eval_config = sized_eval_config(model, family, left * spec.eval_main_share(), config.seed,
                                    n_samples=n_samples, controllability=not config.conditional, midpoints=midpoints)
    evidence: dict[str, torch.Tensor] = {}
    result = evaluate(model, eval_config, dataset=dataset, progress=not config.quiet, extractor=extractor, evidence=evidence)
    result["eval_config"] = dataclasses.asdict(eval_config)
    save_evidence(out, family, evidence, {"family": family})
    if not evidence_path(out, REFERENCE).is_file():
        save_evidence(out, REFERENCE, {"features": as_feature_matrix(extractor.features(dataset.test)),
                                       "sharpness": laplacian_variance(dataset.test)})
    result["figures"] = figures
    if spec.sweep:
        left = seconds - (time.perf_counter() - t_start)
        result["sweep"] = sampler_sweep(model, family, dataset, extractor, out, max(0.0, left * 0.9), config.seed,
                                        n_samples)
    result["eval_minutes"] = (time.perf_counter() - t_start) / 60.0
    return result
