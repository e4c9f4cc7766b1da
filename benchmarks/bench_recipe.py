"""Quality per CPU-minute: diffvae's default DDPM recipe vs the diffusers example recipe, same minutes.

* **diffvae** — ``diffvae train ddpm --data mnist --budget MINUTES`` (``train_run`` with the family's
  defaults: ``DDPMConfig()``, AdamW lr 1e-3, batch 64, warm-up + cosine fitted to the budget, EMA,
  bf16 autocast where the CPU has it), sampled with its default sampler (DPM-Solver++(2M), 20 steps).
* **diffusers** — the defaults of diffusers' ``examples/unconditional_image_generation/train_unconditional.py``
  re-created with diffusers' own components (no code copied): ``DDPMScheduler(num_train_timesteps=1000,
  beta_schedule="linear", prediction_type="epsilon")``, AdamW(lr 1e-4, betas (0.95, 0.999), weight decay
  1e-6, eps 1e-8), ``get_scheduler("cosine", num_warmup_steps=500)``, batch 16, fp32 (``mixed_precision="no"``),
  gradient clipping at 1.0, ``EMAModel(decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3/4)`` (the
  example's EMA settings; its README turns ``--use_ema`` on), no flips or crops (their defaults are off),
  images scaled to [-1, 1] as its ``Normalize([0.5], [0.5])``. The example's 6-level 128–512-wide UNet is
  for 64×64 RGB and does not fit 28×28 (not divisible by 32) nor a CPU-minute budget: the network is
  ``UNet2DModel`` with the FLOPs of diffvae's default UNet (``bench_train.diffusers_unet``), so the two
  sides differ in recipe only. The example sets its cosine length from the epochs; here it is the number
  of steps that fit the budget, from the step rate of its first steps (as diffvae's engine does).
  Sampled with its default ``DDPMPipeline`` (DDPMScheduler, 1000 steps) where affordable (``--ddpm-1000``),
  and always with ``DPMSolverMultistepScheduler`` at 20 steps, the same fast sampler as diffvae's.

Both train for the same wall-clock minutes on the same threads (their CPU seconds are recorded), draw the
same number of samples from the same seed, and are scored by FID in the same feature space (diffvae's
mnist feature network, against the held-out split). Target (issue 8): diffvae FID ≤ 0.7× diffusers'.

    python benchmarks/bench_recipe.py                 # 4 minutes each (~10 minutes in all on 2 cores)
    python benchmarks/bench_recipe.py --minutes 2 --ddpm-1000
    python benchmarks/bench_recipe.py --quick         # smoke setting (digits, seconds)
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import diffusers_unet  # noqa: E402
from common import RESULTS_DIR, count_flops, machine_info, machine_line, results_path, setup_threads, write_json  # noqa: E402

from diffvae.api import DataConfig, load, train_run  # noqa: E402
from diffvae.diffusion.model import DDPMConfig  # noqa: E402
from diffvae.families import get_family  # noqa: E402
from diffvae.images import to_signed  # noqa: E402
from diffvae.metrics.features import get_feature_extractor  # noqa: E402
from diffvae.metrics.distances import fid  # noqa: E402
from diffvae.train import TrainConfig, resolve_device, resolve_precision  # noqa: E402

TARGET_RATIO = 0.7  # diffvae FID / diffusers FID (issue 8)


# The defaults of diffusers' examples/unconditional_image_generation/train_unconditional.py (checked at
# huggingface/diffusers 58eb52c, August 2026).
DIFFUSERS_RECIPE = {
    "learning_rate": 1e-4, "adam_betas": (0.95, 0.999), "adam_weight_decay": 1e-6, "adam_epsilon": 1e-8,
    "lr_scheduler": "cosine", "lr_warmup_steps": 500, "train_batch_size": 16, "ddpm_num_steps": 1000,
    "ddpm_beta_schedule": "linear", "prediction_type": "epsilon", "max_grad_norm": 1.0, "mixed_precision": "no",
    "ema_max_decay": 0.9999, "ema_inv_gamma": 1.0, "ema_power": 0.75, "ddpm_num_inference_steps": 1000,
}
RATE_FROM, RATE_STEPS = 3, 20  # the steps timed (after 3 slow first ones) to size the cosine schedule


# ----------------------------------------------------------------------------- the two recipes

def train_diffvae(out: Path, dataset_spec: str, minutes: float, quick: bool) -> dict:
    """``diffvae train ddpm --data SPEC --budget MINUTES`` with the family's defaults."""
    model_config = DDPMConfig(channels=16, timesteps=100) if quick else DDPMConfig()
    train_config = TrainConfig(**get_family("ddpm").train_defaults, budget_minutes=minutes)
    wall, cpu = time.perf_counter(), time.process_time()
    train_run("ddpm", DataConfig(dataset_spec), model_config, train_config, out=out, force=True, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    model = load(out)
    dtype = resolve_precision(train_config.precision, resolve_device(train_config.device))
    return {"model": model, "steps": model.trained_steps, "seconds": wall, "cpu_seconds": cpu, "batch": train_config.batch_size,
            "precision": f"{'fp32' if dtype is None else 'bf16'} ({train_config.precision})"}


def train_diffusers(images_uint8: torch.Tensor, minutes: float, quick: bool, seed: int = 0, clock=time.perf_counter,
                    snapshot_minutes: tuple[float, ...] = ()) -> dict:
    """The diffusers example's recipe (module docstring) for ``minutes`` of ``clock`` time (wall by default);
    returns the EMA ``UNet2DModel``, its noise scheduler, steps and seconds, and ``snapshots``: (minutes, EMA
    UNet) when the training time first reaches each of ``snapshot_minutes``."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    recipe = DIFFUSERS_RECIPE
    budget = minutes * 60.0
    wall, cpu, start = time.perf_counter(), time.process_time(), clock()
    marks, snapshots = sorted(snapshot_minutes), []
    torch.manual_seed(seed)
    channels, size = images_uint8.shape[1], images_uint8.shape[2]
    unet = diffusers_unet((DDPMConfig(channels=16) if quick else DDPMConfig()).unet_config(), channels, size)
    noise_scheduler = DDPMScheduler(num_train_timesteps=recipe["ddpm_num_steps"], beta_schedule=recipe["ddpm_beta_schedule"],
                                    prediction_type=recipe["prediction_type"])
    data = to_signed(images_uint8)
    batch_size = recipe["train_batch_size"]
    order = torch.Generator().manual_seed(seed)

    def make_optimizer(params):
        return torch.optim.AdamW(params, lr=recipe["learning_rate"], betas=recipe["adam_betas"],
                                 weight_decay=recipe["adam_weight_decay"], eps=recipe["adam_epsilon"])

    def batches():
        while True:  # shuffled epochs, as DataLoader(shuffle=True)
            for index in torch.randperm(data.shape[0], generator=order).split(batch_size):
                yield data[index]

    def train_step(model, optimizer, clean) -> torch.Tensor:
        noise = torch.randn(clean.shape)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],)).long()
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        loss = F.mse_loss(model(noisy, timesteps).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    optimizer = make_optimizer(unet.parameters())
    ema = EMAModel(unet.parameters(), decay=recipe["ema_max_decay"], use_ema_warmup=True, inv_gamma=recipe["ema_inv_gamma"],
                   power=recipe["ema_power"])

    def cosine(total_steps: int, last_epoch: int = -1):
        return get_scheduler(recipe["lr_scheduler"], optimizer=optimizer, num_warmup_steps=recipe["lr_warmup_steps"],
                             num_training_steps=total_steps, last_epoch=last_epoch)

    # The example sizes its cosine from the epochs; here from the steps that fit the budget. Until the rate
    # is measured (RATE_STEPS steps after RATE_FROM) the schedule is provisional: in the warm-up the
    # learning rate does not depend on the length.
    lr_scheduler = cosine(10**9)
    total_steps, rate_start = None, None
    unet.train()
    step, loss = 0, torch.tensor(float("nan"))
    stream = batches()
    while (total_steps is None or step < total_steps) and clock() - start < budget:  # a hard limit
        loss = train_step(unet, optimizer, next(stream))
        lr_scheduler.step()
        ema.step(unet.parameters())
        step += 1
        if marks and clock() - start >= 60.0 * marks[0]:
            snapshots.append((marks.pop(0), _ema_copy(unet, ema)))
        if step == RATE_FROM:
            rate_start = clock()
        elif total_steps is None and step == RATE_FROM + RATE_STEPS:
            seconds_per_step = (clock() - rate_start) / RATE_STEPS
            total_steps = step + max(0, int((budget - (clock() - start)) / seconds_per_step))
            lr_scheduler = cosine(total_steps, last_epoch=step - 1)
    return {"unet": _ema_copy(unet, ema), "scheduler": noise_scheduler, "steps": step, "planned_steps": total_steps or step,
            "snapshots": snapshots,
            "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu, "batch": batch_size,
            "precision": "fp32", "final_loss": float(loss), "ema_decay": float(ema.cur_decay_value or 0.0)}


def _ema_copy(unet, ema):
    """A copy of ``unet`` holding the EMA weights (diffusers' ``EMAModel.copy_to``), in eval mode."""
    ema_unet = copy.deepcopy(unet)
    ema.copy_to(ema_unet.parameters())
    return ema_unet.eval()


# ----------------------------------------------------------------------------- sampling

def sample_diffvae(model, n: int, batch: int, seed: int, sampler: str, steps: int) -> tuple[torch.Tensor, float]:
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    with torch.inference_mode():
        samples = torch.cat([model.sample(min(batch, n - i), generator=generator, sampler=sampler, steps=steps)
                             for i in range(0, n, batch)])
    return samples, time.perf_counter() - start


def sample_diffusers(unet, noise_scheduler, n: int, batch: int, seed: int, sampler: str, steps: int) -> tuple[torch.Tensor, float]:
    """uint8 samples from ``DDPMPipeline`` with the training scheduler (``ddpm``) or
    ``DPMSolverMultistepScheduler`` from its config (``dpm++2m``), converted as the pipeline's PIL output."""
    from diffusers import DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler

    scheduler_class = {"ddpm": DDPMScheduler, "dpm++2m": DPMSolverMultistepScheduler}[sampler]
    pipeline = DDPMPipeline(unet=unet, scheduler=scheduler_class.from_config(noise_scheduler.config))
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    chunks = []
    with torch.inference_mode():
        for i in range(0, n, batch):
            images = pipeline(batch_size=min(batch, n - i), generator=generator, num_inference_steps=steps, output_type="pt").images
            chunks.append((images * 255).round().to(torch.uint8))
    return torch.cat(chunks), time.perf_counter() - start


# ----------------------------------------------------------------------------- the benchmark

def measure(args: argparse.Namespace) -> dict:
    from diffvae.data import load_data

    spec = "digits" if args.quick else "mnist"
    dataset = load_data(spec)
    extractor = get_feature_extractor(dataset, steps=20) if args.quick else get_feature_extractor(dataset)
    real_features = extractor.features(dataset.test)
    results: dict = {"machine": machine_info(), "data": spec, "minutes": args.minutes, "samples": args.samples,
                     "seed": args.seed, "feature_space": extractor.name,
                     "reference": f"held-out split ({dataset.test.shape[0]} images)", "diffusers_recipe": DIFFUSERS_RECIPE}
    out = Path(args.workdir) / ("recipe_diffvae_quick" if args.quick else "recipe_diffvae")
    print(f"training diffvae for {args.minutes} min", flush=True)
    ours = train_diffvae(out, spec, args.minutes, args.quick)
    print(f"training the diffusers recipe for {args.minutes} min", flush=True)
    theirs = train_diffusers(dataset.train, args.minutes, args.quick, args.seed)
    x = torch.zeros(1, *dataset.image_shape)
    with torch.inference_mode():
        gflops = {"diffvae": count_flops(lambda: ours["model"].denoiser.unet(x, torch.zeros(1, dtype=torch.long))) / 1e9,
                  "diffusers": count_flops(lambda: theirs["unet"](x, torch.zeros(1, dtype=torch.long))) / 1e9}
    results["training"] = {
        name: {k: v for k, v in side.items() if k not in ("model", "unet", "scheduler")} | {"forward_gflops_per_image": gflops[name]}
        for name, side in (("diffvae", ours), ("diffusers", theirs))}
    settings = [("dpm++2m", 5 if args.quick else 20)]
    if args.ddpm_1000:
        settings.append(("ddpm", 20 if args.quick else 1000))
    rows = []
    for sampler, steps in settings:
        for name in ("diffvae", "diffusers"):
            if name == "diffvae":
                samples, seconds = sample_diffvae(ours["model"], args.samples, args.batch, args.seed, sampler, steps)
            else:
                samples, seconds = sample_diffusers(theirs["unet"], theirs["scheduler"], args.samples, args.batch, args.seed,
                                                    sampler, steps)
            rows.append({"recipe": name, "sampler": sampler, "steps": steps, "fid": fid(real_features, extractor.features(samples)),
                         "ms_per_sample": 1e3 * seconds / args.samples})
            print(f"{name} {sampler} {steps}: FID {rows[-1]['fid']:.2f}", flush=True)
    results["rows"] = rows
    pairs = {}
    for sampler, steps in settings:
        ours_fid, theirs_fid = (next(r["fid"] for r in rows if r["recipe"] == name and r["sampler"] == sampler)
                                for name in ("diffvae", "diffusers"))
        pairs[f"{sampler}:{steps}"] = {"ratio": ours_fid / theirs_fid, "met": ours_fid <= TARGET_RATIO * theirs_fid}
    results["target"] = pairs
    return results


def markdown(results: dict) -> str:
    train = results["training"]
    lines = [f"**Quality per CPU-minute** — {results['minutes']} min of training each on {results['data']}, "
             f"{results['samples']} samples per row (seed {results['seed']}), FID in {results['feature_space']} against the "
             f"{results['reference']}. {machine_line(results['machine'])}.", "",
             "| recipe | batch | precision | steps in budget | wall s | CPU s | forward GFLOP/image |", "|---|---:|---|---:|---:|---:|---:|"]
    for name, t in train.items():
        lines.append(f"| {name} | {t['batch']} | {t['precision']} | {t['steps']} | {t['seconds']:.0f} | {t['cpu_seconds']:.0f} "
                     f"| {t['forward_gflops_per_image']:.3f} |")
    lines += ["", "| recipe | sampler | steps | FID | ms/sample |", "|---|---|---:|---:|---:|"]
    for row in results["rows"]:
        lines.append(f"| {row['recipe']} | {row['sampler']} | {row['steps']} | {row['fid']:.2f} | {row['ms_per_sample']:.1f} |")
    lines.append("")
    for key, pair in results["target"].items():
        lines.append(f"- Target diffvae FID ≤ {TARGET_RATIO}× diffusers' at {key}: **{'met' if pair['met'] else 'missed'}** "
                     f"(ratio {pair['ratio']:.2f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="wall-clock training minutes for each recipe")
    parser.add_argument("--samples", type=int, default=200, help="samples per recipe and sampler")
    parser.add_argument("--batch", type=int, default=100, help="samples per sampling call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ddpm-1000", action="store_true",
                        help="also sample both at the diffusers default, ancestral DDPM with all 1000 steps (slow)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke setting (digits, 3 s of training each, 16 samples)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--workdir", default=RESULTS_DIR, help="where training runs go (default benchmarks/results)")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/bench_recipe[_quick].json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.samples, args.batch = 0.05, 16, 8
    if args.samples < 2 or not args.minutes > 0:
        parser.error("--samples must be at least 2 and --minutes positive")
    setup_threads(args.threads)
    results = measure(args)
    results["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
    print(markdown(results))
    out = args.out or results_path("bench_recipe", args.quick)
    write_json(out, results)
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
