"""How steady the machine-speed probe of ``diffvae.recipes.machine_gflops`` is: the best of 5 calls against the
best of ``SPEED_CALLS``, probed ``--probes`` times in a row, on one thread in bf16 where the CPU has it.
Run it beside a load to see what the recipe choice sees on a busy machine.

    python benchmarks/bench_speed_probe.py --probes 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_line, machine_info  # noqa: E402

from diffvae.device import resolve_precision  # noqa: E402
from diffvae.recipes import SPEED_CALLS  # noqa: E402

FLOPS = 2.0 * 9 * 64 * 64 * 28 * 28 * 16  # the probe's convolution (diffvae.recipes.machine_gflops)


def probe(calls: int, dtype) -> float:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(16, 64, 28, 28, generator=g).to(dtype), torch.randn(64, 64, 3, 3, generator=g).to(dtype)
    best = float("inf")
    with torch.no_grad():
        for i in range(calls + 1):
            t0 = time.perf_counter()
            torch.nn.functional.conv2d(x, w, padding=1)
            if i:
                best = min(best, time.perf_counter() - t0)
    return FLOPS / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = resolve_precision("auto", torch.device("cpu")) or torch.float32
    print(f"{machine_line(machine_info())}; load average {os.getloadavg()[0]:.1f}; {dtype}")
    print("| calls per probe | min | median | max | max / min |\n|---:|---:|---:|---:|---:|")
    for calls in (5, SPEED_CALLS):
        speeds = [probe(calls, dtype) for _ in range(args.probes)]
        print(f"| {calls} | {min(speeds):.0f} | {statistics.median(speeds):.0f} | {max(speeds):.0f} | {max(speeds) / min(speeds):.2f} |")


if __name__ == "__main__":
    main()
