"""Recipes swept, not guessed: FID per CPU-minute for each family's levers on mnist (issue 13) and colours (issue 24).

Every candidate trains for the same *compute*, not the same wall clock: the engine's ``--budget`` runs on
this process's CPU clock (``time.process_time``), so with ``--threads 1`` a budget is CPU-minutes and a
busy machine changes how long the sweep takes, not which recipe wins. Each trained
model draws ``--samples`` images with the family's default sampler (and, for the diffusion families,
the alternative samplers listed in ``SAMPLERS``) from one seed; FID is in diffvae's mnist feature space
against the held-out split. The winner per family and budget is the smallest FID.

    python benchmarks/bench_sweep.py --minutes 3                       # every family, every candidate
    python benchmarks/bench_sweep.py --families ddpm --minutes 2 5
    python benchmarks/bench_sweep.py --data colours --families ddpm,flow,vae --minutes 2   # COLOUR_CANDIDATES
    python benchmarks/bench_sweep.py --quick                           # smoke setting (digits, seconds)

Every candidate starts from the family's preset for the data's shape (``diffvae.presets``), as ``diffvae train``
does; the candidate's own values win.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS_DIR, machine_info, machine_line, results_path, setup_threads, write_json  # noqa: E402

from diffvae.api import DataConfig, load, train_run  # noqa: E402
from diffvae.families import get_family  # noqa: E402
from diffvae.metrics.features import get_feature_extractor, recognisability  # noqa: E402
from diffvae.metrics.coverage import label_coverage  # noqa: E402
from diffvae.metrics.distances import fid  # noqa: E402
from diffvae.presets import preset_config  # noqa: E402
import diffvae.train  # noqa: E402
from diffvae.train import TrainConfig  # noqa: E402

# name -> (model config overrides, train config overrides); the first of each family is today's default
CANDIDATES = {
    "vae": {
        "default": ({}, {}),
        "batch64-lr2e-3": ({}, {"batch_size": 64, "lr": 2e-3}),
        "latent32-batch64-lr2e-3": ({"latent_dim": 32}, {"batch_size": 64, "lr": 2e-3}),
        "depth1-batch64-lr2e-3": ({"depth": 1}, {"batch_size": 64, "lr": 2e-3}),
        "beta0.5": ({"beta": 0.5}, {}),
    },
    "ddpm": {
        "default": ({}, {}),
        "width16": ({"channels": 16}, {}),
        "width16-batch32-lr2e-3": ({"channels": 16}, {"batch_size": 32, "lr": 2e-3}),
        "width32-v": ({"prediction": "v"}, {}),
        "width32-mult12": ({"channel_mult": (1, 2)}, {}),
        "small-minsnr": ({"channels": 16, "loss_weight": "min_snr"}, {"batch_size": 32, "lr": 2e-3}),
        "small-v-minsnr": ({"channels": 16, "prediction": "v", "loss_weight": "min_snr"}, {"batch_size": 32, "lr": 2e-3}),
        "small-lr4e-3": ({"channels": 16}, {"batch_size": 32, "lr": 4e-3}),
        "small-batch16": ({"channels": 16}, {"batch_size": 16, "lr": 2e-3}),
        "small-mult12": ({"channels": 16, "channel_mult": (1, 2)}, {"batch_size": 32, "lr": 2e-3}),
        "small-cosine": ({"channels": 16, "schedule": "cosine"}, {"batch_size": 32, "lr": 2e-3}),
        "small-v-cosine": ({"channels": 16, "prediction": "v", "schedule": "cosine"}, {"batch_size": 32, "lr": 2e-3}),
        "small-v-cosine-minsnr": ({"channels": 16, "prediction": "v", "schedule": "cosine", "loss_weight": "min_snr"},
                                  {"batch_size": 32, "lr": 2e-3}),
    },
    "flow": {  # the peer with the same UNet and step cost: how far the DDPM recipe is from what this network can do
        "small": ({"channels": 16}, {"batch_size": 32, "lr": 2e-3}),
    },
    "ldm": {
        "default": ({}, {}),
        "ae50": ({"ae_steps_fraction": 0.5}, {}),
        "denoiser32": ({"channels": 32}, {}),
        "latent2": ({"latent_channels": 2}, {}),
        "v-cosine": ({"prediction": "v", "schedule": "cosine"}, {}),
    },
}
# colours (3×32×32): the UNet families' width and learning rate around the 2-minute recipe (width 16, batch 32,
# lr 2e-3), and the VAE's decoder likelihood; each family's first candidate is what it trains with today
UNET_COLOUR = {
    "small": ({"channels": 16}, {"batch_size": 32, "lr": 2e-3}),
    "small-lr1e-3": ({"channels": 16}, {"batch_size": 32, "lr": 1e-3}),
    "small-lr4e-3": ({"channels": 16}, {"batch_size": 32, "lr": 4e-3}),
    "width32-batch32-lr2e-3": ({"channels": 32}, {"batch_size": 32, "lr": 2e-3}),
}
COLOUR_CANDIDATES = {
    "ddpm": UNET_COLOUR,
    "flow": UNET_COLOUR,
    "vae": {"logistic": ({}, {}), "gaussian": ({"decoder": "gaussian"}, {}), "latent64": ({"latent_dim": 64}, {}),
            "latent16": ({"latent_dim": 16}, {}), "depth2": ({"depth": 2}, {}),
            "width128": ({"width": 128}, {}), "lr3e-4": ({}, {"lr": 3e-4}),
            "beta4": ({"beta": 4.0}, {}), "beta16": ({"beta": 16.0}, {}),
            "beta64": ({"beta": 64.0}, {})},
    "ldm": {"default": ({}, {}), "ae70": ({"ae_steps_fraction": 0.7}, {}), "ae45": ({"ae_steps_fraction": 0.45}, {}),
            # the latent prior's recipe (stage 2 only: the colour preset fixes stage 1's batch and lr)
            "prior-lr2e-3": ({}, {"lr": 2e-3}), "prior-batch32-lr2e-3": ({}, {"batch_size": 32, "lr": 2e-3}),
            "prior-width32-batch32-lr2e-3": ({"channels": 32}, {"batch_size": 32, "lr": 2e-3}),
            "kl1e-4": ({"kl_weight": 1e-4}, {}), "latent8": ({"latent_channels": 8}, {})},
}
CANDIDATES_FOR = {"mnist": CANDIDATES, "colours": COLOUR_CANDIDATES}
DIFFUSION_SAMPLERS = [{"sampler": "dpm++2m", "steps": 20}, {"sampler": "ddpm", "steps": 100}, {"sampler": "ddim", "steps": 20}]
SAMPLERS = {"ddpm": DIFFUSION_SAMPLERS, "ldm": DIFFUSION_SAMPLERS}
QUICK_RECIPES = ["default", "width16", "denoiser32"]


def train_and_score(family, name, model_over, train_over, minutes, dataset, extractor, real, samples, out_dir, quick,
                    seed: int = 0):
    """Train one recipe for ``minutes`` of this process's CPU time (the engine's --budget, on the CPU
    clock) and score its samples with every sampler of ``SAMPLERS``."""
    fam = get_family(family)
    config_class, _ = fam.load()
    model_config = preset_config(fam.spec(), config_class(**model_over), dataset.image_shape, given=set(model_over))
    train_config = TrainConfig(**{**fam.train_defaults, **train_over, "seed": seed},
                               **({"steps": 20} if quick else {"budget_minutes": minutes}))
    out = Path(out_dir) / f"{dataset.name}-{family}-{name}-{minutes:g}-s{seed}"
    t0, cpu0 = time.perf_counter(), time.process_time()
    train_run(family, DataConfig(dataset.name), model_config, train_config, out=out, force=True,
              progress=False, dataset=dataset)
    train_seconds, train_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    model = load(out)  # the EMA weights, as `diffvae sample` sees them
    steps = int(model.trained_steps)
    rows = []
    for sampling in SAMPLERS.get(family, [{}]):
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        with torch.inference_mode():
            images = torch.cat([model.sample(min(250, samples - i), generator=g, **sampling) for i in range(0, samples, 250)])
        ms = 1000 * (time.perf_counter() - t0) / samples
        rows.append({"family": family, "recipe": name, "seed": seed, "minutes": minutes, "steps": steps, "train_cpu_seconds": train_cpu,
                     "train_seconds": train_seconds, "sampler": sampling.get("sampler", "default"),
                     "sample_steps": sampling.get("steps"), "fid": fid(real, extractor.features(images)),
                     "ms_per_sample": ms, "samples": samples, "model": model_over, "train": train_over,
                     **coverage_of(images, extractor, dataset)})
        print(rows[-1], flush=True)
    return rows


def coverage_of(images: torch.Tensor, extractor, dataset) -> dict:
    """Class coverage of ``images`` under the data set's classifier against the held-out label shares
    (:mod:`diffvae.metrics.coverage`); nothing for unlabelled data."""
    if getattr(dataset, "test_labels", None) is None or not getattr(dataset, "num_classes", 0):
        return {}
    histogram = recognisability(extractor.predict_proba(images))["class_histogram"]
    return label_coverage(histogram, dataset.test_labels, dataset.num_classes)


def markdown(result: dict) -> str:
    """The section for RESULTS.md from this script's JSON."""
    return result["markdown"]


