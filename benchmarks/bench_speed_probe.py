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

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_line, machine_info  # noqa: E402

from diffvae.device import resolve_precision  # noqa: E402
from diffvae.recipes import SPEED_CALLS, probe_gflops  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = resolve_precision("auto", torch.device("cpu"))
    print(f"{machine_line(machine_info())}; load average {os.getloadavg()[0]:.1f}; {dtype or torch.float32}")
    print("| calls per probe | min | median | max | max / min |\n|---:|---:|---:|---:|---:|")
    for calls in (5, SPEED_CALLS):
        speeds = [probe_gflops("cpu", dtype, calls) for _ in range(args.probes)]
        print(f"| {calls} | {min(speeds):.0f} | {statistics.median(speeds):.0f} | {max(speeds):.0f} | {max(speeds) / min(speeds):.2f} |")


if __name__ == "__main__":
    main()
