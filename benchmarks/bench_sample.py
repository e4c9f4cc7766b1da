"""Sampling speed: ms/sample for each sampler at several NFE, and VAE decode throughput.

* **Diffusion samplers.** ``DDPM(DDPMConfig())`` (pixel space, 28×28) and ``LatentDiffusion(LDMConfig())``
  (its default autoencoder and latent denoiser; the one decoder pass is included) with random weights —
  the time of a sampler does not depend on what the weights are. Each setting is one call of the
  family's ``sample(n)`` for a batch of ``--batch`` samples under ``torch.inference_mode``, in fp32 as
  the library samples; the default sampler (dpm++2m, 20 steps) is also timed under bf16 autocast.
  ms/sample = seconds of the call / batch; the best of ``--repeats`` calls (one call for chains over 20
  steps) after a warm-up call per model and precision.
* **VAE decode.** ``VAE(VAEConfig()).decode(z)`` for z ~ N(0, I) at a large batch (default 10,000), at
  the library's sampling chunk (``vae.model.DECODE_BATCH``) and at 256, fp32 and bf16 autocast,
  inference_mode: images/s (target ≥ 20,000), in the library's NCHW layout and, for comparison, with the
  weights in channels_last; and the top ops of the library's bf16 decode.

    python benchmarks/bench_sample.py            # full run (~2-3 minutes on 2 idle cores)
    python benchmarks/bench_sample.py --quick    # smoke setting (a few seconds)
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (CLOCKS, autocast_context, check_clock, conv_flops, count_flops, machine_info, machine_line, profile_markdown,  # noqa: E402
                    profile_top_ops, results_path, setup_threads, time_calls, write_json)

from diffvae.diffusion.model import DDPM, DDPMConfig  # noqa: E402
from diffvae.latent.model import LatentDiffusion, LDMConfig  # noqa: E402
from diffvae.vae.model import DECODE_BATCH, VAE, VAEConfig  # noqa: E402

IMAGE_SHAPE = (1, 28, 28)
VAE_DECODE_TARGET = 20_000  # images/s (issue 8)
DEFAULT_NFE = {"ddim": (10, 20, 50, 100), "dpm++2m": (10, 20, 50, 100), "ddpm": (10, 20, 50, 100, 1000)}


def diffusion_models(quick: bool) -> dict[str, torch.nn.Module]:
    """The default DDPM and LDM with random weights (a small DDPM and LDM in smoke runs)."""
    torch.manual_seed(0)
    if quick:
        ddpm = DDPM(DDPMConfig(channels=16, timesteps=100), IMAGE_SHAPE)
        ldm = LatentDiffusion(LDMConfig(ae_width=16, channels=16, timesteps=100, latent_scale=1.0), IMAGE_SHAPE)
    else:
        ddpm = DDPM(DDPMConfig(), IMAGE_SHAPE)
        ldm = LatentDiffusion(LDMConfig(latent_scale=1.0), IMAGE_SHAPE)
    for model in (ddpm, ldm):  # a non-zero output layer, as after training (timing does not depend on it)
        torch.nn.init.normal_(model.denoiser.unet.conv_out.weight, std=1e-3)
    return {"ddpm": ddpm.eval(), "ldm": ldm.eval()}


def denoiser_gflops(model: torch.nn.Module, batch: int) -> float:
    """GFLOP of one denoiser evaluation per sample."""
    shape = model.denoiser.shape
    x, t = torch.randn(batch, *shape), torch.zeros(batch, dtype=torch.long)
    with torch.inference_mode():
        return count_flops(lambda: model.denoiser.unet(x, t)) / batch / 1e9


def time_sampling(model, batch: int, sampler: str, steps: int, dtype: torch.dtype, repeats: int, clock) -> dict:
    """ms/sample of ``model.sample(batch)``: best and median of ``repeats`` calls (the caller warms up)."""
    generator = torch.Generator()

    def call() -> None:
        generator.manual_seed(0)
        with torch.inference_mode(), autocast_context(dtype):
            model.sample(batch, generator=generator, sampler=sampler, steps=steps)

    timing = time_calls(call, warmup=0, repeats=repeats, clock=clock)
    return {"ms_per_sample": 1e3 * timing.best / batch, "ms_per_sample_median": 1e3 * timing.median / batch,
            "nfe": int(model.nfe(sampler=sampler, steps=steps)), "repeats": repeats}


def repeats_for(steps: int, repeats: int) -> int:
    """Short chains are timed ``repeats`` times; chains over 20 steps once (they are many calls already)."""
    return repeats if steps <= 20 else 1


def measure_samplers(args: argparse.Namespace, clock) -> dict:
    out = {}
    for name, model in diffusion_models(args.quick).items():
        T = model.denoiser.schedule.T
        for precision in (torch.float32, torch.bfloat16):  # warm-up: allocations, oneDNN kernel selection
            time_sampling(model, args.batch, "ddim", min(10, T), precision, 1, clock)
        rows = []
        for sampler, nfes in args.nfe.items():
            for steps in nfes:
                if steps > T or (name == "ddpm" and sampler == "ddpm" and steps >= 1000 and args.skip_pixel_ddpm_1000):
                    continue
                row = {"sampler": sampler, "steps": steps, "precision": "fp32",
                       **time_sampling(model, args.batch, sampler, steps, torch.float32, repeats_for(steps, args.repeats), clock)}
                rows.append(row)
                print(f"{name} {sampler} {steps}: {row['ms_per_sample']:.2f} ms/sample", flush=True)
        default = (model.config.sampler, model.config.sample_steps)
        rows.append({"sampler": default[0], "steps": default[1], "precision": "bf16",
                     **time_sampling(model, args.batch, *default, torch.bfloat16, repeats_for(default[1], args.repeats), clock)})
        out[name] = {"rows": rows, "gflops_per_nfe": denoiser_gflops(model, min(args.batch, 8)), "timesteps": T,
                     "latent_shape": list(model.denoiser.shape)}
    return out


def measure_vae_decode(args: argparse.Namespace, clock) -> dict:
    """images/s of ``VAE.decode`` at a large batch, the library's chunk and a cache-sized chunk, fp32 and
    bf16 autocast; the library's layout (NCHW) and, for comparison, the same weights in channels_last;
    and where the time of the library's bf16 decode goes (top ops)."""
    torch.manual_seed(0)
    vae = VAE(VAEConfig(width=16) if args.quick else VAEConfig(), IMAGE_SHAPE).eval()
    vae_channels_last = copy.deepcopy(vae).to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    rows = []
    batches = sorted({args.vae_batch, min(DECODE_BATCH, args.vae_batch), min(256, args.vae_batch)}, reverse=True)
    for batch in batches:
        z = torch.randn(batch, vae.config.latent_dim, generator=generator)
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            for layout, model in (("NCHW (library)", vae), ("channels_last", vae_channels_last)):
                def call(model=model, dtype=dtype, z=z) -> None:
                    with torch.inference_mode(), autocast_context(dtype):
                        model.decode(z)

                timing = time_calls(call, warmup=1, repeats=args.repeats + 1, clock=clock)
                rows.append({"batch": batch, "precision": precision, "layout": layout, "images_per_s": batch / timing.best,
                             "images_per_s_median": batch / timing.median})
    z = torch.randn(8, vae.config.latent_dim)
    with torch.inference_mode():
        gflops = count_flops(lambda: vae.decode(z)) / 8 / 1e9
    chunk = torch.randn(min(DECODE_BATCH, args.vae_batch), vae.config.latent_dim, generator=generator)

    def library_bf16() -> None:
        with torch.inference_mode(), autocast_context(torch.bfloat16):
            vae.decode(chunk)

    profile = profile_top_ops(library_bf16, calls=3, rows=6)
    profile["batch"] = chunk.shape[0]
    profile["conv_gflops_per_s"] = conv_flops(library_bf16) / 1e9 / (profile["conv_ms_per_call"] / 1e3)
    return {"rows": rows, "gflops_per_image": gflops, "profile": profile,
            "decoder": str(vae.decoder).replace("\n", " ")}


