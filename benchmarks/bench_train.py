"""Training throughput of diffvae's default UNet vs diffusers' ``UNet2DModel`` at the same FLOPs.

Both networks get the same input (28×28, 1 channel: the mnist default), batch, loss (MSE to a noise
target), AdamW and precision (fp32, or bf16 autocast). The diffusers model is configured with the same
widths, depth and attention placement, so the FLOPs per image are equal (checked and printed).
Rounds alternate between the two models and the best round of each is reported, which keeps other
processes on a shared machine from favouring either side.

    python benchmarks/bench_train.py            # full run (~1-2 minutes on 2 idle cores)
    python benchmarks/bench_train.py --quick    # smoke setting (< 20 s)
    python benchmarks/bench_train.py --threads 1 --clock cpu   # per-core numbers on a busy machine
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CLOCKS, autocast_context, count_flops, machine_info, peak_gflops, write_json  # noqa: E402

from diffvae.nn.unet import UNet, UNetConfig  # noqa: E402

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def diffusers_unet(config: UNetConfig, channels: int, image_size: int) -> torch.nn.Module:
    """``diffusers.UNet2DModel`` with the same widths, depth, norm groups and attention levels as ``config``."""
    from diffusers import UNet2DModel

    levels = len(config.channel_mult)
    attends = [config.attends_at(level) for level in range(levels)]
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=config.num_res_blocks,
        block_out_channels=tuple(config.channels * m for m in config.channel_mult),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attends),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)),
        norm_num_groups=config.groups,
        attention_head_dim=64,
        dropout=config.dropout,
    )


def training_step(model: torch.nn.Module, batch: int, channels: int, image_size: int, dtype: torch.dtype,
                  fused_adamw: bool) -> Callable[[], None]:
    """A closure running one optimisation step (forward, MSE loss, backward, AdamW) on a fixed random batch."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, image_size, image_size, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    target = torch.randn(batch, channels, image_size, image_size, generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True if fused_adamw else None)
    model.train()

    def step() -> None:
        with autocast_context(dtype):
            out = model(x, t)
            out = out.sample if hasattr(out, "sample") else out
            loss = F.mse_loss(out.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def build(name: str, config: UNetConfig, channels: int, image_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "diffvae":
        model = UNet(config, channels, image_size=image_size)
        # The zero-initialised output conv would make every other gradient zero; training never stays there.
        torch.nn.init.normal_(model.conv_out.weight, std=1e-3)
        return model
    return diffusers_unet(config, channels, image_size)


def measure(args: argparse.Namespace) -> dict:
    config = UNetConfig(channels=32) if args.quick else UNetConfig()
    channels, size, batch = 1, 28, args.batch
    names = ["diffvae", "diffusers"]
    clock = CLOCKS[args.clock]
    flops_per_image = {}
    for name in names:
        model = build(name, config, channels, size)
        step = training_step(model, batch, channels, size, torch.float32, fused_adamw=False)
        flops_per_image[name] = count_flops(step) / batch
    results: dict = {"machine": machine_info(), "batch": batch, "image_shape": [channels, size, size],
                     "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()},
                     "gflops_per_image": {k: v / 1e9 for k, v in flops_per_image.items()}, "precisions": {}}
    for precision in args.precisions:
        dtype = PRECISIONS[precision]
        peak = peak_gflops(dtype, quick=args.quick, clock=clock)
        steps = {}
        for name in names:
            model = build(name, config, channels, size)
            steps[name] = training_step(model, batch, channels, size, dtype, fused_adamw=name == "diffvae")
            for _ in range(args.warmup):
                steps[name]()
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name in names:
                start = clock()
                for _ in range(args.steps):
                    steps[name]()
                times[name].append((clock() - start) / args.steps)
        # Measured again after the rounds: on a shared machine either measurement can be disturbed.
        peak_after = peak_gflops(dtype, quick=args.quick, clock=clock)
        peak = {kind: max(peak[kind], peak_after[kind]) for kind in peak}
        row = {"peak_gflops": peak}
        for name in names:
            ordered = sorted(times[name])
            best, median = ordered[0], ordered[len(ordered) // 2]
            images_per_s = batch / best
            achieved = images_per_s * flops_per_image[name] / 1e9
            row[name] = {"images_per_s": images_per_s, "images_per_s_median": batch / median,
                         "gflops_per_s": achieved, "share_of_peak": achieved / peak["peak"]}
        row["speedup"] = row["diffvae"]["images_per_s"] / row["diffusers"]["images_per_s"]
        results["precisions"][precision] = row
    return results


def markdown(results: dict) -> str:
    gflops = results["gflops_per_image"]
    lines = [
        f"Training throughput, batch {results['batch']}, image {tuple(results['image_shape'])}, "
        f"{results['machine']['torch_threads']} threads, {results['settings']['clock']} clock, {results['machine']['cpu']}, "
        f"load average at start {results['machine']['load_average_1min']}",
        "",
        "| precision | model | GFLOP/image | images/s (best) | images/s (median) | GFLOP/s | % of peak | speedup |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for precision, row in results["precisions"].items():
        for name in ("diffvae", "diffusers"):
            r = row[name]
            speedup = f"{row['speedup']:.2f}x" if name == "diffvae" else ""
            lines.append(
                f"| {precision} | {name} | {gflops[name]:.2f} | {r['images_per_s']:.1f} | {r['images_per_s_median']:.1f} "
                f"| {r['gflops_per_s']:.0f} | {100 * r['share_of_peak']:.0f}% | {speedup} |"
            )
    lines.append("")
    for precision, row in results["precisions"].items():
        p = row["peak_gflops"]
        lines.append(f"{precision} peak: matmul {p['matmul']:.0f} GFLOP/s, 3x3 conv {p['conv']:.0f} GFLOP/s (using the larger)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke setting (32 base channels, batch 4, one round)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per model (best is reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (needs --threads 1; immune to other processes)")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/bench_train[_quick].json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.rounds, args.warmup = 4, 1, 1, 1
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread's work: add --threads 1")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    results = measure(args)
    results["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
    print(markdown(results))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   "bench_train_quick.json" if args.quick else "bench_train.json")
    write_json(out, results)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
