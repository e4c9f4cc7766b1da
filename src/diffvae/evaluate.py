"""One evaluation for every family: the same figures, the same schema, the same reference data.

``evaluate(model)`` measures, on the run's own data and its fixed held-out split:

* **likelihood** — the family's bound in bits/dim on held-out images, with its parts;
* **sample quality** — FID, KID, precision/recall in the locally trained feature space
  (:mod:`diffvae.metrics.features`; not comparable to Inception FID), sharpness as a ratio to
  real data, and where labels exist recognisability (classifier confidence ≥ 0.9) and class coverage
  (:mod:`diffvae.metrics.coverage`: the predicted-class histogram's entropy over its maximum,
  ``class_entropy_ratio``, and ``classes_below_half`` / ``classes_missing`` against the held-out label
  frequencies);
* **speed** — network evaluations (NFE) and milliseconds per sample after a warm-up;
* **interpolation** — round-trip error through the latent, path smoothness, and FID of the
  midpoints of held-out pairs (spherical paths);
* **representation** — linear-probe accuracy of the family's latent (``to_latent``) on labels;
* **family diagnostics** — e.g. the VAE's active units, KL per dimension and mutual information;
* **conditional generation** (conditional runs only, :func:`conditional_quality`, :func:`guidance_sweep`) —
  conditional accuracy (the feature network's classifier on samples asked for class k, averaged over
  classes), per-class FID, and for iterative families FID / precision / recall / accuracy / ms per
  sample at every classifier-free guidance scale w of ``EvalConfig.guidance_sweep``. The main samples
  of a conditional run are class-balanced, at guidance ``EvalConfig.guidance`` (``eval --guidance``).

Uncertainty: ``<metric>_ci95 = [low, high]`` beside a figure is a 95% interval for that figure, around it —
for FID (FID@N: at this sample count, against this held-out reference), KID (the unbiased MMD² of all
rows), precision and recall the jackknife over the generated rows (:func:`diffvae.metrics.paired.metric_interval`;
``EvalConfig.bootstrap`` 0 = none), a t-interval over timed sampling batches for ms/sample (the mean of
the batches' ms/sample), mean ± 1.96 SEM over images for bits/dim, the delta method for the sharpness
ratio, a Wilson interval for the probe accuracy and the jackknife over the samples for the class entropy
ratio. ``evaluate(..., evidence={})`` also hands over the per-item measurements compare's paired tests need
(:data:`EVIDENCE_KEYS`).

Every figure is a plain float/int/list so the result is JSON; non-finite numbers become null.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from diffvae.conditioning import num_classes, sampling_labels
from diffvae.contract import BoundOptions, spec_of
from diffvae.data import run_data
from diffvae.errors import DiffvaeError
from diffvae.interpolation import latent_path, roundtrip
from diffvae.metrics.bootstrap import wilson_interval
from diffvae.metrics.coverage import entropy_ratio_interval, label_coverage
from diffvae.metrics.distances import as_feature_matrix, fid, kid, precision_recall
from diffvae.metrics.features import get_feature_extractor, recognisability
from diffvae.metrics.paired import estimate as metric_estimate
from diffvae.metrics.paired import metric_interval
from diffvae.metrics.interpolation import path_smoothness
from diffvae.metrics.probe import probe_correct
from diffvae.metrics.sharpness import laplacian_variance, sharpness
from diffvae.precision import precision_name, sampling_precision


@dataclass
class EvalConfig:
    n_samples: int = 1000  # samples for FID / KID / precision-recall / sharpness
    bootstrap: int = 200  # 0 = no 95% intervals of FID / KID / precision / recall (they are jackknife intervals: metrics/paired.py)
    bound_n: int = 200  # held-out images for the bound
    bound_timesteps: int = 16  # diffusion: K > 0 = the unbiased importance-sampled K-draw estimate; 0 = all T terms
    variance_fit_n: int = 64  # training images the reverse variances are fitted on (0 = fixed-small, no fit)
    iwae_samples: int = 100  # VAE: importance samples of the IWAE bound
    ode_n: int = 16  # held-out images for the probability-flow ODE likelihood where a family offers one (0 = none)
    ode_steps: int = 200  # its Heun steps (too few err low: diffvae.ode_likelihood.probability_flow_bpd)
    midpoints: int = 200  # held-out pairs whose latent midpoint is decoded (midpoint FID)
    strips: int = 8  # interpolation strips for path smoothness
    frames: int = 9
    roundtrip_n: int = 100
    probe_train: int = 1000  # labelled images encoded for the linear probe (train split)
    probe_test: int = 500
    batch_size: int = 250
    seed: int = 0
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    precision: str = "auto"  # of sampling only (diffvae.precision): auto = bf16 where native, else fp32; bounds stay fp32
    # conditional runs (diffvae.conditioning): class-balanced samples at guidance w (None = 1, the conditional model)
    guidance: float | None = None
    per_class_n: int = 100  # samples per class for conditional accuracy and per-class FID
    guidance_sweep: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 5.0)  # w of the sweep (iterative families; () = none)
    guidance_sweep_n: int = 500  # class-balanced samples per w
    controllability: bool = True  # conditional runs: the accuracy per class and the guidance sweep (compare has its own stage)

    @classmethod
    def quick(cls, **kw) -> "EvalConfig":
        """Small sizes for smoke tests and tiny budgets (noisy figures)."""
        base = dict(n_samples=100, bound_n=8, bound_timesteps=0, variance_fit_n=16, iwae_samples=8, midpoints=24, strips=2, frames=5,
                    roundtrip_n=16, probe_train=200, probe_test=100, batch_size=100, per_class_n=10, guidance_sweep_n=50,
                    ode_n=4, ode_steps=50)
        base.update(kw)
        return cls(**base)


def evaluate(model, config: EvalConfig | None = None, dataset=None, progress: bool = False, extractor=None,
             evidence: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """The full evaluation of a loaded family model (see the module docstring): sampling speed,
    :func:`sample_quality`, :func:`likelihood`, :func:`interpolation_quality`, :func:`representation`
    and the family's diagnostics, in that order (the generator ``seed`` is shared in that order).
    A dict passed as ``evidence`` receives what paired comparisons need (:data:`EVIDENCE_KEYS`)."""
    config = config or EvalConfig()
    dataset = dataset or run_data(model)
    extractor = extractor or get_feature_extractor(dataset, progress=progress)
    spec = spec_of(model)
    g = torch.Generator().manual_seed(config.seed)
    c, h, w = dataset.image_shape
    out: dict[str, Any] = {
        "family": model.family, "data": dataset.name, "image_shape": [c, h, w], "data_dims": c * h * w,
        "latent_dims": int(model.latent_dims), "latent_ratio": int(model.latent_dims) / (c * h * w),
        "trained_steps": int(getattr(model, "trained_steps", 0)),
    }
    steps = _log(progress)
    steps("sampling")
    samples, speed = sampling_speed(model, config, g, progress, evidence=evidence)
    out.update(speed)
    out["sampler"] = spec.sampler_name(model, config.sampler_kwargs)
    steps("sample quality")
    real_features = extractor.features(dataset.test)
    out.update(sample_quality(samples, dataset, config, extractor, real_features=real_features, evidence=evidence))
    steps("bound")
    out.update(likelihood(model, dataset, config, evidence=evidence))
    steps("interpolation")
    out.update(interpolation_quality(model, dataset, config, extractor, g, real_features=real_features, evidence=evidence))
    if dataset.train_labels is not None and dataset.test_labels is not None:
        steps("linear probe")
        out.update(representation(model, dataset, config, evidence=evidence))
    if num_classes(model) and config.controllability:
        steps("conditional generation")
        out.update(conditional_quality(model, dataset, config, extractor, g))
        if spec.iterative and config.guidance_sweep:
            steps("guidance sweep")
            out.update(guidance_sweep(model, dataset, config, extractor, g, real_features=real_features))
        out["controllability"] = controllability(out)
    steps("diagnostics")
    with torch.no_grad():
        out.update(spec.diagnostics(model, dataset.test[: max(config.bound_n, 200)], generator=torch.Generator().manual_seed(config.seed)))
    return _jsonable(out)


def sampling_speed(model, config: EvalConfig, generator: torch.Generator | None = None,
                   progress: bool = False, evidence: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """``config.n_samples`` samples with ``config.sampler_kwargs``, and the speed figures: NFE, ms per
    sample (after a warm-up) with its t-interval over the timed batches."""
    kw = dict(config.sampler_kwargs)
    generator = generator or torch.Generator().manual_seed(config.seed)
    labels = class_balanced_labels(config.n_samples, num_classes(model)) if num_classes(model) else None
    if labels is not None and config.guidance is not None:
        kw["guidance"] = config.guidance
    with torch.inference_mode(), sampling_precision(model, config.precision):
        model.sample(2, generator=torch.Generator().manual_seed(1), **kw, **({"labels": labels[:2]} if labels is not None else {}))  # warm-up
        batch = min(config.batch_size, math.ceil(config.n_samples / TIMED_CHUNKS))  # ≥ TIMED_CHUNKS timed repeats
        samples, seconds = _batched_samples(model, config.n_samples, batch, generator, kw, progress, labels)
    repeats = [1000.0 * t / n for t, n in zip(seconds, _chunk_sizes(config.n_samples, batch))]  # ms/sample of each timed batch
    _keep(evidence, "ms_repeats", torch.tensor(repeats, dtype=torch.float64))
    out: dict[str, Any] = {"nfe": int(model.nfe(**kw)), "ms_per_sample": float(np.mean(repeats)),
                           "ms_per_sample_ci95": mean_interval(repeats),
                           "ms_per_sample_repeats": len(seconds), "sampling_batch": batch,
                           "sampling_precision": precision_name(model, config.precision)}
    out.update(kw)
    return samples, out


MIN_QUALITY_IMAGES = 4  # precision/recall measure each point's k = 3 nearest neighbours within its own set


def check_quality_counts(samples: int, held_out: int) -> None:
    """Enough samples and held-out images for every figure of :func:`sample_quality` (one line, before any work)."""
    for count, what in ((samples, "samples"), (held_out, "held-out images")):
        if count < MIN_QUALITY_IMAGES:
            raise DiffvaeError(f"{count} {what}: FID, KID and precision/recall (k = 3 nearest neighbours) need at least "
                               f"{MIN_QUALITY_IMAGES} {what}")


def sample_quality(samples_uint8: torch.Tensor, dataset, config: EvalConfig | None = None, extractor=None,
                   generator: torch.Generator | None = None, real_features: torch.Tensor | None = None,
                   evidence: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Sample-quality figures of uint8 samples (N, C, H, W) against the held-out split of ``dataset``:
    FID, KID, precision/recall (with bootstrap 95% intervals when ``config.bootstrap``), sharpness and
    its ratio to real data, and where labels exist recognisability and class coverage. The keys are
    those of ``diffvae eval --json``; ``generator`` draws the KID subsets (default: ``config.seed``)."""
    config = config or EvalConfig()
    if samples_uint8.dtype != torch.uint8 or samples_uint8.dim() != 4 or tuple(samples_uint8.shape[1:]) != tuple(dataset.image_shape):
        raise DiffvaeError(f"samples must be uint8 images of shape (N, {', '.join(map(str, dataset.image_shape))}), "
                           f"got {samples_uint8.dtype} {tuple(samples_uint8.shape)}")
    check_quality_counts(samples_uint8.shape[0], dataset.test.shape[0])
    extractor = extractor or get_feature_extractor(dataset)
    real = dataset.test
    real_features = extractor.features(real) if real_features is None else real_features
    fake_features = extractor.features(samples_uint8)
    out: dict[str, Any] = {"feature_space": extractor.name, "reference": f"held-out split ({real.shape[0]} images)",
                           "fid": fid(real_features, fake_features)}
    # KID: the unbiased MMD² of all rows (what its interval is for); kid_std: its spread over 50 random subsets
    _, out["kid_std"] = kid(real_features, fake_features, subsets=50, subset_size=min(500, len(samples_uint8)),
                            generator=generator or torch.Generator().manual_seed(config.seed))
    out["kid"] = metric_estimate("kid", as_feature_matrix(real_features), as_feature_matrix(fake_features))
    out.update(precision_recall(real_features, fake_features, k=3))
    if config.bootstrap:  # 95% intervals of FID@N, KID, precision, recall against this reference, around the figures
        for metric in ("fid", "kid", "precision", "recall"):
            out[f"{metric}_ci95"] = list(metric_interval(metric, real_features, fake_features)[1])
    out["n_samples"] = int(samples_uint8.shape[0])
    out.update(_sharpness(samples_uint8, real))
    _keep(evidence, "features", as_feature_matrix(fake_features))
    _keep(evidence, "sharpness", laplacian_variance(samples_uint8))
    if dataset.test_labels is not None and getattr(extractor, "kind", "") == "classifier":
        rec = recognisability(extractor.predict_proba(samples_uint8))
        out["confident_fraction"] = rec["confident_fraction"]
        out["class_entropy_bits"] = rec["class_entropy_bits"]
        out["class_entropy_max_bits"] = math.log2(dataset.num_classes)
        out["class_histogram"] = list(rec["class_histogram"])
        out.update(_class_coverage(rec["class_histogram"], out["n_samples"], dataset, config))
    return _jsonable(out)