def sweep_markdown(rows: list[dict], info: dict, samples: int, data: str = "mnist") -> str:
    seeds = ", ".join(str(s) for s in sorted({r.get("seed", 0) for r in rows})) or "0"
    lines = [f"**Recipe sweep** — {data}, each recipe trained for the budget in CPU-minutes (the engine's --budget on this "
             f"process's CPU clock), n samples per row (seed {seeds}; {samples} unless the row says), FID in diffvae features against "
             f"the held-out split; ms/sample on the same thread, as busy as the machine was. {machine_line(info)}", "",
             "| family | budget (min) | recipe | steps | sampler | n | FID | ms/sample | class entropy / max | classes under half |",
             "|---|---:|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        sampler = r["sampler"] + (f":{r['sample_steps']}" if r["sample_steps"] else "")
        coverage = (f"{r['class_entropy_ratio']:.2f} | {r['classes_below_half']:.1f}" if "class_entropy_ratio" in r else "– | –")
        lines.append(f"| {r['family']} | {r['minutes']:g} | {r['recipe']} | {r['steps']} | {sampler} | {r.get('samples', samples)} | "
                     f"{r['fid']:.1f} | {r['ms_per_sample']:.2f} | {coverage} |")
    best = {}
    for r in rows:
        key = (r["family"], r["minutes"])
        if key not in best or r["fid"] < best[key]["fid"]:
            best[key] = r
    lines += ["", "Winners (smallest FID per family and budget):", ""]
    lines += [f"- {f} at {m:g} min: **{r['recipe']}** with {r['sampler']}" + (f":{r['sample_steps']}" if r["sample_steps"] else "")
              + f" — FID {r['fid']:.1f}" for (f, m), r in best.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist", choices=sorted(CANDIDATES_FOR))
    parser.add_argument("--families", default="vae,ddpm,ldm")
    parser.add_argument("--minutes", type=float, nargs="+", default=[3.0])
    parser.add_argument("--recipes", nargs="*", default=None, help="only these recipe names")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samplers", nargs="*", default=None, metavar="NAME:STEPS",
                        help="the diffusion samplers to score (default: every one of DIFFUSION_SAMPLERS on mnist, "
                             "the family's default elsewhere)")
    parser.add_argument("--seed", type=int, default=0, help="training and sampling seed")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.samplers:
        chosen = [{"sampler": s.split(":")[0], "steps": int(s.split(":")[1])} for s in args.samplers]
        SAMPLERS.update({family: chosen for family in SAMPLERS})
    elif args.data != "mnist":
        SAMPLERS.clear()  # each family's default sampler only
    if args.quick and args.recipes is None:
        args.recipes = QUICK_RECIPES
    setup_threads(args.threads)
    diffvae.train.wall_clock = time.process_time  # budgets in CPU time: a busy machine slows the sweep, not the recipes
    from diffvae.data import load_data

    candidates = CANDIDATES_FOR[args.data]
    dataset = load_data("digits" if args.quick else args.data)
    extractor = get_feature_extractor(dataset)
    real = extractor.features(dataset.test)
    rows = []
    for minutes in args.minutes:
        for family in args.families.split(","):
            for name, (model_over, train_over) in candidates[family].items():
                if args.recipes and name not in args.recipes:
                    continue
                rows += train_and_score(family, name, model_over, train_over, minutes, dataset, extractor, real,
                                        50 if args.quick else args.samples, os.path.join(RESULTS_DIR, "sweep"), args.quick,
                                        args.seed)
    info = machine_info()
    text = sweep_markdown(rows, info, args.samples, dataset.name)
    print(text)
    result = {"machine": info, "rows": rows, "markdown": text}
    write_json(args.out or results_path("bench_sweep" + ("" if args.data == "mnist" else f"_{args.data}"), args.quick), result)
    return result


if __name__ == "__main__":
    main()
