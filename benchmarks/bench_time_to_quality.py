"""Time to quality: CPU-minutes each family needs to reach fixed FIDs on mnist or colours, beside the peers (issues 13, 24).

Contenders, each trained once for ``--minutes`` of this process's CPU time on one thread, with its EMA (or,
for pythae, plain) weights kept when the training time first reaches 0.5, 1, 2, 4, ... minutes:

* **diffvae vae / ddpm / ldm / flow** — ``train_run`` with the family's defaults and the compute-aware recipe that
  ``diffvae train --budget MINUTES`` picks (:mod:`diffvae.recipes`); snapshots from the engine
  (:mod:`diffvae.snapshots`; the latent model's minutes include its autoencoder stage).
* **diffusers recipe** — ``UNet2DModel`` + ``DDPMScheduler`` with the defaults of diffusers'
  ``train_unconditional.py`` example (``bench_recipe.train_diffusers``), sampled by ``DDPMPipeline`` on
  100 steps, as that example does (diffvae's DDPM samples with its own default, DPM-Solver++(2M) on 20 steps).
* **pythae VAE** — ``pythae.models.VAE`` with pythae's ResNet encoder/decoder for the shape
  (``pythae.models.nn.benchmarks.mnist`` for 1×28×28, ``.cifar`` for 3×32×32), latent 16, its trainer's defaults (Adam, lr 1e-4, batch 64),
  trained by a plain loop on its own loss (pythae's trainer is epoch-based and pickles its checkpoints);
  sampled from its N(0, I) prior. Skipped with a note if pythae is not installed (``pip install pythae``).

Every snapshot draws ``--samples`` images (seed 0) scored by the same code: FID in diffvae's mnist feature
space against the held-out split. The time to reach an FID is the first snapshot at or below it.

    python benchmarks/bench_time_to_quality.py --minutes 8
    python benchmarks/bench_time_to_quality.py --data colours --minutes 8
    python benchmarks/bench_time_to_quality.py --quick          # smoke setting (digits, seconds)
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_recipe import sample_diffusers, train_diffusers  # noqa: E402
from common import RESULTS_DIR, machine_info, machine_line, results_path, setup_threads, write_json  # noqa: E402

import diffvae.train  # noqa: E402
from diffvae.api import DataConfig, load, train_run  # noqa: E402
from diffvae.families import get_family  # noqa: E402
from diffvae.metrics.distances import fid  # noqa: E402
from diffvae.metrics.features import get_feature_extractor  # noqa: E402
from diffvae.presets import preset_config  # noqa: E402
from diffvae.recipes import apply, for_budget  # noqa: E402
from diffvae.runs import load_tensors, read_json, split_prefixed  # noqa: E402
from diffvae.train import TrainConfig  # noqa: E402

# FIDs each table reports the time to; each data set's feature space has its own scale (colours' FIDs run in thousands)
THRESHOLDS = {"mnist": (400.0, 200.0, 100.0, 50.0, 35.0), "colours": (20000.0, 10000.0, 5000.0, 2500.0, 1000.0)}
PYTHAE_NETS = {(1, 28, 28): "mnist", (3, 32, 32): "cifar"}  # pythae.models.nn.benchmarks.<module> for each shape
FIRST_SNAPSHOT_MINUTES = 0.5
SAMPLE_BATCH = 100


def marks(minutes: float) -> list[float]:
    """0.5, 1, 2, ... up to ``minutes`` (the last one always included)."""
    out, m = [], min(FIRST_SNAPSHOT_MINUTES, minutes / 2)
    while m < minutes:
        out.append(m)
        m *= 2
    return out + [minutes]


def score(images: torch.Tensor, extractor, real) -> float:
    return fid(real, extractor.features(images))


def in_batches(draw, n: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([draw(min(SAMPLE_BATCH, n - i)) for i in range(0, n, SAMPLE_BATCH)])


def diffvae_curve(family: str, dataset, minutes: float, out: Path, extractor, real, n: int) -> dict:
    """Train ``family`` as ``diffvae train --budget`` would (the budget's recipe over the shape's preset) with
    snapshots; FID of every snapshot's EMA weights (default sampler, seed 0)."""
    fam = get_family(family)
    config_class, _ = fam.load()
    recipe, info = for_budget(fam.recipes, minutes)
    model_values, train_values = apply(recipe, {}, dict(fam.train_defaults), set())
    model_config = preset_config(fam.spec(), config_class(**model_values), dataset.image_shape, given=set(model_values))
    train_config = TrainConfig(**train_values, budget_minutes=minutes, snapshot_first_minutes=marks(minutes)[0])
    run = out / family
    train_run(family, DataConfig(dataset.name), model_config, train_config, out=run, force=True, progress=False)
    model = load(run)
    points = []
    for entry in read_json(run / "snapshots" / "index.json")["snapshots"]:
        tensors, _ = load_tensors(run / "snapshots" / entry["file"])
        try:
            model.load_state_dict(split_prefixed(tensors, "ema"), strict=True)
        except RuntimeError:  # a first-stage snapshot (the latent model's autoencoder alone) cannot sample
            continue
        model.eval()
        g = torch.Generator().manual_seed(0)
        points.append({"minutes": entry["minutes"], "step": entry["step"],
                       "fid": score(in_batches(lambda k: model.sample(k, generator=g), n), extractor, real)})
        print(family, points[-1], flush=True)
    return {"points": points, "recipe": None if recipe is None else recipe.name}