def _class_coverage(histogram: list[float], n: int, dataset, config: EvalConfig) -> dict[str, Any]:
    """Class coverage (:mod:`diffvae.metrics.coverage`) of the samples' class histogram against the held-out
    split's label frequencies, with the entropy ratio's jackknife interval unless ``config.bootstrap`` is 0."""
    out = label_coverage(histogram, dataset.test_labels, dataset.num_classes)
    if config.bootstrap and n >= 2:
        counts = (torch.tensor(histogram, dtype=torch.float64) * n).round()
        out["class_entropy_ratio_ci95"] = list(entropy_ratio_interval(counts.numpy()))
    return out


def _sharpness(samples: torch.Tensor, real: torch.Tensor) -> dict[str, Any]:
    out: dict[str, Any] = {"sharpness": sharpness(samples), "sharpness_real": sharpness(real)}
    out["sharpness_ratio"] = out["sharpness"] / out["sharpness_real"] if out["sharpness_real"] > 0 else None
    if out["sharpness_ratio"] is not None:
        out["sharpness_ratio_ci95"] = ratio_of_means_interval(laplacian_variance(samples), laplacian_variance(real))
    return out


def likelihood(model, dataset, config: EvalConfig, evidence: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """The family's tightest bound on ``config.bound_n`` held-out images (:func:`_likelihood`), the
    options chosen by the family's ``spec.bound_kwargs``. ``bpd`` is the unconditional bound (a conditional
    model's null label); a conditional model on labelled data also gets ``cond_bpd`` (with ``cond_bpd_sem``,
    ``cond_bpd_ci95``, ``cond_bpd_n``): the bound on −log p(x | y) of the same images given their true labels
    (no guidance), from the same seed."""
    fit = dataset.train[: config.variance_fit_n] if config.variance_fit_n else None
    options = BoundOptions(importance_samples=config.iwae_samples, timesteps=config.bound_timesteps, fit_data=fit)
    spec = spec_of(model)
    out = _likelihood(model, dataset.test[: config.bound_n], spec.bound_kwargs(options), config.seed, evidence)
    if num_classes(model) and getattr(dataset, "test_labels", None) is not None:
        labels = dataset.test_labels[: config.bound_n]
        given = _likelihood(model, dataset.test[: config.bound_n], {**spec.bound_kwargs(options), "labels": labels}, config.seed)
        out.update({f"cond_{key}": given[key] for key in ("bpd", "bpd_sem", "bpd_ci95", "bpd_n") if key in given})
    ode = spec.ode_likelihood(model, dataset.test[: config.ode_n], config.ode_steps,
                              torch.Generator().manual_seed(config.seed)) if config.ode_n else None
    for key, value in (ode or {}).items():  # the probability-flow ODE's bits/dim on the first ode_n of those images
        out[key] = float(value.double().mean())
        if key == "ode_bpd":
            spread = value.double().std() if value.numel() > 1 else torch.tensor(float("nan"))  # one image: no spread to tell
            out["ode_bpd_sem"], out["ode_bpd_n"] = float(spread / math.sqrt(value.numel())), int(value.numel())
    return out


def interpolation_quality(model, dataset, config: EvalConfig, extractor, generator: torch.Generator | None = None,
                          real_features: torch.Tensor | None = None, evidence: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Round-trip error through the latent, the latent's std, midpoint FID of held-out pairs (spherical
    paths, with its bootstrap interval) and path smoothness of ``config.strips`` strips."""
    kw = dict(config.sampler_kwargs)
    real = dataset.test
    g = generator or torch.Generator().manual_seed(config.seed)
    real_features = extractor.features(real) if real_features is None else real_features
    out: dict[str, Any] = {}
    with torch.inference_mode():
        _, err = roundtrip(model, real[: config.roundtrip_n], **kw)
        out["roundtrip_mse"], out["roundtrip_psnr_db"] = err["mse"], err["psnr_db"]
        pairs = torch.randperm(real.shape[0], generator=g)[: 2 * config.midpoints]
        half = pairs.numel() // 2
        a, b = real[pairs[:half]], real[pairs[half:2 * half]]
        za, zb = model.to_latent(a, **kw), model.to_latent(b, **kw)
        out["latent_std"] = float(za.float().std())  # ≈ 1 for a latent that looks like N(0, I)
        mid = model.from_latent(latent_path(za, zb, 3)[:, 1], **kw)
        mid_features = extractor.features(mid) if half >= 2 else None
        out["midpoint_fid"] = fid(real_features, mid_features) if half >= 2 else None
        out["midpoint_n"] = int(half)
        if config.bootstrap and half >= 2:
            out["midpoint_fid_ci95"] = list(metric_interval("fid", real_features, mid_features)[1])
        if half >= 2:
            _keep(evidence, "midpoint_features", as_feature_matrix(mid_features))
        s = min(config.strips, half)
        frames = model.from_latent(latent_path(za[:s], zb[:s], config.frames).flatten(0, 1), **kw)
        frames = frames.reshape(s, config.frames, -1).double() / 127.5 - 1
        out["path_smoothness"] = path_smoothness(frames)
    return out


def representation(model, dataset, config: EvalConfig, evidence: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Linear-probe accuracy of the family's latent (``to_latent``) on the labels, with its Wilson interval."""
    kw = dict(config.sampler_kwargs)
    with torch.inference_mode():
        ztr = _encode(model, dataset.train[: config.probe_train], config.batch_size, kw)
        zte = _encode(model, dataset.test[: config.probe_test], config.batch_size, kw)
    correct = probe_correct(ztr, dataset.train_labels[: config.probe_train], zte, dataset.test_labels[: config.probe_test])
    _keep(evidence, "probe_correct", torch.from_numpy(correct.astype(np.uint8)))
    out: dict[str, Any] = {"probe_accuracy": float(correct.mean())}
    out["probe_chance"] = 1.0 / dataset.num_classes
    out["probe_n"] = int(zte.shape[0])
    out["probe_accuracy_ci95"] = wilson_interval(out["probe_accuracy"], out["probe_n"])  # a share of test images
    return out


def _likelihood(model, x, bound_kwargs: dict[str, Any], seed: int, evidence: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """The family's tightest bound on the held-out ``x``: every per-image tensor averaged, with the
    standard error of the mean over images (``<key>_sem``) and its 95% interval for ``bpd``."""
    with torch.no_grad():
        bound = model.bound(x, generator=torch.Generator().manual_seed(seed), **bound_kwargs)
    if torch.is_tensor(bound.get("bpd")):
        _keep(evidence, "bpd", bound["bpd"])  # per held-out image, the images in order
    out: dict[str, Any] = {}
    for key, value in bound.items():
        if not torch.is_tensor(value):
            out[key] = value
            continue
        name = "bpd_mc_error" if key == "bpd_stderr" else key  # the mean per-image Monte-Carlo error
        out[name] = float(value.double().mean())
        if value.numel() > 1 and key.startswith("bpd") and key != "bpd_stderr":
            out[f"{key}_sem"] = float(value.double().std() / math.sqrt(value.numel()))
    if "bpd_sem" in out:
        out["bpd_n"] = int(bound["bpd"].numel())
        out["bpd_ci95"] = [out["bpd"] - 1.96 * out["bpd_sem"], out["bpd"] + 1.96 * out["bpd_sem"]]
    return out


EVIDENCE_KEYS = ("ms_repeats", "features", "sharpness", "bpd", "midpoint_features", "probe_correct")


def _keep(evidence: dict[str, torch.Tensor] | None, key: str, value: torch.Tensor) -> None:
    """evidence[key] = a CPU copy of ``value`` (float64, or uint8 for 0/1 outcomes) when evidence is collected."""
    if evidence is not None:
        value = value.detach().cpu()
        evidence[key] = value if value.dtype == torch.uint8 else value.double()


TIMED_CHUNKS = 5  # sampling is timed in at least this many batches: ms/sample gets an interval from their spread


def _chunk_sizes(n: int, batch: int) -> list[int]:
    return [min(batch, n - start) for start in range(0, n, batch)]


def _batched_samples(model, n, batch, generator, kw, progress, labels=None) -> tuple[torch.Tensor, list[float]]:
    """n samples drawn ``batch`` at a time (with their ``labels`` (n,) for a conditional model), and the
    seconds each batch took."""
    chunks, seconds = [], []
    iterator = _chunk_sizes(n, batch)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="samples", unit="batch", leave=False)
    start = 0
    for size in iterator:
        extra = {} if labels is None else {"labels": labels[start:start + size]}
        t0 = time.perf_counter()
        chunks.append(model.sample(size, generator=generator, **kw, **extra).cpu())
        seconds.append(time.perf_counter() - t0)
        start += size
    return torch.cat(chunks), seconds


def mean_interval(values: list[float], level: float = 0.95) -> list[float] | None:
    """Student-t interval for the mean of repeated measurements: x̄ ± t_{n−1, (1+level)/2} · s / √n
    (s the sample standard deviation); None with fewer than two values."""
    from scipy.stats import t as student_t

    if len(values) < 2:
        return None
    x = torch.tensor(values, dtype=torch.float64)
    half = float(student_t.ppf(0.5 + level / 2.0, len(values) - 1)) * float(x.std()) / math.sqrt(len(values))
    return [float(x.mean()) - half, float(x.mean()) + half]


def ratio_of_means_interval(numerator: torch.Tensor, denominator: torch.Tensor, level: float = 0.95) -> list[float] | None:
    """Delta-method interval for R = mean(a) / mean(b) of two independent samples a (n), b (m):

        R ± z · R · √( s_a² / (n ā²) + s_b² / (m b̄²) ),   z = Φ⁻¹((1 + level)/2).
    """
    a, b = numerator.double(), denominator.double()
    if a.numel() < 2 or b.numel() < 2 or float(a.mean()) == 0 or float(b.mean()) == 0:
        return None
    ratio = float(a.mean() / b.mean())
    relative = math.sqrt(float(a.var() / (a.numel() * a.mean() ** 2) + b.var() / (b.numel() * b.mean() ** 2)))
    half = NormalDist().inv_cdf(0.5 + level / 2.0) * abs(ratio) * relative
    return [ratio - half, ratio + half]


# ----------------------------------------------------------------------------- conditional generation

def check_eval_guidance(model, guidance: float | None) -> float | None:
    """``eval --guidance W``: a finite W ≥ 0 for a conditional iterative run, else one error line."""
    if guidance is None:
        return None

    return sampling_labels(model, 0, guidance=guidance)["guidance"]


def evaluation_cost(model, config: EvalConfig, invert: float, bound: float, extra: float = 0.0) -> float:
    """Network evaluations of :func:`evaluate` (``config``) of an iterative family whose spec supplies its per-call
    costs (``spec.evaluation_cost``): ``invert`` evaluations per inversion or regeneration of an image, ``bound``
    per image of the bound, ``extra`` for the rest (e.g. a reverse-variance fit, an ODE likelihood). Counted:
    sampling, the paths (probe, midpoints, round trips, strips), the bound (twice for a conditional model: also
    given the labels, ``cond_bpd``) and a conditional model's controllability (:func:`conditional_evaluation_cost`)."""
    c = config
    bounds = 2 if num_classes(model) else 1
    paths = c.probe_train + c.probe_test + 3 * c.midpoints + 2 * c.roundtrip_n + c.strips * c.frames
    return conditional_evaluation_cost(model, c) + (c.n_samples * model.nfe() + paths * invert + c.bound_n * bound * bounds + extra)


def conditional_evaluation_cost(model, config: EvalConfig, iterative: bool = True) -> float:
    """Network evaluations (per image row) that :func:`conditional_quality` and :func:`guidance_sweep` add to
    an evaluation of a conditional model: guidance w ∉ {0, 1} evaluates both branches (2 rows per image)."""
    k = num_classes(model)
    if not k or not config.controllability:
        return 0.0
    rows = lambda w: 1 if w is None or float(w) in (0.0, 1.0) else 2  # noqa: E731
    nfe = int(model.nfe(**config.sampler_kwargs))
    cost = config.per_class_n * k * nfe * rows(config.guidance) + config.n_samples * nfe * (rows(config.guidance) - 1)
    if iterative:
        cost += sum(config.guidance_sweep_n * nfe * rows(w) for w in config.guidance_sweep)
    return float(cost)


def class_balanced_labels(n: int, k: int) -> torch.Tensor:
    """n labels cycling through 0..K−1 (every class n/K times, ±1)."""
    return torch.arange(n, dtype=torch.long) % k


def conditional_quality(model, dataset, config: EvalConfig, extractor, generator: torch.Generator | None = None) -> dict[str, Any]:
    """How well a conditional model obeys its label (issue 16): ``per_class_n`` samples of every class k
    at guidance ``config.guidance`` (default 1), scored by :func:`conditional_scores`."""
    samples, labels = class_samples(model, config, generator)
    out = conditional_scores(samples, labels, dataset, extractor)
    out.update({"conditional_guidance": 1.0 if config.guidance is None else float(config.guidance),
                "conditional_n_per_class": config.per_class_n})
    return out


def class_samples(model, config: EvalConfig, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``config.per_class_n`` samples of every class (class 0's first), at guidance ``config.guidance``
    (None: the conditional model, w = 1), in the sampling precision of the main samples; and their labels."""
    labels = torch.arange(num_classes(model)).repeat_interleave(config.per_class_n)
    kw = dict(config.sampler_kwargs)
    if config.guidance is not None:
        kw["guidance"] = config.guidance
    with torch.inference_mode(), sampling_precision(model, config.precision):
        samples, _ = _batched_samples(model, labels.shape[0], config.batch_size,
                                      generator or torch.Generator().manual_seed(config.seed), kw, False, labels)
    return samples, labels


def conditional_scores(samples: torch.Tensor, labels: torch.Tensor, dataset, extractor) -> dict[str, Any]:
    """Scores of uint8 ``samples`` generated for ``labels`` (N,): the feature network's classifier
    (``predict_proba``) says which class each shows. ``conditional_accuracy`` = mean over classes of
    P(argmax = k | asked k) (the mean of ``conditional_accuracy_per_class``), with a Wilson interval over
    all samples; ``per_class_fid`` = FID of class k's samples against the held-out images of class k."""
    k = int(dataset.num_classes)
    predicted = torch.from_numpy(np.asarray(extractor.predict_proba(samples))).argmax(1)
    hits = predicted == labels
    per_class = [float(hits[labels == c].float().mean()) if bool((labels == c).any()) else None for c in range(k)]
    fids = []
    for c in range(k):
        real, fake = dataset.test[dataset.test_labels == c], samples[labels == c]
        fids.append(fid(extractor.features(real), extractor.features(fake)) if min(real.shape[0], fake.shape[0]) > 1 else None)
    asked = [a for a in per_class if a is not None]
    finite = [f for f in fids if f is not None and math.isfinite(f)]
    return {"conditional_accuracy": sum(asked) / len(asked), "conditional_accuracy_per_class": per_class,
            "conditional_accuracy_ci95": wilson_interval(float(hits.float().mean()), int(hits.numel())),
            "per_class_fid": fids, "per_class_fid_mean": sum(finite) / len(finite) if finite else None}


def guidance_sweep(model, dataset, config: EvalConfig, extractor, generator: torch.Generator | None = None,
                   real_features=None) -> dict[str, Any]:
    """FID, precision/recall, conditional accuracy and ms/sample of ``guidance_sweep_n`` class-balanced
    samples at every guidance scale w of ``config.guidance_sweep`` (guidance trades diversity for
    fidelity, and w ∉ {0, 1} doubles each step's batch). ``best_guidance_accuracy`` / ``best_guidance_fid``:
    the w of the highest accuracy / lowest FID."""
    k = num_classes(model)
    n = config.guidance_sweep_n
    labels = class_balanced_labels(n, k)
    real_features = extractor.features(dataset.test) if real_features is None else real_features
    rows = []
    for w in config.guidance_sweep:
        g = torch.Generator().manual_seed(config.seed)  # the same noise at every w
        kw = {**config.sampler_kwargs, "guidance": float(w)}
        with torch.inference_mode(), sampling_precision(model, config.precision):
            samples, seconds = _batched_samples(model, n, config.batch_size, g, kw, False, labels)
        fake = extractor.features(samples)
        predicted = torch.from_numpy(np.asarray(extractor.predict_proba(samples))).argmax(1)
        row = {"guidance": float(w), "fid": fid(real_features, fake), "ms_per_sample": 1000.0 * sum(seconds) / n,
               "accuracy": float((predicted == labels).float().mean())}
        row.update(precision_recall(real_features, fake, k=3))
        rows.append(row)
    return {"guidance_sweep": rows, "guidance_sweep_n": n, **best_guidance(rows)}


def best_guidance(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The w of the sweep's highest conditional accuracy (ties: the lower FID, as guidance beyond the point
    where the label is followed only costs quality) and the w of its lowest FID."""
    def finite_fid(row):
        return row["fid"] if row["fid"] is not None and math.isfinite(row["fid"]) else math.inf

    return {"best_guidance_accuracy": max(rows, key=lambda r: (r["accuracy"], -finite_fid(r)))["guidance"],
            "best_guidance_fid": min(rows, key=finite_fid)["guidance"]}


def controllability(results: dict[str, Any]) -> dict[str, Any]:
    """The report's Controllability cell from an evaluation of a conditional model: with a guidance sweep,
    the best conditional accuracy, the w that gives it, and the FID / recall it costs next to w = 1 (the
    conditional model unguided); without one (one-shot families), the conditional accuracy alone."""
    rows = {row["guidance"]: row for row in results.get("guidance_sweep") or []}
    if not rows:
        return {"accuracy": results.get("conditional_accuracy"), "guidance": None}
    best = max(rows.values(), key=lambda r: r["accuracy"])
    base = rows.get(1.0, {})
    return {"accuracy": best["accuracy"], "guidance": best["guidance"], "fid": best["fid"], "recall": best.get("recall"),
            "fid_at_w1": base.get("fid"), "recall_at_w1": base.get("recall"), "ms_per_sample": best["ms_per_sample"]}


def _encode(model, images, batch, kw) -> np.ndarray:
    return torch.cat([model.to_latent(images[i:i + batch], **kw).flatten(1).float().cpu()
                      for i in range(0, images.shape[0], batch)]).numpy()


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
    ("bpd", "bound, bits/dim"), ("cond_bpd", "bound given the label, bits/dim"), ("iwae_bpd", "IWAE bound, bits/dim"), ("fid", "FID"), ("kid", "KID"),
    ("precision", "precision"), ("recall", "recall"), ("sharpness_ratio", "sharpness vs real"),
    ("confident_fraction", "recognisable (conf ≥ 0.9)"), ("class_entropy_bits", "class entropy, bits"),
    ("class_entropy_ratio", "class entropy / its maximum"), ("classes_below_half", "share of classes under half expected"),
    ("classes_missing", "classes never generated"),
    ("nfe", "network evaluations / sample"), ("ms_per_sample", "ms / sample"),
    ("roundtrip_mse", "round-trip MSE"), ("roundtrip_psnr_db", "round-trip PSNR, dB"),
    ("path_smoothness", "path smoothness (CV, 0 = even)"), ("midpoint_fid", "midpoint FID"),
    ("probe_accuracy", "linear probe accuracy"), ("active_units", "active units"),
    ("kl_nats", "KL, nats"), ("mutual_info", "mutual information, nats"),
    ("conditional_accuracy", "conditional accuracy"), ("per_class_fid_mean", "per-class FID (mean)"),
    ("best_guidance_accuracy", "guidance w of best accuracy"), ("best_guidance_fid", "guidance w of best FID"),
]


def format_table(results: dict[str, Any]) -> str:
    """A human-readable two-column table of the headline figures."""
    lines = [f"{results.get('family', '?')} on {results.get('data', '?')} — features: {results.get('feature_space', '?')}"]
    for key, label in TABLE_ROWS:
        if results.get(key) is not None:
            value = results[key]
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            interval = results.get(f"{key}_ci95")
            if isinstance(interval, (list, tuple)) and len(interval) == 2 and None not in interval:
                text += f" [{interval[0]:.4g}, {interval[1]:.4g}]"  # 95% interval
            lines.append(f"  {label:<34} {text}")
    return "\n".join(lines)
