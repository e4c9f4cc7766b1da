"""``diffvae score SAMPLES --data SPEC``: the sample-quality part of ``eval`` for images from any model.

SAMPLES is a ``folder:PATH`` (PNG/JPEG; class subfolders are ignored), ``npz:PATH`` (uint8
N×H×W, N×H×W×C or N×C×H×W, as pythae / diffusers / ``diffvae sample --out x.npz`` write them) or
``idx:PATH`` spec, read in file order, or a diffvae run directory (its samples are drawn exactly as
``eval`` draws them: ``--n``, ``--seed`` and the sampling flags). The figures come from
:func:`diffvae.evaluate.sample_quality`, the function ``eval`` itself calls, so the same images,
data and ``--seed`` give the same numbers and the same JSON keys as ``eval --json``: FID, KID,
precision/recall with bootstrap 95% intervals, sharpness and its ratio to real data, and with
labels recognisability and class coverage. The reference is the held-out split of ``--data``
(default for a run: the run's own data) and the default feature space is diffvae's local feature network
for that data, named in every output (``feature_space``): not Inception, so the numbers compare
models scored on the same data only. ``--features inception:PATH`` scores in Inception-v3 pool3 space from a
local weights file instead (:mod:`diffvae.metrics.inception`; paper-comparable with the standard file only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from diffvae.api import load
from diffvae.contract import spec_of
from diffvae.data import IMAGE_SUFFIXES, _read_source, check_fits_in_memory, load_data, run_data
from diffvae.device import resolve_device
from diffvae.errors import DiffvaeError
from diffvae.evaluate import EvalConfig, check_quality_counts, format_table, sample_quality, sampling_speed
from diffvae.metrics.inception import feature_extractor_for, load_inception, parse_features
from diffvae.ranges import SCORE_RANGES
from diffvae.runs import CONFIG
from diffvae.metrics.sharpness import laplacian_variance
from diffvae.metrics.paired import sample_comparisons
from diffvae.metrics.inception import feature_extractor_for, parse_features

SAMPLE_PREFIXES = ("folder", "npz", "idx")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``diffvae score`` (ranges are checked in :func:`run`, before anything is read)."""
    parser.add_argument("samples", metavar="SAMPLES",
                        help="folder:PATH | npz:PATH | idx:PATH (or PATH.npz) of uint8 samples, or a run directory")
    parser.add_argument("other", metavar="OTHER", nargs="?", default=None,
                        help="a second sample set (folder:PATH | npz:PATH | idx:PATH | PATH.npz): compare the two against "
                             "the same reference, a paired test and a decision per metric (FID, KID, precision, recall, "
                             "sharpness gap)")
    parser.add_argument("--data", default=None, metavar="SPEC",
                        help="reference data (its held-out split): mnist | digits | shapes | colours | photos | "
                             "folder:PATH | npz:PATH | idx:PATH (default for a run: the run's data)")
    parser.add_argument("--size", type=int, default=None, help="resize the reference data to SIZE×SIZE")
    parser.add_argument("--key", default=None, help="array name inside the --data .npz")
    parser.add_argument("--binarize", action="store_true", help="threshold the reference data to {0, 255}")
    parser.add_argument("--samples-key", default=None, metavar="NAME", help="array name inside the SAMPLES .npz")
    parser.add_argument("--n", type=int, default=None, help="a run: samples to draw (default as eval: 1000)")
    parser.add_argument("--sampler", default=None, help="a run: ddpm | ddim | dpm++2m (diffusion families)")
    parser.add_argument("--steps", type=int, default=None, help="a run: sampling steps")
    parser.add_argument("--eta", type=float, default=None, help="a run: DDIM η")
    parser.add_argument("--seed", type=int, default=0, help="KID subsets and bootstrap (and a run's samples), as eval")
    parser.add_argument("--bootstrap", type=int, default=None, help="0 = no 95%% intervals (they are jackknife "
                                                                      "intervals around each figure; default as eval: on)")
    parser.add_argument("--device", default="auto", help="a run (and Inception features): auto | cpu | cuda[:N] | mps")
    parser.add_argument("--features", default="local", metavar="SPACE",
                        help="feature space: local (diffvae's feature network for --data, default) | "
                             "inception:PATH (Inception-v3 pool3 from a local weights file; needs torch-fidelity)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (the keys of eval --json)")


