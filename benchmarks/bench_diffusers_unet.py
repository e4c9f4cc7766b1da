"""Training speed of diffvae's UNet against diffusers' UNet2DModel holding the same weights (issue 18).

``diffvae export --to diffusers`` maps diffvae's UNet onto ``UNet2DModel`` tensor for tensor (the two
compute the same function, max |Δ| ~1e-7), so no second backbone is needed for export. This measures
what training with diffusers' implementation instead would cost: one optimizer step (forward,
backward, AdamW) on the same batch, at the same width, one thread, fp32 and bf16 autocast. Time is
CPU time of this process (the machine is shared; with one thread it is the step's compute), the median
over interleaved repeats.

    python benchmarks/bench_diffusers_unet.py                  # mnist-sized: 1×28×28, width 32, batch 64
    python benchmarks/bench_diffusers_unet.py --side 32 --channels 3 --width 64 --batch 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def make_pair(width: int, channels: int, side: int):
    import diffusers

    from diffvae.export import diffusers_state_dict, diffusers_unet_config
    from diffvae.nn.unet import UNet, UNetConfig

    torch.manual_seed(0)
    ours = UNet(UNetConfig(channels=width, channel_mult=(1, 2, 2), groups=min(32, width)), channels, image_size=side)
    theirs = diffusers.UNet2DModel(**diffusers_unet_config(ours))
    theirs.load_state_dict(diffusers_state_dict(ours), strict=True)
    return ours, theirs


def step_seconds(net, forward, x, t, precision: str) -> float:
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    start = time.process_time()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = forward(net, x, t).float().pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ours, theirs = make_pair(args.width, args.channels, args.side)
    x = torch.randn(args.batch, args.channels, args.side, args.side)
    t = torch.randint(0, 1000, (args.batch,))
    nets = {"diffvae": (ours, lambda n, x, t: n(x, t)), "diffusers": (theirs, lambda n, x, t: n(x, t).sample)}
    print(f"{args.channels}×{args.side}×{args.side}, width {args.width}, channel_mult (1,2,2), batch {args.batch}, 1 thread")
    for precision in ("fp32", "bf16"):
        times = {name: [] for name in nets}
        for name, (net, forward) in nets.items():  # warm-up
            step_seconds(net, forward, x, t, precision)
        for _ in range(args.repeats):
            for name, (net, forward) in nets.items():
                times[name].append(step_seconds(net, forward, x, t, precision))
        med = {name: statistics.median(v) for name, v in times.items()}
        print(f"{precision}: diffvae {med['diffvae'] * 1000:.0f} ms/step, diffusers {med['diffusers'] * 1000:.0f} ms/step "
              f"(diffusers/diffvae = {med['diffusers'] / med['diffvae']:.2f}×)")


if __name__ == "__main__":
    main()
