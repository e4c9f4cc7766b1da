"""The stages of ``diffvae compare``: training a family, the posterior-collapse study, evaluating a
family (sized to its time share), and the sampler sweep for the diffusion families."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

from diffvae.api import DataConfig, load, train_run
from diffvae.evaluate import EvalConfig, evaluate
from diffvae.families import get_family
from diffvae.runs import RunDir
from diffvae.snapshots import read_index
from diffvae.train import TrainConfig

OBJECTIVES = {
    "vae": "ELBO = reconstruction + KL",
    "ddpm": "noise-prediction MSE",
    "ldm": "autoencoder ELBO, then latent noise-prediction MSE",
}
COLLAPSE_FREE_BITS = 0.5  # nats per latent dimension for the cured run
SNAPSHOT_FIRST_FRACTION = 1 / 32  # first snapshot after this share of a family's training time, then every doubling


def _train_config(family: str, seconds: float, args, **overrides) -> TrainConfig:
    values = dict(get_family(family).train_defaults)
    values.update(budget_minutes=seconds / 60.0, seed=args.seed, device=args.device, checkpoint_every=200, log_every=10)
    values.update(overrides)
    return TrainConfig(**values)


def model_config_for(family: str, image_shape: tuple[int, int, int], **overrides):
    """Defaults sized for the data: small networks for tiny images."""
    config_class, _ = get_family(family).load()
    values: dict[str, Any] = {}
    c, h, w = image_shape
    if family in ("ddpm",) and h <= 16:
        values.update(channels=32, channel_mult=(1, 2))
    values.update(overrides)
    return config_class(**values)


def train_family(family: str, data: DataConfig, dataset, out: Path, seconds: float, args, results: dict) -> None:
    from diffvae.recipes import describe, for_budget

    run_dir = out / "runs" / family
    recipe, recipe_info = for_budget(get_family(family).recipes, seconds / 60.0, args.device)
    if recipe is not None:
        print(f"[train:{family}] {describe(recipe_info)}", file=sys.stderr, flush=True)
    config = model_config_for(family, dataset.image_shape, **(recipe.model if recipe else {}))
    t0 = time.perf_counter()
    train_config = _train_config(family, seconds, args, snapshot_first_minutes=seconds / 60.0 * SNAPSHOT_FIRST_FRACTION,
                                 recipe=recipe.name if recipe else None, **(recipe.train if recipe else {}))
    train_run(family, data, config, train_config, out=run_dir, force=run_dir.exists(), progress=not args.quiet, dataset=dataset)
    minutes = (time.perf_counter() - t0) / 60.0
    rows = RunDir(run_dir).read_metrics()
    index = read_index(run_dir) or {}
    final = (index.get("snapshots") or [{}])[-1]
    results["training"][family] = {
        "objective": OBJECTIVES[family],
        "minutes": minutes,
        "steps": int(rows[-1]["step"]) if rows else 0,
        "final_loss": float(rows[-1]["loss"]) if rows else None,
        "curve": [[int(r["step"]), float(r["loss"])] for r in rows if "loss" in r and "step" in r],
        "images_per_s": float(sum(r.get("images_per_s", 0) for r in rows[-5:]) / max(1, len(rows[-5:]))) if rows else None,
        "gflop_per_image": index.get("gflop_per_image"),  # of one training step, measured (ldm: its diffusion stage)
        "gflop": final.get("gflop"),  # to reach the final weights (ldm: both stages and the encoder pass)
        "recipe": recipe_info or None,  # the compute-aware default chosen for this budget (diffvae.recipes)
    }


def collapse_study(data: DataConfig, dataset, out: Path, seconds: float, args, results: dict) -> None:
    """A VAE with a powerful autoregressive (PixelCNN) decoder, without and with free bits."""
    study: dict[str, Any] = {"decoder": "pixelcnn", "free_bits": COLLAPSE_FREE_BITS}
    for name, free_bits in (("without_free_bits", 0.0), ("with_free_bits", COLLAPSE_FREE_BITS)):
        run_dir = out / "runs" / f"collapse-{name}"
        config = model_config_for("vae", dataset.image_shape, decoder="pixelcnn", free_bits=free_bits)
        train_run("vae", data, config, _train_config("vae", seconds * 0.45, args), out=run_dir, force=run_dir.exists(),
                  progress=not args.quiet, dataset=dataset)
        model = load(run_dir, device="cpu")
        x = dataset.test[:500]
        with torch.no_grad():
            diag = model.diagnostics(x, generator=torch.Generator().manual_seed(args.seed))
            bound = model.bound(x[:200], generator=torch.Generator().manual_seed(args.seed))
        study[name] = {**diag, "bpd": float(bound["bpd"].mean()), "kl_bpd": float(bound["kl_bpd"].mean())}
    results["collapse"] = study


def _unit_cost_seconds(model, family: str, batch: int = 64) -> float:
    """Seconds per image for one network evaluation of the family's costly network."""
    with torch.inference_mode():
        if family == "vae":
            g = torch.Generator().manual_seed(0)
            model.sample(batch, generator=g)
            t0 = time.perf_counter()
            model.sample(batch, generator=g)
            return (time.perf_counter() - t0) / batch
        denoiser = model.denoiser
        x = torch.randn(batch, *denoiser.shape)
        t = torch.full((batch,), denoiser.schedule.T // 2, dtype=torch.long)
        denoiser.eps_fn(x, t)
        t0 = time.perf_counter()
        denoiser.eps_fn(x, t)
        return (time.perf_counter() - t0) / batch


def sized_eval_config(model, family: str, seconds: float, seed: int, n_samples: int) -> EvalConfig:
    """The largest evaluation (up to the defaults) whose estimated network evaluations fit ``seconds``.

    ``n_samples`` is the same for every family: FID and KID are biased by the sample count, so
    only equal counts compare.
    """
    full = EvalConfig(seed=seed, n_samples=n_samples, midpoints=n_samples // 2)  # midpoint FID: equal counts too
    if family == "vae":
        full.iwae_samples = 100
        return full
    unit = _unit_cost_seconds(model, family)
    invert = model.config.invert_steps
    nfe = model.nfe()
    T = model.denoiser.schedule.T
    # the bound: 2K evaluations per held-out image (importance-sampled estimate) + the variance fit

    def evaluations(c: EvalConfig) -> float:
        return (c.n_samples * nfe + (c.probe_train + c.probe_test + 3 * c.midpoints + 2 * c.roundtrip_n
                + c.strips * c.frames) * invert + c.bound_n * (2 * c.bound_timesteps or T) + c.variance_fit_n * min(T, 128))

    scale = min(1.0, 0.5 * seconds / max(1e-9, evaluations(full) * unit))
    floor = EvalConfig(n_samples=50, bound_n=16, variance_fit_n=16, midpoints=10, roundtrip_n=8, probe_train=100, probe_test=50)
    sized = {}
    for f in dataclasses.fields(EvalConfig):
        if f.name in ("bound_n", "variance_fit_n", "roundtrip_n", "probe_train", "probe_test"):
            sized[f.name] = max(getattr(floor, f.name), int(getattr(full, f.name) * scale))
    return dataclasses.replace(full, **sized)


def compare_samples(budget_minutes: float) -> int:
    """Samples per family for FID/KID/precision/recall in ``compare`` (equal for all families)."""
    return 500 if budget_minutes >= 30 else 200 if budget_minutes >= 8 else 100


SWEEP = [("ddim", 10), ("dpm++2m", 10), ("ddim", 20), ("dpm++2m", 20), ("ddim", 50), ("ddpm", 100), ("ddpm", 250), ("ddpm", 1000)]


def sampler_sweep(model, family: str, dataset, extractor, out: Path, seconds: float, seed: int,
                  n_samples: int) -> list[dict[str, Any]]:
    """FID and ms/sample against NFE for each sampler, as many settings as fit ``seconds``."""
    from diffvae.images import save_grid
    from diffvae.metrics.distances import fid
    from diffvae.metrics.sharpness import sharpness

    real_features = extractor.features(dataset.test)
    unit = _unit_cost_seconds(model, family)
    n = n_samples
    rows = []
    spent = 0.0
    for sampler, steps in SWEEP:
        if steps > model.denoiser.schedule.T:
            continue
        estimate = n * steps * unit
        if spent + estimate > seconds:
            continue
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        with torch.inference_mode():
            samples = torch.cat([model.sample(min(100, n - i), generator=g, sampler=sampler, steps=steps) for i in range(0, n, 100)])
        elapsed = time.perf_counter() - t0
        spent += elapsed
        figure = f"figures/samples_{family}_{sampler.replace('+', 'p')}_{steps}.png"
        save_grid(samples[:64], out / figure, nrow=8, scale=_scale(samples))
        rows.append({"sampler": sampler, "steps": steps, "nfe": model.nfe(sampler=sampler, steps=steps), "n": n,
                     "fid": fid(real_features, extractor.features(samples)), "sharpness": sharpness(samples),
                     "ms_per_sample": 1000.0 * elapsed / n, "figure": figure})
    return rows


def _scale(images: torch.Tensor) -> int:
    """Enlarge tiny images in figures so they can be seen."""
    return max(1, 64 // images.shape[-1])


def evaluate_family(family: str, dataset, out: Path, seconds: float, args, results: dict, extractor_box: dict) -> None:
    from diffvae.images import save_grid
    from diffvae.interpolation import interpolation_strip
    from diffvae.metrics.features import get_feature_extractor

    t_start = time.perf_counter()
    if "extractor" not in extractor_box:
        extractor_box["extractor"] = get_feature_extractor(dataset, progress=not args.quiet)
    extractor = extractor_box["extractor"]
    model = load(out / "runs" / family, device="cpu")
    left = seconds - (time.perf_counter() - t_start)
    main_share = 0.6 if family != "vae" else 0.95
    config = sized_eval_config(model, family, left * main_share, args.seed, n_samples=compare_samples(args.budget))
    result = evaluate(model, config, dataset=dataset, progress=not args.quiet, extractor=extractor)
    result["eval_config"] = dataclasses.asdict(config)

    g = torch.Generator().manual_seed(args.seed)
    with torch.inference_mode():
        samples = model.sample(64, generator=g)
        save_grid(samples, out / f"figures/samples_{family}.png", nrow=8, scale=_scale(samples))
        idx = torch.randperm(dataset.test.shape[0], generator=g)[:8]
        strip = interpolation_strip(model, dataset.test[idx[:4]], dataset.test[idx[4:]], 9)
        save_grid(strip.flatten(0, 1), out / f"figures/interpolation_{family}.png", nrow=9, scale=_scale(samples))
    result["figures"] = {"samples": f"figures/samples_{family}.png", "interpolation": f"figures/interpolation_{family}.png"}
    if family != "vae":
        left = seconds - (time.perf_counter() - t_start)
        result["sweep"] = sampler_sweep(model, family, dataset, extractor, out, max(0.0, left * 0.9), args.seed,
                                        compare_samples(args.budget))
    result["eval_minutes"] = (time.perf_counter() - t_start) / 60.0
    results["families"][family] = result
