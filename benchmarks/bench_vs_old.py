"""Today's defaults against an earlier revision's, in one run: ``diffvae compare`` at the same budget (issue 13).

Both revisions run their own ``diffvae compare --data mnist --budget MINUTES`` in a subprocess (the old one from
``git archive REV src``). The machine is shared, so both runs see the same *compute*, not the same wall clock: their
clock (``time.perf_counter``, which the engine and compare budget on) is replaced by this process's CPU time divided
by the thread count, i.e. a two-core machine's wall clock if it were theirs alone, and OpenMP threads sleep instead
of spinning while they wait (spinning would count as work). Each family's trained EMA model is then scored here by
today's code, the same way for both: ``--samples`` images from its own default sampler (seed 0), FID in diffvae's
mnist feature space against the held-out split, with a bootstrap 95% interval. The compare's own FID is shown beside.

Both sides run from ``git archive`` of a revision (``--new-rev``, default HEAD), never from the working tree, so
uncommitted edits cannot leak into the measurement. ``--reuse old,new`` re-scores a compare already in the results
folder (``old``, ``new`` or both) instead of running it again.

    python benchmarks/bench_vs_old.py --old-rev 4751cd5 --minutes 15
    python benchmarks/bench_vs_old.py --quick          # digits, seconds (smoke setting)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS_DIR, machine_info, machine_line, results_path, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LAUNCH = ("import sys, time\n"
          "_cpu, _threads = time.process_time, int(sys.argv[1])\n"
          "time.perf_counter = lambda: _cpu() / _threads  # a machine of this many cores, ours alone\n"
          "import torch\n"
          "torch.set_num_threads(_threads)\n"
          "from diffvae.cli import main\n"
          "sys.exit(main(sys.argv[2:]))\n")


def export_source(rev: str, dest: Path) -> Path:
    """``src/`` of git revision ``rev`` unpacked under ``dest`` (no working tree, no worktree metadata)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def run_compares(jobs: dict[str, tuple[Path, Path]], data: str, minutes: float, threads: int) -> dict[str, float]:
    """Each revision's ``diffvae compare`` (side → (src, out)) on the CPU clock, all at once (their budgets are
    CPU time, so running side by side changes how long they take, not what they get); their wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    argv = ["compare", "--data", data, "--budget", f"{minutes:g}", "--force", "--quiet", "--device", "cpu"]
    t0, running, walls = time.perf_counter(), {}, {}
    for side, (src, out) in jobs.items():
        running[side] = subprocess.Popen([sys.executable, "-c", LAUNCH, str(threads), *argv, "--out", str(out)],
                                         env={**env, "PYTHONPATH": str(src)})
    for side, process in running.items():
        if process.wait() != 0:
            raise SystemExit(f"the {side} compare failed (exit {process.returncode})")
        walls[side] = time.perf_counter() - t0
    return walls


def score_runs(out: Path, dataset, extractor, real, samples: int) -> dict:
    """Today's scoring of every family a compare trained: its default sampler, ``samples`` images, FID + interval."""
    from diffvae.api import load
    from diffvae.metrics.bootstrap import fid_ci
    from diffvae.metrics.distances import fid

    compare_results = json.loads((out / "results.json").read_text())
    scores = {}
    for run in sorted(p for p in (out / "runs").iterdir() if (p / "config.json").exists() and not p.name.startswith("collapse")):
        model = load(run)
        g = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            images = torch.cat([model.sample(min(250, samples - i), generator=g) for i in range(0, samples, 250)])
        feats = extractor.features(images)
        low, high = fid_ci(real, feats, generator=torch.Generator().manual_seed(0))
        own = compare_results.get("families", {}).get(run.name, {})
        scores[run.name] = {"fid": fid(real, feats), "fid_ci95": [low, high], "steps": int(model.trained_steps),
                            "compare_fid": own.get("fid"), "config": json.loads((run / "config.json").read_text()).get("model")}
        print(run.name, scores[run.name]["fid"], scores[run.name]["fid_ci95"], flush=True)
    return scores