def diffusers_curve(dataset, minutes: float, extractor, real, n: int, quick: bool) -> dict:
    trained = train_diffusers(dataset.train, minutes, quick, clock=time.process_time, snapshot_minutes=marks(minutes)[:-1])
    snapshots = trained["snapshots"] + [(trained["cpu_seconds"] / 60.0, trained["unet"])]
    points = []
    for at, unet in snapshots:
        images, _ = sample_diffusers(unet, trained["scheduler"], n, SAMPLE_BATCH, 0, "ddpm", 100)
        points.append({"minutes": at, "fid": score(images, extractor, real)})
        print("diffusers", points[-1], flush=True)
    return {"points": points, "recipe": f"batch {trained['batch']}, {trained['steps']} steps"}


def pythae_curve(dataset, minutes: float, extractor, real, n: int) -> dict:
    try:
        import importlib

        from pythae.models import VAE, VAEConfig
        from pythae.trainers import BaseTrainerConfig
    except ImportError:
        return {"points": [], "recipe": "not installed (pip install pythae)"}
    nets = PYTHAE_NETS.get(tuple(dataset.image_shape))
    if nets is None:
        shape = "×".join(str(int(s)) for s in dataset.image_shape)
        return {"points": [], "recipe": f"pythae's benchmark networks take 1×28×28 or 3×32×32 images, not {shape}"}
    module = importlib.import_module(f"pythae.models.nn.benchmarks.{nets}")
    encoder, decoder = getattr(module, f"Encoder_ResNet_VAE_{nets.upper()}"), getattr(module, f"Decoder_ResNet_AE_{nets.upper()}")
    defaults = BaseTrainerConfig()
    torch.manual_seed(0)
    config = VAEConfig(input_dim=tuple(dataset.image_shape), latent_dim=16)
    model = VAE(config, encoder=encoder(config), decoder=decoder(config))
    optimizer = torch.optim.Adam(model.parameters(), lr=defaults.learning_rate)
    data, batch = dataset.train.float() / 255.0, defaults.per_device_train_batch_size
    todo, snapshots, start, step = marks(minutes), [], time.process_time(), 0
    order = torch.Generator().manual_seed(0)
    while todo:
        for index in torch.randperm(data.shape[0], generator=order).split(batch):
            loss = model({"data": data[index]}).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if todo and time.process_time() - start >= 60.0 * todo[0]:
                snapshots.append((todo.pop(0), step, copy.deepcopy(model).eval()))
            if not todo:
                break
    points = []
    for at, at_step, snapshot in snapshots:
        g = torch.Generator().manual_seed(0)
        draw = lambda k: (snapshot.decoder(torch.randn(k, 16, generator=g))["reconstruction"].clamp(0, 1) * 255).round().to(torch.uint8)  # noqa: E731
        points.append({"minutes": at, "step": at_step, "fid": score(in_batches(draw, n), extractor, real)})
        print("pythae", points[-1], flush=True)
    return {"points": points, "recipe": f"lr {defaults.learning_rate:g}, batch {batch}, ResNet {nets.upper()} nets, latent 16"}


