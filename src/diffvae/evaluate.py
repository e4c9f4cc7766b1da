"""One evaluation for every family: the same figures, the same schema, the same reference data.

``evaluate(model)`` measures, on the run's own data and its fixed held-out split:

* **likelihood** — the family's bound in bits/dim on held-out images, with its parts;
* **sample quality** — FID, KID, precision/recall in the locally trained feature space
  (:mod:`diffvae.metrics.features`; not comparable to Inception FID), sharpness as a ratio to
  real data, and where labels exist recognisability (classifier confidence ≥ 0.9) and coverage
  (entropy of the predicted-class histogram);
* **speed** — network evaluations (NFE) and milliseconds per sample after a warm-up;
* **interpolation** — round-trip error through the latent, path smoothness, and FID of the
  midpoints of held-out pairs (spherical paths);
* **representation** — linear-probe accuracy of the family's latent (``to_latent``) on labels;
* **family diagnostics** — e.g. the VAE's active units, KL per dimension and mutual information.

Every figure is a plain float/int/list so the result is JSON; non-finite numbers become null.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from diffvae.metrics.fid import fid, kid, precision_recall
from diffvae.metrics.interpolation import path_smoothness
from diffvae.metrics.probe import linear_probe
from diffvae.metrics.sharpness import sharpness


@dataclass
class EvalConfig:
    n_samples: int = 1000  # samples for FID / KID / precision-recall / sharpness
    bound_n: int = 200  # held-out images for the bound
    bound_timesteps: int = 0  # diffusion: 0 = all T terms per image; K > 0 = the unbiased K-draw estimate
    bound_parts_n: int = 8  # diffusion with K > 0: images whose full bound gives the parts L0, ΣKL, L_T
    iwae_samples: int = 100  # VAE: importance samples of the IWAE bound
    midpoints: int = 200  # held-out pairs whose latent midpoint is decoded (midpoint FID)
    strips: int = 8  # interpolation strips for path smoothness
    frames: int = 9
    roundtrip_n: int = 100
    probe_train: int = 1000  # labelled images encoded for the linear probe (train split)
    probe_test: int = 500
    batch_size: int = 250
    seed: int = 0
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls, **kw) -> "EvalConfig":
        """Small sizes for smoke tests and tiny budgets (noisy figures)."""
        base = dict(n_samples=100, bound_n=8, bound_timesteps=0, bound_parts_n=2, iwae_samples=8, midpoints=24, strips=2, frames=5,
                    roundtrip_n=16, probe_train=200, probe_test=100, batch_size=100)
        base.update(kw)
        return cls(**base)


def evaluate(model, config: EvalConfig | None = None, dataset=None, progress: bool = False, extractor=None) -> dict[str, Any]:
    """The full evaluation of a loaded family model (see the module docstring)."""
    from diffvae.api import run_data
    from diffvae.metrics.features import get_feature_extractor, recognisability

    config = config or EvalConfig()
    dataset = dataset or run_data(model)
    extractor = extractor or get_feature_extractor(dataset, progress=progress)
    kw = dict(config.sampler_kwargs)
    g = torch.Generator().manual_seed(config.seed)
    real = dataset.test
    real_features = extractor.features(real)
    c, h, w = dataset.image_shape
    out: dict[str, Any] = {
        "family": model.family,
        "data": dataset.name,
        "image_shape": [c, h, w],
        "data_dims": c * h * w,
        "latent_dims": int(model.latent_dims),
        "latent_ratio": int(model.latent_dims) / (c * h * w),
        "trained_steps": int(getattr(model, "trained_steps", 0)),
        "feature_space": extractor.name,
        "reference": f"held-out split ({real.shape[0]} images)",
    }
    steps = _log(progress)

    # speed and samples -------------------------------------------------------------------------
    steps("sampling")
    with torch.inference_mode():
        _call(model.sample, 2, generator=torch.Generator().manual_seed(1), **kw)  # warm-up
        t0 = time.perf_counter()
        samples = _batched_samples(model, config.n_samples, config.batch_size, g, kw, progress)
        elapsed = time.perf_counter() - t0
    out["nfe"] = int(_call(model.nfe, **kw))
    out["ms_per_sample"] = 1000.0 * elapsed / config.n_samples
    out["sampling_batch"] = min(config.batch_size, config.n_samples)
    out.update({k: v for k, v in kw.items()})
    out["sampler"] = kw.get("sampler", getattr(getattr(model, "config", None), "sampler", None)) if model.family != "vae" else "decode"

    # sample quality ----------------------------------------------------------------------------
    steps("sample quality")
    fake_features = extractor.features(samples)
    out["fid"] = fid(real_features, fake_features)
    out["kid"], out["kid_std"] = kid(real_features, fake_features, subsets=50, subset_size=min(500, len(samples)),
                                     generator=torch.Generator().manual_seed(config.seed))
    out.update(precision_recall(real_features, fake_features, k=3))
    out["sharpness"] = sharpness(samples)
    out["sharpness_real"] = sharpness(real)
    out["sharpness_ratio"] = out["sharpness"] / out["sharpness_real"] if out["sharpness_real"] > 0 else None
    if dataset.test_labels is not None and getattr(extractor, "kind", "") == "classifier":
        rec = recognisability(extractor.predict_proba(samples))
        out["confident_fraction"] = rec["confident_fraction"]
        out["class_entropy_bits"] = rec["class_entropy_bits"]
        out["class_entropy_max_bits"] = math.log2(dataset.num_classes)
        out["class_histogram"] = list(rec["class_histogram"])

    # likelihood --------------------------------------------------------------------------------
    steps("bound")
    x = real[: config.bound_n]
    with torch.no_grad():
        bound = _call(model.bound, x, iwae_samples=config.iwae_samples, timesteps=config.bound_timesteps,
                      generator=torch.Generator().manual_seed(config.seed))
    for key, value in bound.items():
        out[key] = float(value.double().mean()) if torch.is_tensor(value) else value
    if "bpd" in bound and torch.is_tensor(bound["bpd"]):
        out["bpd_n"] = int(bound["bpd"].numel())
        out["bpd_sem"] = float(bound["bpd"].double().std() / math.sqrt(max(1, bound["bpd"].numel())))
    if model.family != "vae" and config.bound_timesteps and config.bound_parts_n:
        with torch.no_grad():  # the parts need every term: the full bound on a few images
            full = _call(model.bound, real[: config.bound_parts_n], timesteps=0, generator=torch.Generator().manual_seed(config.seed))
        out["bound_parts_n"] = config.bound_parts_n
        out["bpd_full_subset"] = float(full["bpd"].double().mean())
        for key, value in full.items():
            if key != "bpd" and torch.is_tensor(value):
                out[key] = float(value.double().mean())

    # interpolation -----------------------------------------------------------------------------
    steps("interpolation")
    from diffvae.interpolation import latent_path, roundtrip

    with torch.inference_mode():
        rt = real[: config.roundtrip_n]
        _, err = roundtrip(model, rt, **kw)
        out["roundtrip_mse"], out["roundtrip_psnr_db"] = err["mse"], err["psnr_db"]
        pairs = torch.randperm(real.shape[0], generator=g)[: 2 * config.midpoints]
        half = pairs.numel() // 2
        a, b = real[pairs[:half]], real[pairs[half:2 * half]]
        za, zb = _call(model.to_latent, a, **kw), _call(model.to_latent, b, **kw)
        out["latent_std"] = float(za.float().std())  # ≈ 1 for a latent that looks like N(0, I)
        mid = _call(model.from_latent, latent_path(za, zb, 3)[:, 1], **kw)
        out["midpoint_fid"] = fid(real_features, extractor.features(mid)) if half >= 2 else None
        s = min(config.strips, half)
        frames = _call(model.from_latent, latent_path(za[:s], zb[:s], config.frames).flatten(0, 1), **kw)
        frames = frames.reshape(s, config.frames, -1).double() / 127.5 - 1
        out["path_smoothness"] = path_smoothness(frames)

    # representation ----------------------------------------------------------------------------
    if dataset.train_labels is not None and dataset.test_labels is not None:
        steps("linear probe")
        with torch.inference_mode():
            ztr = _encode(model, dataset.train[: config.probe_train], config.batch_size, kw)
            zte = _encode(model, dataset.test[: config.probe_test], config.batch_size, kw)
        out["probe_accuracy"] = linear_probe(ztr, dataset.train_labels[: config.probe_train],
                                             zte, dataset.test_labels[: config.probe_test])
        out["probe_chance"] = 1.0 / dataset.num_classes

    # family diagnostics ------------------------------------------------------------------------
    diagnose = getattr(model, "diagnostics", None)
    if diagnose is not None:
        steps("diagnostics")
        with torch.no_grad():
            out.update(diagnose(real[: max(config.bound_n, 200)], generator=torch.Generator().manual_seed(config.seed)))
    return _jsonable(out)


def _batched_samples(model, n, batch, generator, kw, progress) -> torch.Tensor:
    chunks = []
    iterator = range(0, n, batch)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="samples", unit="batch", leave=False)
    for start in iterator:
        chunks.append(_call(model.sample, min(batch, n - start), generator=generator, **kw).cpu())
    return torch.cat(chunks)


def _encode(model, images, batch, kw) -> np.ndarray:
    return torch.cat([_call(model.to_latent, images[i:i + batch], **kw).flatten(1).float().cpu()
                      for i in range(0, images.shape[0], batch)]).numpy()


def _call(fn, *args, **kwargs):
    """Call ``fn`` with the keyword arguments it accepts (families take different options)."""
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return fn(*args, **kwargs)


def _log(progress: bool):
    def step(name: str) -> None:
        if progress:
            import sys

            print(f"diffvae eval: {name} ...", file=sys.stderr, flush=True)
    return step


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if torch.is_tensor(value):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


TABLE_ROWS = [
    ("bpd", "bound, bits/dim"), ("iwae_bpd", "IWAE bound, bits/dim"), ("fid", "FID"), ("kid", "KID"),
    ("precision", "precision"), ("recall", "recall"), ("sharpness_ratio", "sharpness vs real"),
    ("confident_fraction", "recognisable (conf ≥ 0.9)"), ("class_entropy_bits", "class entropy, bits"),
    ("nfe", "network evaluations / sample"), ("ms_per_sample", "ms / sample"),
    ("roundtrip_mse", "round-trip MSE"), ("roundtrip_psnr_db", "round-trip PSNR, dB"),
    ("path_smoothness", "path smoothness (CV, 0 = even)"), ("midpoint_fid", "midpoint FID"),
    ("probe_accuracy", "linear probe accuracy"), ("active_units", "active units"),
    ("kl_nats", "KL, nats"), ("mutual_info", "mutual information, nats"),
]


def format_table(results: dict[str, Any]) -> str:
    """A human-readable two-column table of the headline figures."""
    lines = [f"{results.get('family', '?')} on {results.get('data', '?')} — features: {results.get('feature_space', '?')}"]
    for key, label in TABLE_ROWS:
        if results.get(key) is not None:
            value = results[key]
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"  {label:<34} {text}")
    return "\n".join(lines)
