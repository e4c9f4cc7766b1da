"""DDIM variants on a trained pixel DDPM: x̂₀ clipping with and without re-deriving ε̂ from the clipped
x̂₀ (GLIDE / diffusers' ``use_clipped_model_output``), and "leading" vs "trailing" timestep spacing
(Lin et al. 2024: leading grids never start at pure noise). FID in diffvae features against the held-out
split, the same x_T for every variant (issue 12, item 4).

    python benchmarks/bench_ddim_variants.py --run report/runs/ddpm --samples 500
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import autocast_context, machine_info, machine_line, results_path, setup_threads, write_json  # noqa: E402

from diffvae.api import load, run_data  # noqa: E402
from diffvae.diffusion import samplers  # noqa: E402
from diffvae.images import to_uint8  # noqa: E402
from diffvae.metrics.features import get_feature_extractor  # noqa: E402
from diffvae.metrics.distances import fid  # noqa: E402

VARIANTS = [(spacing, rederive) for spacing in ("leading", "trailing") for rederive in (False, True)]


def generate(model, x_T: torch.Tensor, steps: int, spacing: str, rederive: bool, batch: int) -> torch.Tensor:
    den = model.denoiser
    out = []
    with torch.inference_mode(), autocast_context(torch.bfloat16):
        for i in range(0, x_T.shape[0], batch):
            chunk = x_T[i:i + batch]
            x0 = samplers.sample(den.eps_fn, tuple(chunk.shape), den.schedule, "ddim", steps, x_T=chunk, clip_x0=True,
                                 spacing=spacing, rederive_eps=rederive)
            out.append(to_uint8(x0.float()))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="smoke setting (few samples, 5 steps)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.steps = 20, [5]
    setup_threads(args.threads)
    model = load(args.run, device="cpu")
    dataset = run_data(model)
    extractor = get_feature_extractor(dataset)
    real = extractor.features(dataset.test)
    x_T = torch.randn(args.samples, *model.denoiser.shape, generator=torch.Generator().manual_seed(0))
    rows = []
    for steps in args.steps:
        for spacing, rederive in VARIANTS:
            t0 = time.perf_counter()
            images = generate(model, x_T, steps, spacing, rederive, args.batch)
            rows.append({"steps": steps, "spacing": spacing, "rederive_eps": rederive, "samples": args.samples,
                         "fid": fid(real, extractor.features(images)), "seconds": time.perf_counter() - t0})
            print(rows[-1], flush=True)
    info = machine_info()
    lines = [f"**DDIM variants** — run `{args.run}` (schedule {model.config.schedule}, T={model.denoiser.schedule.T}), "
             f"{args.samples} samples from the same x_T, network in bf16, FID in diffvae features. {machine_line(info)}", "",
             "| steps | spacing | ε̂ from clipped x̂₀ | FID |", "|---:|---|---|---:|"]
    lines += [f"| {r['steps']} | {r['spacing']} | {'yes' if r['rederive_eps'] else 'no'} | {r['fid']:.1f} |" for r in rows]
    print("\n".join(lines))
    result = {"machine": info, "rows": rows, "markdown": "\n".join(lines)}
    write_json(args.out or results_path("bench_ddim_variants", False), result)
    return result


def markdown(result: dict) -> str:
    """The section for RESULTS.md from this script's JSON."""
    return result["markdown"]


if __name__ == "__main__":
    main()