def time_to(points: list[dict], threshold: float) -> float | None:
    reached = [p["minutes"] for p in points if p["fid"] <= threshold]
    return min(reached) if reached else None


def tq_markdown(result: dict) -> str:
    at, thresholds = marks(result["minutes"]), THRESHOLDS[result.get("data", "mnist")]
    lines = [f"**Time to quality** — {result.get('data', 'mnist')}, each contender trained once for {result['minutes']:g} CPU-minutes on one thread; "
             f"FID of its weights when training first reached each time ({result['samples']} samples, seed 0, diffvae's "
             f"feature space, held-out split). {machine_line(result['machine'])}", "",
             "| contender | setting | " + " | ".join(f"FID @ {m:g} min" for m in at) + " |",
             "|---|---|" + "---:|" * len(at)]
    for name, curve in result["curves"].items():
        cells = []
        for m in at:
            near = [p for p in curve["points"] if abs(p["minutes"] - m) <= 0.25 * m]
            cells.append(f"{min(near, key=lambda p: abs(p['minutes'] - m))['fid']:.0f}" if near else "–")
        lines.append(f"| {name} | {curve['recipe'] or 'defaults'} | " + " | ".join(cells) + " |")
    lines += ["", "| contender | " + " | ".join(f"minutes to FID ≤ {t:g}" for t in thresholds) + " |",
              "|---|" + "---:|" * len(thresholds)]
    for name, curve in result["curves"].items():
        cells = [time_to(curve["points"], t) for t in thresholds]
        lines.append(f"| {name} | " + " | ".join("–" if not curve["points"] else f"> {result['minutes']:g}" if c is None
                                                else f"{c:.1f}" for c in cells) + " |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The section for RESULTS.md from this script's JSON."""
    return tq_markdown(result)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist", choices=sorted(THRESHOLDS))
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--contenders", default="vae,ddpm,ldm,flow,diffusers,pythae")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    setup_threads(1)
    diffvae.train.wall_clock = time.process_time  # budgets and snapshot times in CPU-minutes
    from diffvae.data import load_data

    data, minutes, n = ("digits", 0.1, 50) if args.quick else (args.data, args.minutes, args.samples)
    dataset = load_data(data)
    extractor = get_feature_extractor(dataset)
    real = extractor.features(dataset.test)
    out = Path(RESULTS_DIR) / ("time_to_quality_quick" if args.quick else f"time_to_quality_{data}")
    curves = {}
    for name in args.contenders.split(","):
        if name == "diffusers":
            curves["diffusers recipe"] = diffusers_curve(dataset, minutes, extractor, real, n, args.quick)
        elif name == "pythae":
            curves["pythae VAE"] = pythae_curve(dataset, minutes, extractor, real, n)
        else:
            curves[f"diffvae {name}"] = diffvae_curve(name, dataset, minutes, out, extractor, real, n)
    result = {"machine": machine_info(), "data": "mnist" if args.quick else data, "minutes": minutes, "samples": n, "curves": curves}
    result["markdown"] = tq_markdown(result)
    print(result["markdown"])
    write_json(args.out or results_path("bench_time_to_quality" + ("" if data == "mnist" or args.quick else f"_{data}"), args.quick), result)
    return result


if __name__ == "__main__":
    main()