def run(args: argparse.Namespace) -> int:
    """Score SAMPLES (see the module docstring) and print a table or, with ``--json``, one JSON object."""
    if args.other is not None:
        return _run_pair(args)
    results = score(args.samples, data=args.data, size=args.size, key=args.key, binarize=args.binarize,
                    samples_key=args.samples_key, n=args.n, sampling=_sampling(args), seed=args.seed,
                    bootstrap=args.bootstrap, device=args.device, progress=not args.json,
                    features=args.features)
    print(json.dumps(results, indent=2, sort_keys=True) if args.json else format_score(results))
    return 0


def _run_pair(args: argparse.Namespace) -> int:
    if args.n is not None or _sampling(args):
        raise DiffvaeError("--n, --sampler, --steps and --eta apply to one run directory, not to two sample sets")
    results = score_pair(args.samples, args.other, data=args.data, size=args.size, key=args.key, binarize=args.binarize,
                         samples_key=args.samples_key, seed=args.seed, device=args.device, features=args.features,
                         progress=not args.json)
    print(json.dumps(results, indent=2, sort_keys=True) if args.json else format_pair(results))
    return 0


def score_pair(a: str, b: str, *, data: str | None, size: int | None = None, key: str | None = None,
               binarize: bool = False, samples_key: str | None = None, seed: int = 0, device: str = "auto",
               features: str | None = "local", progress: bool = False) -> dict[str, Any]:
    """Two sample sets against the same reference (``data``'s held-out split): ``{"comparisons": [...]}``, one entry
    per metric in the schema of ``results.json["comparisons"]`` (:meth:`diffvae.metrics.paired.Comparison.entry`), with
    ``a`` and ``b`` the specs as given. Each metric is its own question, decided at α = 0.05."""
    _eval_config(seed, None, None)
    resolve_device(device)  # --device cuda without CUDA: one line here too (it ran on the CPU and exited 0)
    space = parse_features(features)
    extractor = _inception_extractor(space, device) if space.kind == "inception" else None
    specs = [_sample_spec(s) for s in (a, b)]
    for given, spec in zip((a, b), specs):
        if _run_directory(spec) is not None:
            raise DiffvaeError(f"{given}: score A B compares two sample sets (folder:, npz:, idx: or .npz); "
                               "sample a run first with diffvae sample --out FILE.npz")
    if data is None:
        raise DiffvaeError("score A B: --data SPEC is required (the reference images)")
    dataset = _reference(data, size, key, binarize)
    images = [read_samples(spec, dataset.image_shape, samples_key) for spec in specs]
    for given, x in zip((a, b), images):
        if x.shape[0] < 4:
            raise DiffvaeError(f"{given} holds {x.shape[0]} images; a paired comparison needs at least 4")
    if progress:
        print(f"diffvae score: {images[0].shape[0]} and {images[1].shape[0]} samples against {dataset.name} ...",
              file=sys.stderr, flush=True)
    extractor = extractor or feature_extractor_for(space, dataset)
    reference = extractor.features(dataset.test)
    feats = [extractor.features(x) for x in images]
    sharp = [laplacian_variance(x) for x in (*images, dataset.test)]
    comparisons = sample_comparisons(reference, *feats, *sharp, generator=torch.Generator().manual_seed(seed))
    return {"comparisons": [c.entry("score", a, b, note="; one question per metric, α = 0.05") for c in comparisons],
            "feature_space": extractor.name, "data": dataset.name,
            "reference": f"held-out split ({dataset.test.shape[0]} images)",
            "n": {a: int(images[0].shape[0]), b: int(images[1].shape[0])}}