def vs_markdown(result: dict) -> str:
    old, new = result["runs"]["old"], result["runs"]["new"]
    lines = [f"**Defaults at {result['new_rev']} vs {result['old_rev']}** — `diffvae compare --data {result['data']} --budget "
             f"{result['minutes']:g}` for each revision on a {result['threads']}-core CPU clock (the machine's CPU time / "
             f"{result['threads']}), each family's EMA model scored by today's code: {result['samples']} samples from its own "
             f"default sampler (seed 0), FID in diffvae features against the held-out split, bootstrap 95% interval. "
             f"{machine_line(result['machine'])}", "",
             "| family | old steps | old FID | new steps | new FID | old / new | compare's own FID (old → new) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for family in sorted(set(old["scores"]) | set(new["scores"])):
        o, n = old["scores"].get(family), new["scores"].get(family)
        ci = lambda s: "–" if s is None else f"{s['fid']:.1f} [{s['fid_ci95'][0]:.0f}, {s['fid_ci95'][1]:.0f}]"  # noqa: E731
        own = lambda s: "–" if s is None or s["compare_fid"] is None else f"{s['compare_fid']:.1f}"  # noqa: E731
        if o is None or n is None:  # a family only one revision has
            steps = lambda s: "–" if s is None else s["steps"]  # noqa: E731
            lines.append(f"| {family} | {steps(o)} | {ci(o)} | {steps(n)} | {ci(n)} | – | {own(o)} → {own(n)} |")
            continue
        lines.append(f"| {family} | {o['steps']} | {ci(o)} | {n['steps']} | {ci(n)} | {o['fid'] / n['fid']:.2f}× | "
                     f"{own(o)} → {own(n)} |")
    wall = lambda s: "not timed (an earlier compare re-scored)" if s["wall_seconds"] is None else f"{s['wall_seconds'] / 60:.1f} min"  # noqa: E731
    lines += ["", f"Wall time: old {wall(old)}, new {wall(new)} (a busy machine stretches them; the budgets are CPU time)."]
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The section for RESULTS.md from this script's JSON."""
    return vs_markdown(result)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-rev", default="4751cd5", help="the revision whose defaults are 'old' (default: before issue 13)")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of each compare; its clock is its CPU time / threads. One: two threads on a "
                             "shared machine burn CPU time waiting on each other")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--new-rev", default="HEAD", help="the revision whose defaults are 'new'")
    parser.add_argument("--reuse", default="", metavar="SIDE[,SIDE]",
                        help="old and/or new: re-score that side's compare already in the results folder instead of running it")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    data, minutes = ("digits", 0.5) if args.quick else ("mnist", args.minutes)
    from diffvae.data import load_data
    from diffvae.metrics.features import get_feature_extractor

    dataset = load_data(data)
    extractor = get_feature_extractor(dataset)
    real = extractor.features(dataset.test)
    work = Path(RESULTS_DIR) / ("vs_old_quick" if args.quick else "vs_old")
    out_json = Path(args.out or results_path("bench_vs_old", args.quick))
    new_rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.new_rev], check=True, capture_output=True,
                             text=True).stdout.strip()  # now: HEAD may move while the compares run
    sources = {"old": export_source(args.old_rev, work / "old_src"), "new": export_source(new_rev, work / "new_src")}
    reused = {side for side in args.reuse.split(",") if (work / side / "results.json").exists()}
    walls = run_compares({side: (src, work / side) for side, src in sources.items() if side not in reused}, data, minutes, args.threads)
    runs = {side: {"wall_seconds": walls.get(side),  # None: an earlier compare, re-scored
                   "scores": score_runs(work / side, dataset, extractor, real, 50 if args.quick else args.samples)}
            for side in sources}
    result = {"machine": machine_info(), "old_rev": args.old_rev, "new_rev": new_rev, "data": data, "minutes": minutes, "threads": args.threads,
              "samples": 50 if args.quick else args.samples, "runs": runs}
    result["markdown"] = vs_markdown(result)
    print(result["markdown"])
    write_json(out_json, result)
    return result


if __name__ == "__main__":
    main()