def measure(args: argparse.Namespace) -> dict:
    clock = CLOCKS[args.clock]
    results = {"machine": machine_info(), "batch": args.batch}
    results["samplers"] = measure_samplers(args, clock)
    results["vae_decode"] = measure_vae_decode(args, clock)
    return results


def markdown(results: dict) -> str:
    settings = results["settings"]
    lines = [f"**Sampling speed** — random-weight `DDPMConfig()` and `LDMConfig()` models, batch {results['batch']} per "
             f"`sample()` call, inference_mode, after a warm-up call; best of {settings['repeats']} calls up to 20 steps, one call above. "
             f"{settings['clock']} clock. {machine_line(results['machine'])}.", ""]
    for name, block in results["samplers"].items():
        lines += [f"{name} (denoiser {block['gflops_per_nfe']:.3f} GFLOP per evaluation, x_T {tuple(block['latent_shape'])}"
                  f"{', one decoder pass included' if name == 'ldm' else ''}):", "",
                  "| sampler | steps | NFE | precision | ms/sample | ms/sample (median) | ms per NFE | achieved GFLOP/s |",
                  "|---|---:|---:|---|---:|---:|---:|---:|"]
        for row in block["rows"]:
            per_nfe = row["ms_per_sample"] / row["nfe"]
            lines.append(f"| {row['sampler']} | {row['steps']} | {row['nfe']} | {row['precision']} | {row['ms_per_sample']:.2f} "
                         f"| {row['ms_per_sample_median']:.2f} | {per_nfe:.3f} | {block['gflops_per_nfe'] / per_nfe * 1e3:.0f} |")
        lines.append("")
    vae = results["vae_decode"]
    library = [r for r in vae["rows"] if r["layout"].endswith("(library)")]
    best = max(r["images_per_s"] for r in library)
    verdict = "met" if best >= VAE_DECODE_TARGET else "missed"
    lines += [f"**VAE decode** (`VAEConfig()`: linear to 128×7×7, two stride-2 3×3 transposed convolutions; "
              f"{vae['gflops_per_image'] * 1e3:.1f} MFLOP/image, inference_mode) — target ≥ {VAE_DECODE_TARGET:,} images/s: "
              f"**{verdict}** (best {best:,.0f} images/s in the library's NCHW layout)", "",
              "| batch | precision | layout | images/s (best) | images/s (median) | GFLOP/s |", "|---:|---|---|---:|---:|---:|"]
    for row in vae["rows"]:
        lines.append(f"| {row['batch']} | {row['precision']} | {row['layout']} | {row['images_per_s']:,.0f} "
                     f"| {row['images_per_s_median']:,.0f} | {row['images_per_s'] * vae['gflops_per_image']:.0f} |")
    lines += ["", profile_markdown(vae["profile"], f"VAE decode in the library's layout, bf16, batch {vae['profile']['batch']}"),
              "", f"The transposed convolutions run at {vae['profile'].get('conv_gflops_per_s', float('nan')):.0f} GFLOP/s inside "
              "the bf16 decode (compare the 3×3 conv peak in the machine table)."]
    by = {(r["batch"], r["precision"], r["layout"]): r["images_per_s"] for r in vae["rows"]}
    batches = sorted({r["batch"] for r in vae["rows"]})
    if len(batches) > 1:
        small, large = batches[0], batches[-1]
        lines[-1] += (f" Per image, batch {large:,} is {by[(small, 'bf16', 'NCHW (library)')] / by[(large, 'bf16', 'NCHW (library)')]:.2f}× "
                      f"slower than batch {small:,} (bf16), likely as the activations outgrow the cache. Channels_last weights change "
                      f"the bf16 rate by {100 * (by[(small, 'bf16', 'channels_last')] / by[(small, 'bf16', 'NCHW (library)')] - 1):+.0f}% "
                      f"at batch {small:,}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke setting (small models, batch 2, few steps)")
    parser.add_argument("--batch", type=int, default=16, help="samples per sample() call")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per setting up to 20 steps (best is reported)")
    parser.add_argument("--vae-batch", type=int, default=10_000, help="latents per VAE decode call")
    parser.add_argument("--skip-pixel-ddpm-1000", action="store_true",
                        help="leave out the pixel DDPM's 1000-step chain (bench_quality.py times it on a trained model)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/bench_sample[_quick].json)")
    args = parser.parse_args(argv)
    args.nfe = {k: list(v) for k, v in DEFAULT_NFE.items()}
    if args.quick:
        args.batch, args.repeats, args.vae_batch = 2, 1, 2000
        args.nfe = {"ddim": [2, 4], "dpm++2m": [2, 4], "ddpm": [2, 4]}
    check_clock(args.clock, args.threads)
    setup_threads(args.threads)
    results = measure(args)
    results["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
    print(markdown(results))
    out = args.out or results_path("bench_sample", args.quick)
    write_json(out, results)
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