def format_pair(results: dict[str, Any]) -> str:
    """One line per metric: the difference A − B with its interval, p and the decision."""
    def fmt(value: Any) -> str:
        return "—" if value is None else f"{value:.3g}"

    lines = [f"diffvae score: A − B against {results['data']} {results['reference']} ({results['feature_space']})"]
    for c in results["comparisons"]:
        who = {"a": c["a"], "b": c["b"]}.get(c["decided"], "not decided")
        lines.append(f"  {c['metric']:<14} {fmt(c['difference'])} [{fmt(c['ci95'][0])}, {fmt(c['ci95'][1])}]  "
                     f"p = {fmt(c['p_value'])}  better: {who}")
    return "\n".join(lines)


def _sample_spec(samples: str) -> str:
    """``PATH.npz`` (an existing file, no prefix) is ``npz:PATH``; anything else as given."""
    text = samples.strip() if isinstance(samples, str) else samples
    if isinstance(text, str) and ":" not in text and text.lower().endswith(".npz") and Path(text).expanduser().is_file():
        return f"npz:{text}"
    return samples


def score(samples: str, *, data: str | None = None, size: int | None = None, key: str | None = None,
          binarize: bool = False, samples_key: str | None = None, n: int | None = None,
          sampling: dict[str, Any] | None = None, seed: int = 0, bootstrap: int | None = None,
          device: str = "auto", progress: bool = False, features: str | None = "local") -> dict[str, Any]:
    """The sample-quality figures of ``samples`` against ``data``'s held-out split (module docstring), in the
    feature space ``features`` names (:func:`diffvae.metrics.inception.parse_features`)."""
    config = _eval_config(seed, bootstrap, n)
    resolve_device(device)  # an unavailable --device is one line, even where SAMPLES are files
    space = parse_features(features)
    extractor = _inception_extractor(space, device) if space.kind == "inception" else None
    samples = _sample_spec(samples)
    run_path = _run_directory(samples)
    if run_path is None:
        if n is not None or sampling:
            raise DiffvaeError("--n, --sampler, --steps and --eta apply when SAMPLES is a run directory")
        if data is None:
            raise DiffvaeError("score: --data SPEC is required when SAMPLES is not a run (the reference images)")
        dataset = _reference(data, size, key, binarize)
        images, source = read_samples(samples, dataset.image_shape, samples_key), samples.strip()
        header: dict[str, Any] = {"samples": source}
    else:
        model = _load_run(run_path, device, sampling or {})
        dataset = _reference(data, size, key, binarize) if data is not None else _run_dataset(model)
        images = _run_samples(model, dataset, config, sampling or {}, progress)
        header = {"samples": str(run_path), "family": model.family, **(sampling or {})}
    check_quality_counts(images.shape[0], dataset.test.shape[0])  # precision/recall need 4 (it said 2, then failed inside)
    c, h, w = dataset.image_shape
    header.update({"data": dataset.name, "image_shape": [c, h, w], "data_dims": c * h * w})
    if progress:
        chose = f" (--device auto: {resolve_device(device)})" if device == "auto" else ""
        print(f"diffvae score: {images.shape[0]} samples against {dataset.name}{chose} ...", file=sys.stderr, flush=True)
    extractor = extractor or feature_extractor_for(space, dataset)
    return {**header, **sample_quality(images, dataset, config, extractor=extractor)}


def _inception_extractor(space, device: str):
    """Inception-v3 from the weights file, checked before any sample is read or drawn."""
    return load_inception(space.path, resolve_device(device))


def _eval_config(seed: int, bootstrap: int | None, n: int | None):
    config = EvalConfig(seed=seed)
    for name, value in (("--seed", seed), ("--bootstrap", bootstrap), ("--n", n)):
        if value is not None:
            SCORE_RANGES[name].check(value, name)  # a seed of 10^30 or 10^12 resamples: one line, not an overflow
    if bootstrap is not None:
        config.bootstrap = bootstrap
    if n is not None:
        config.n_samples = n
    return config


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("sampler", "steps", "eta") if getattr(args, k, None) is not None}


