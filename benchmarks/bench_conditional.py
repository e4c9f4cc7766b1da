"""Conditional generation on mnist (issue 16): does a class-conditional model draw the class it is asked for?

Trains a conditional latent diffusion model and a conditional VAE for ``--minutes`` of this process's CPU
time each (the engine's ``--budget`` on ``time.process_time``, one thread, as bench_sweep.py), then in
diffvae's mnist feature space:

* LDM: the guidance sweep (w in ``--guidance``: FID, precision/recall, conditional accuracy, ms/sample on
  ``--sweep-n`` class-balanced samples), then — with a fresh seed, so the pick does not flatter it — the
  conditional accuracy and per-class FID at the w of the best sweep accuracy (``--per-class`` samples a class);
* VAE: conditional accuracy and per-class FID (one decoder pass; guidance does not apply);
* both: FID and the sharpness ratio of ``--per-class`` × 10 class-balanced samples.

    python benchmarks/bench_conditional.py                    # 8 CPU-minutes each
    python benchmarks/bench_conditional.py --quick            # digits, a few steps (smoke)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info, results_path, setup_threads, write_json  # noqa: E402

import diffvae.train  # noqa: E402
from diffvae.api import DataConfig, load, train_run  # noqa: E402
from diffvae.evaluate import EvalConfig, conditional_scores, guidance_sweep, sample_quality  # noqa: E402
from diffvae.evaluate import _batched_samples  # noqa: E402
from diffvae.families import get_family  # noqa: E402
from diffvae.metrics.features import get_feature_extractor  # noqa: E402
from diffvae.train import TrainConfig  # noqa: E402


def train_conditional(family: str, minutes: float, dataset, out: Path, quick: bool):
    """A conditional run of ``family`` for ``minutes`` CPU-minutes (or 20 steps with ``quick``); the EMA model."""
    fam = get_family(family)
    config_class, _ = fam.load()
    train_config = TrainConfig(**fam.train_defaults, **({"steps": 20} if quick else {"budget_minutes": minutes}))
    cpu0, t0 = time.process_time(), time.perf_counter()
    train_run(family, DataConfig("digits" if quick else "mnist"), config_class(conditional=True), train_config,
              out=out, force=True, progress=False, dataset=dataset)
    model = load(out)
    return model, {"train_cpu_s": time.process_time() - cpu0, "train_wall_s": time.perf_counter() - t0,
                   "trained_steps": int(model.trained_steps)}


def score_at(model, dataset, extractor, config: EvalConfig, guidance: float | None) -> dict:
    """Conditional accuracy, per-class FID, FID, precision/recall and the sharpness ratio of ``per_class_n``
    samples of every class at ``guidance`` (one set of samples for all of them)."""
    k = int(dataset.num_classes)
    labels = torch.arange(k).repeat_interleave(config.per_class_n)
    kw = {**config.sampler_kwargs, **({} if guidance is None else {"guidance": guidance})}
    with torch.inference_mode():
        samples, seconds = _batched_samples(model, labels.shape[0], config.batch_size, torch.Generator().manual_seed(config.seed),
                                            kw, False, labels)
    out = conditional_scores(samples, labels, dataset, extractor)
    quality = sample_quality(samples, dataset, EvalConfig(bootstrap=0), extractor)
    out.update({k: quality[k] for k in ("fid", "precision", "recall", "sharpness_ratio", "confident_fraction")})
    out.update({"guidance": guidance, "ms_per_sample": 1000.0 * sum(seconds) / labels.shape[0]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--families", default="ldm,vae")
    parser.add_argument("--guidance", default="0,1,2,3,5")
    parser.add_argument("--sweep-n", type=int, default=300)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--sampler", default="ddpm")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", default="/tmp/bench_conditional_runs")
    parser.add_argument("--out", default=None)
    parser.add_argument("--eval-only", action="store_true", help="score the runs already under --runs (no training)")
    args = parser.parse_args()
    setup_threads(args.threads)
    diffvae.train.wall_clock = time.process_time  # budgets in CPU time
    from diffvae.data import load_data

    dataset = load_data("digits" if args.quick else "mnist")
    extractor = get_feature_extractor(dataset)
    result = {"machine": machine_info(), "minutes": args.minutes, "families": {}, "args": vars(args)}
    for family in args.families.split(","):
        if args.eval_only:
            model, row = load(Path(args.runs) / family), {}
            row["trained_steps"] = int(model.trained_steps)
            row["train_cpu_s"] = float("nan")
        else:
            model, row = train_conditional(family, args.minutes, dataset, Path(args.runs) / family, args.quick)
        iterative = family != "vae"
        sampling = {"sampler": args.sampler, "steps": min(args.steps, 10 if args.quick else args.steps)} if iterative else {}
        config = EvalConfig(seed=0, per_class_n=args.per_class, guidance_sweep_n=args.sweep_n, batch_size=250,
                            guidance_sweep=tuple(float(w) for w in args.guidance.split(",")), sampler_kwargs=sampling)
        best = None
        if iterative:
            sweep = guidance_sweep(model, dataset, config, extractor)
            row.update(sweep)
            best = sweep["best_guidance_accuracy"]
            print(f"{family} sweep: " + ", ".join(f"w={r['guidance']:g} acc={r['accuracy']:.3f} fid={r['fid']:.1f} "
                                                  f"{r['ms_per_sample']:.1f} ms" for r in sweep["guidance_sweep"]), flush=True)
        config.seed = 1  # a fresh draw at the chosen w
        row["at_best"] = score_at(model, dataset, extractor, config, best)
        row["sampling"] = sampling
        result["families"][family] = row
        a = row["at_best"]
        print(f"{family}: steps {row['trained_steps']}, train {row['train_cpu_s']:.0f} CPU-s, w={best}, "
              f"accuracy {a['conditional_accuracy']:.3f}, FID {a['fid']:.1f}, per-class FID {a['per_class_fid_mean']:.1f}, "
              f"sharpness ratio {a['sharpness_ratio']:.3f}, {a['ms_per_sample']:.1f} ms/sample", flush=True)
        write_json(args.out or results_path("bench_conditional", args.quick), result)


if __name__ == "__main__":
    main()
