"""A budget is a promise under load (issue 27, item 8): ``diffvae compare --budget B`` run quiet, then again while
``--load`` busy processes (a synthetic load: each spins a float64 matmul loop on one thread) share the cores.

For each run it records the wall time (start to exit, of the real ``python -m diffvae compare`` process), the
overrun ratio wall / (B · 60 s), the learning-curve points kept per family, and the quality the load cost
(each family's FID and bits/dim from results.json, quiet vs loaded). The promise: loaded wall ≤ 1.15 × budget
plus start-up (the quiet run's wall − B · 60 s), with every part of the report present.

    python benchmarks/bench_load.py                     # --budget 15, a load of two busy processes (RESULTS.md)
    python benchmarks/bench_load.py --budget 3          # the 3-minute check (learning curves >= 3 points each)
    python benchmarks/bench_load.py --quick             # --budget 0.5 on digits, families vae only (smoke)
    python benchmarks/bench_load.py --budget 5 --runs loaded --work /tmp/load5   # one loaded compare, kept

Each row records every stage's planned and used seconds (results.json's ``plan_seconds``, stages.json), so an
overrun names the stage that took it.

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
    stages = json.loads((out / "stages.json").read_text()) if (out / "stages.json").is_file() else {}
    return {"wall_s": wall, "returncode": proc.returncode, "stderr_tail": proc.stderr[-2000:], "results": results,
            "stages": stages}


def summary(run: dict, budget: float) -> dict:
    """Wall time, overrun ratio, curve points per family, each family's FID / bits/dim, and each stage's planned
    and used seconds."""
    results = run["results"]
    planned = results.get("plan_seconds") or {}
    curves = results.get("learning_curves") or {}
    families = results.get("families") or {}
    return {
        "wall_s": round(run["wall_s"], 1), "overrun": round(run["wall_s"] / (budget * 60.0), 3), "returncode": run["returncode"],
        "curve_points": {f: len(points) for f, points in curves.items()},
        "curve_samples": (results.get("learning_curve_settings") or {}).get("n_samples"),
        "fid": {f: v.get("fid") for f, v in families.items() if isinstance(v, dict)},
        "bpd": {f: v.get("bpd") for f, v in families.items() if isinstance(v, dict)},
        "elapsed_minutes": results.get("elapsed_minutes"),
        "stages": {name: {"planned_s": round(planned.get(name, 0.0), 1), "used_s": entry.get("seconds")}
                   for name, entry in run["stages"].items()},
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
    parser.add_argument("--runs", choices=("both", "quiet", "loaded"), default="both", help="which compares to run")
    parser.add_argument("--work", default=None, help="keep the compares here (default: a temporary folder)")
    args = parser.parse_args()
    if args.quick:
        args.budget, args.families = 0.5, "vae"
    with tempfile.TemporaryDirectory(prefix="bench_load.") as tmp:
        work = Path(args.work or tmp)
        runs = {}
        if args.runs in ("both", "quiet"):
            runs["quiet"] = run_compare(args.data, args.budget, args.families, work / "quiet")
        if args.runs in ("both", "loaded"):
            runs["loaded"] = loaded(args.load, lambda: run_compare(args.data, args.budget, args.families, work / "loaded"))
    rows = {name: summary(run, args.budget) for name, run in runs.items()}
    payload = {"machine": machine_info(), "data": args.data, "budget_minutes": args.budget, "load_processes": args.load,
               "families": args.families, **rows}
    if "quiet" in runs:
        payload["startup_s"] = round(max(0.0, runs["quiet"]["wall_s"] - args.budget * 60.0), 1)
        payload["limit_s"] = round(PROMISE * args.budget * 60.0 + payload["startup_s"], 1)
    if len(runs) == 2:
        payload["kept"] = runs["loaded"]["wall_s"] <= payload["limit_s"]
    write_json(results_path("bench_load" + ("" if args.runs == "both" else f"_{args.runs}"), args.quick), payload)
    for name, row in rows.items():
        print(f"  {name:6s} wall {row['wall_s']} s (×{row['overrun']} the budget), curve points {row['curve_points']} "
              f"(samples/point {row['curve_samples']}), FID {row['fid']}, bits/dim {row['bpd']}")
        print("         stages (planned → used s): " + ", ".join(f"{k} {v['planned_s']}→{v['used_s']}" for k, v in row["stages"].items()))
    if "kept" in payload:
        print(f"budget {args.budget:g} min on {args.data}, load {args.load}: limit {payload['limit_s']:.0f} s: "
              f"{'kept' if payload['kept'] else 'OVERRUN'}")
    return 0 if payload.get("kept", True) and all(run["returncode"] == 0 for run in runs.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