def _run_directory(samples: str) -> Path | None:
    """The run directory SAMPLES names, None for a data spec; anything else is refused in one line."""
    if not isinstance(samples, str) or not samples.strip():
        raise DiffvaeError("SAMPLES must be folder:PATH, npz:PATH, idx:PATH or a run directory")
    kind, sep, _ = samples.strip().partition(":")
    if sep and kind.lower() in SAMPLE_PREFIXES:
        return None
    path = Path(samples).expanduser()
    if path.is_dir() and (path / CONFIG).is_file():
        return path
    hint = f" (for a folder of images use folder:{samples}; for an .npz use npz:{samples})" if path.exists() else ""
    raise DiffvaeError(f"SAMPLES {samples!r} is neither folder:PATH, npz:PATH, idx:PATH nor a run directory{hint}")


def _reference(spec: str, size: int | None, key: str | None, binarize: bool):
    return load_data(spec, size=size, key=key, binarize=binarize)


def read_samples(spec: str, image_shape: tuple[int, int, int], key: str | None = None) -> torch.Tensor:
    """All images of a ``folder:``/``npz:``/``idx:`` spec in file order, uint8 (N, C, H, W), checked
    against the reference ``image_shape`` (a folder's images must already be H×W: none is resized)."""
    kind, _, argument = spec.strip().partition(":")
    kind = kind.lower()
    c, h, w = image_shape
    if kind == "folder":
        _check_folder_sizes(argument, h, w)
    if key is not None and kind != "npz":
        raise DiffvaeError("--samples-key applies to npz: samples only")
    images = _read_source(spec.strip(), size=h if kind == "folder" else None, key=key, seed=0).images
    if images.shape[0] == 0:
        raise DiffvaeError(f"{spec} holds no images")
    if tuple(images.shape[1:]) != (c, h, w):
        raise DiffvaeError(f"{spec} holds {images.shape[1]}×{images.shape[2]}×{images.shape[3]} images but the "
                           f"reference data is {c}×{h}×{w}; score samples at the data's own size and channels")
    # standard strides: a size-1 channel read from N×H×W×1 keeps stride 1 there, and oneDNN then picks another
    # convolution kernel for the feature network (features differ by ~1e-6, so the figures would not be identical)
    return torch.empty(images.shape, dtype=images.dtype).copy_(images)


def _check_folder_sizes(argument: str, h: int, w: int) -> None:
    """Every PNG/JPEG under the folder is h×w (read from the file headers only)."""
    from PIL import Image

    root = Path(argument.strip()).expanduser()
    if not root.is_dir():
        return  # the reader says what is wrong
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(root).parts)):  # as the reader
        try:
            with Image.open(path) as img:
                width, height = img.size
        except (OSError, ValueError, SyntaxError) as err:
            raise DiffvaeError(f"cannot read image {path}: {err}") from None
        if (height, width) != (h, w):
            raise DiffvaeError(f"{path} is {height}×{width} but the reference data is {h}×{w}; "
                               "score samples at the data's own size")


def _load_run(path: Path, device: str, sampling: dict[str, Any]):
    model = load(path, device=str(resolve_device(device)))
    if sampling and not spec_of(model).samplers:
        raise DiffvaeError(f"{'/'.join('--' + k for k in sampling)} apply to iterative families; "
                           f"a {model.family} run samples in one step")
    return model


def _run_dataset(model):
    return run_data(model)


def _run_samples(model, dataset, config, sampling: dict[str, Any], progress: bool) -> torch.Tensor:
    """The run's samples, drawn exactly as ``eval`` draws them (:func:`diffvae.evaluate.sampling_speed`)."""
    if tuple(model.image_shape) != tuple(dataset.image_shape):
        raise DiffvaeError(f"the run makes {'×'.join(map(str, model.image_shape))} images but the reference data is "
                           f"{'×'.join(map(str, dataset.image_shape))}")
    check_fits_in_memory(config.n_samples * dataset.train[0].numel() * 4 * 8, f"--n {config.n_samples}")
    config.sampler_kwargs = dict(sampling)
    samples, _ = sampling_speed(model, config, progress=progress)
    return samples.cpu()


def format_score(results: dict[str, Any]) -> str:
    """The table ``diffvae score`` prints: eval's table rows that apply to samples."""
    return format_table({**results, "family": f"samples {results.get('samples', '?')}"})
