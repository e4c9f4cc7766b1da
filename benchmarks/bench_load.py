"""A budget is a promise under load (issue 27, item 8): ``diffvae compare --budget B`` run quiet, then again while
``--load`` busy processes (a synthetic load: each spins a float64 matmul loop on one thread) share the cores.

For each run it records the wall time (start to exit, of the real ``python -m diffvae compare`` process), the
overrun ratio wall / (B · 60 s), the learning-curve points kept per family, and the quality the load cost
(each family's FID and bits/dim from results.json, quiet vs loaded). The promise: loaded wall ≤ 1.15 × budget
plus start-up (the quiet run's wall − B · 60 s), with every part of the report present.

    python benchmarks/bench_load.py                     # --budget 15, a load of two busy processes (RESULTS.md)
    python benchmarks/bench_load.py --budget 3          # the 3-minute check (learning curves >= 3 points each)
    python benchmarks/bench_load.py --quick             # --budget 0.5 on digits, families vae only (smoke)

This takes 2 × B minutes plus start-up; run it on a machine nobody else is using (it is the load).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info, results_path, write_json  # noqa: E402

PROMISE = 1.15  # loaded wall time / budget, start-up aside


def busy(stop: multiprocessing.Event) -> None:
    """One core's worth of load: matmuls on one thread until ``stop`` is set."""
    import torch

    torch.set_num_threads(1)
    a = torch.randn(256, 256, dtype=torch.float64)
    while not stop.is_set():
        a = torch.tanh(a @ a.T / 256.0)


def run_compare(data: str, budget: float, families: str | None, out: Path) -> dict:
    """One ``python -m diffvae compare`` process: its wall time, exit status and results.json."""
    argv = [sys.executable, "-m", "diffvae", "compare", "--data", data, "--budget", str(budget), "--out", str(out), "--quiet"]
    if families:
        argv += ["--families", families]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - started
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    return {"wall_s": wall, "returncode": proc.returncode, "stderr_tail": proc.stderr[-2000:], "results": results}


def summary(run: dict, budget: float) -> dict:
    """Wall time, overrun ratio, curve points per family and each family's FID / bits/dim."""
    results = run["results"]
    curves = results.get("learning_curves") or {}
    families = results.get("families") or {}
    return {
        "wall_s": round(run["wall_s"], 1), "overrun": round(run["wall_s"] / (budget * 60.0), 3), "returncode": run["returncode"],
        "curve_points": {f: len(points) for f, points in curves.items()},
        "curve_samples": (results.get("learning_curve_settings") or {}).get("n_samples"),
        "fid": {f: v.get("fid") for f, v in families.items() if isinstance(v, dict)},
        "bpd": {f: v.get("bpd") for f, v in families.items() if isinstance(v, dict)},
    }


def loaded(load: int, fn):
    """``fn()`` while ``load`` busy processes run."""
    stop = multiprocessing.Event()
    workers = [multiprocessing.Process(target=busy, args=(stop,), daemon=True) for _ in range(load)]
    for w in workers:
        w.start()
    try:
        return fn()
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--budget", type=float, default=15.0, help="minutes (default 15)")
    parser.add_argument("--load", type=int, default=2, help="busy processes during the loaded run (default 2)")
    parser.add_argument("--families", default=None, help="as compare's --families (default: all)")
    parser.add_argument("--quick", action="store_true", help="--budget 0.5 --families vae (smoke)")
    args = parser.parse_args()
    if args.quick:
        args.budget, args.families = 0.5, "vae"
    with tempfile.TemporaryDirectory(prefix="bench_load.") as tmp:
        quiet = run_compare(args.data, args.budget, args.families, Path(tmp) / "quiet")
        busy_run = loaded(args.load, lambda: run_compare(args.data, args.budget, args.families, Path(tmp) / "loaded"))
    startup = max(0.0, quiet["wall_s"] - args.budget * 60.0)
    rows = {"quiet": summary(quiet, args.budget), "loaded": summary(busy_run, args.budget)}
    limit = PROMISE * args.budget * 60.0 + startup
    payload = {"machine": machine_info(), "data": args.data, "budget_minutes": args.budget, "load_processes": args.load,
               "families": args.families, "startup_s": round(startup, 1), "limit_s": round(limit, 1),
               "kept": busy_run["wall_s"] <= limit, **rows}
    write_json(results_path("bench_load", args.quick), payload)
    print(f"budget {args.budget:g} min on {args.data}, load {args.load}: quiet {rows['quiet']['wall_s']} s, "
          f"loaded {rows['loaded']['wall_s']} s (limit {limit:.0f} s: {'kept' if payload['kept'] else 'OVERRUN'})")
    for name, row in rows.items():
        print(f"  {name:6s} curve points {row['curve_points']} (samples/point {row['curve_samples']}), FID {row['fid']}, "
              f"bits/dim {row['bpd']}")
    return 0 if payload["kept"] and quiet["returncode"] == 0 and busy_run["returncode"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
