"""Validation of the learning-curve forecasts (issue 25): forecast from a B-minute compare what the families
measure after k·B minutes, run the k·B-minute compare with the same seed, and count how often the 95%
intervals held the measured value.

For each seed: ``diffvae compare --budget B --forecast k·B`` and ``diffvae compare --budget k·B`` (both with
``--seed``; a folder with a results.json is reused, so an interrupted validation continues). The longer
compare's final weights of each family are measured again with the *shorter* compare's curve settings
(sample count, bound images, seed: :class:`diffvae.compare.curves.CurveSettings`), so the value compared
with the forecast is the same estimand as the points it was fitted on (compare's curves take 200 samples
from 30 minutes on, 100 below).

A cell is a family × metric × seed. It is *covered* when the measured value lies in the forecast's ``pi95``
(the curve's interval plus one measurement's noise; ``ci95``, the curve's alone, is counted too). Refused
forecasts are listed with their reason and not counted. The ranking *held* when the measured order of the
forecast families is the predicted one; a decided winner *held* when it measured best.

``--all-snapshots`` fits every EMA snapshot of the short compare, measured here with the same settings, instead of
the points its curves stage had time for (a 2-minute compare measures 0–3 per family: too few to fit): it checks
the forecasting method on the compare's own runs, not the compare's choice of points.

    python benchmarks/bench_forecast.py --data mnist --budget 15 --multiple 4 --seeds 0,1 --cpu-clock --recipes-at-forecast
    python benchmarks/bench_forecast.py --data colours --budget 15 --multiple 3 --seeds 0,1
    python benchmarks/bench_forecast.py --data digits --budget 2 --multiple 3 --seeds 0 --cpu-clock --all-snapshots  # small
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS_DIR, machine_info, machine_line, write_json  # noqa: E402

from diffvae.api import DataConfig, load  # noqa: E402
from diffvae.compare.curves import CurveSettings, SnapshotMeasure  # noqa: E402
import numpy as np  # noqa: E402

from diffvae.compare import forecasts  # noqa: E402
from diffvae.compare.forecasts import curve_metrics, family_forecast, forecast_results, parse_target  # noqa: E402
from diffvae.forecast import REPLICATES, ForecastRefused, fit_power_law  # noqa: E402
from diffvae.metrics.features import get_feature_extractor  # noqa: E402
from diffvae.runs import read_json  # noqa: E402
from diffvae.snapshots import read_index, snapshot_folder  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


# --cpu-clock: compare's clock (and the engine's) becomes the process's CPU time on one thread, as in
# tests/compare/test_compare_e2e.py, so other processes on a shared machine cannot shrink the budgets
CPU_CLOCK = ("import sys, time, torch; time.perf_counter = time.process_time; torch.set_num_threads(1); "
             "from diffvae.cli import main; sys.exit(main(sys.argv[1:]))")


def run_compare(data: str, budget: float, seed: int, out: Path, forecast: float | None = None, cpu_clock: bool = False,
                recipes_at_forecast: bool = False) -> dict:
    """``diffvae compare`` in a subprocess (this checkout's source), unless ``out`` already has its results."""
    if not (out / "results.json").exists() or "elapsed_minutes" not in read_json(out / "results.json"):
        argv = ["compare", "--data", data, "--budget", f"{budget:g}", "--seed", str(seed), "--out", str(out), "--quiet"]
        argv += (["--force"] if out.exists() else []) + (["--forecast", f"{forecast:g}"] if forecast is not None else [])
        argv += ["--recipes-at-forecast"] if recipes_at_forecast else []
        env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        start = [sys.executable, "-c", CPU_CLOCK] if cpu_clock else [sys.executable, "-m", "diffvae"]
        subprocess.run(start + argv, check=True, env=env)
    return read_json(out / "results.json")


def snapshot_measure(settings: dict, data: str) -> SnapshotMeasure:
    """What compare's curves measure a snapshot with, at the short compare's ``learning_curve_settings``."""
    dataset = DataConfig(spec=data).load()
    fields = {f.name for f in dataclasses.fields(CurveSettings)}
    return SnapshotMeasure(get_feature_extractor(dataset, progress=False), dataset,
                           CurveSettings(**{k: v for k, v in settings.items() if k in fields}))


def measure_runs(out: Path, families: list[str], measure: SnapshotMeasure, final_only: bool) -> dict[str, list[dict]]:
    """Each family's snapshots in ``out/runs`` (only the final weights with ``final_only``), measured as compare's
    curves measure them."""
    points = {}
    for fam in families:
        run = out / "runs" / fam
        index = read_index(run)
        if index is None or not index.get("snapshots"):
            continue
        model = load(run, device="cpu")
        entries = index["snapshots"][-1:] if final_only else index["snapshots"]
        points[fam] = [measure(model, snapshot_folder(run) / e["file"], e) for e in entries]
    return points


def recipe_name(results: dict, family: str) -> str | None:
    return (((results.get("training") or {}).get(family) or {}).get("recipe") or {}).get("recipe")


def trained_gflop(results: dict, family: str) -> float | None:
    return ((results.get("training") or {}).get(family) or {}).get("gflop")


def at_long_compute(short: dict, long: dict, family: str, key: str, seed: int) -> dict | None:
    """The forecast of ``key`` at the GFLOP the long compare's ``family`` actually trained (not k× the short
    one's): the method's own check, free of how the long compare split its minutes."""
    gflop = trained_gflop(long, family)
    if not gflop:
        return None
    points = short["learning_curves"].get(family) or []
    ci_key = next((ci for k, _, ci in curve_metrics(points) if k == key), None)
    entry, _ = family_forecast(short, family, points, key, ci_key, {"kind": "gflop", "value": gflop}, seed=seed,
                               replicates=REPLICATES)
    return entry if entry["status"] == "forecast" else None


def score(forecast: dict, measured: dict[str, dict], seed: int, short: dict | None = None, long: dict | None = None) -> dict:
    """Cells (family × metric) with coverage, and per metric whether the ranking and the winner held. With both
    compares' results, a cell also says whether the long compare trained the same recipe and how many times the
    short one's GFLOP it trained, and is scored again at that GFLOP (``covered_at_long_compute``)."""
    cells, refused, rankings = [], [], []
    for fam, metrics in forecast["families"].items():
        for key, entry in metrics.items():
            value = (measured.get(fam) or {}).get(key)
            if entry["status"] != "forecast":
                refused.append({"seed": seed, "family": fam, "metric": key, "reason": entry["reason"]})
            elif value is not None:
                cells.append({"seed": seed, "family": fam, "metric": key, "predicted": entry["value"], "ci95": entry["ci95"],
                              "pi95": entry["pi95"], "measured": value,
                              "covered": entry["pi95"][0] <= value <= entry["pi95"][1],
                              "curve_covered": entry["ci95"][0] <= value <= entry["ci95"][1]})
                if short is not None and long is not None:
                    cells[-1].update(long_compare_check(short, long, fam, key, value, seed))
    for key, winner in forecast["winners"].items():
        mine = [c for c in cells if c["metric"] == key]
        predicted = [c["family"] for c in sorted(mine, key=lambda c: c["predicted"])]
        actual = [c["family"] for c in sorted(mine, key=lambda c: c["measured"])]
        rankings.append({"seed": seed, "metric": key, "predicted_order": predicted, "measured_order": actual,
                         "ranking_held": predicted == actual if len(mine) > 1 else None,
                         "decided_winner": winner.get("family"),
                         "winner_held": (actual[:1] == [winner["family"]]) if winner.get("family") else None})
    return {"cells": cells, "refused": refused, "rankings": rankings}


def long_compare_check(short: dict, long: dict, family: str, key: str, value: float, seed: int) -> dict:
    """What the long compare trained against what the short one forecast: recipe, GFLOP multiple, coverage there."""
    short_gflop, long_gflop = trained_gflop(short, family), trained_gflop(long, family)
    out = {"short_recipe": recipe_name(short, family), "long_recipe": recipe_name(long, family),
           "gflop_multiple": long_gflop / short_gflop if short_gflop and long_gflop else None}
    out["same_recipe"] = out["short_recipe"] == out["long_recipe"]
    at_long = at_long_compute(short, long, family, key, seed)
    if at_long is not None:
        out.update(predicted_at_long_compute=at_long["value"], pi95_at_long_compute=at_long["pi95"],
                   covered_at_long_compute=at_long["pi95"][0] <= value <= at_long["pi95"][1])
    return out


def command_line(args: dict) -> str:
    """The command that measured a report, from its settings (every flag that changes the result)."""
    flags = [f"--data {args['data']}", f"--budget {args['budget']:g}", f"--multiple {args['multiple']:g}", f"--seeds {args['seeds']}"]
    flags += [f"--{name.replace('_', '-')}" for name in ("cpu_clock", "all_snapshots", "recipes_at_forecast") if args.get(name)]
    if args.get("switch_margin") is not None:
        flags.append(f"--switch-margin {args['switch_margin']:g}")
    return "python benchmarks/bench_forecast.py " + " ".join(flags)


def markdown(report: dict) -> str:
    args, cells = report["settings"], report["cells"]
    covered = sum(c["covered"] for c in cells)
    lines = [f"## Forecast validation: {args['data']}, {args['budget']:g} → {args['budget'] * args['multiple']:g} minutes "
             f"(issue 25)", "", f"Measured by `{command_line(args)}` on {report['machine_line']}.", "",
             f"Coverage of the 95% forecast intervals (a measurement's): **{covered} of {len(cells)}** family × metric × seed cells "
             f"({covered / len(cells):.0%})" if cells else "No cell could be scored (every forecast was refused).",
             ""]
    same = [c for c in cells if c.get("same_recipe", True)]
    at_long = [c for c in same if "covered_at_long_compute" in c]
    if len(same) < len(cells):
        lines += [f"Cells where the long compare trained the recipe the forecast was about: {sum(c['covered'] for c in same)} of "
                  f"{len(same)} covered ({len(cells) - len(same)} cell(s) crossed a recipe switch the short compare's "
                  "measured speed did not predict).", ""]
    if at_long:
        lines += [f"At the GFLOP each long run actually trained (the method's own check): "
                  f"**{sum(c['covered_at_long_compute'] for c in at_long)} of {len(at_long)}** covered.", ""]
    lines += ["| seed | family | metric | predicted [95%] | measured | covered | long/short GFLOP | same recipe | "
              "at that GFLOP: predicted [95%] | covered |", "|---:|---|---|---|---:|---|---:|---|---|---|"]
    lines += [f"| {c['seed']} | {c['family']} | {c['metric']} | {c['predicted']:.4g} [{c['pi95'][0]:.4g}, {c['pi95'][1]:.4g}] | "
              f"{c['measured']:.4g} | {'yes' if c['covered'] else 'no'} | {_multiple(c)} | {_same(c)} | {_at_long(c)} |" for c in cells]
    lines += ["", "Points fitted per family: " + "; ".join(f"seed {seed}: " + ", ".join(f"{f} {n}" for f, n in counts.items())
                                                      for seed, counts in report.get("points", {}).items())]
    lines += ["", "Refused forecasts:" if report["refused"] else "No forecast was refused."]
    lines += [f"- seed {r['seed']}, {r['family']} {r['metric']}: {r['reason']}" for r in report["refused"]]
    lines += ["", "Rankings:"]
    lines += [f"- seed {r['seed']}, {r['metric']}: predicted {' < '.join(r['predicted_order']) or '—'}, measured "
              f"{' < '.join(r['measured_order']) or '—'}; decided winner {r['decided_winner'] or 'none'}"
              + (f" ({'held' if r['winner_held'] else 'did not hold'})" if r["decided_winner"] else "") for r in report["rankings"]]
    return "\n".join(lines) + "\n"


def _multiple(cell: dict) -> str:
    return f"{cell['gflop_multiple']:.2f}" if cell.get("gflop_multiple") else "–"


def _same(cell: dict) -> str:
    if "same_recipe" not in cell:
        return "–"
    return "yes" if cell["same_recipe"] else f"no ({cell['short_recipe']} → {cell['long_recipe']})"


def _at_long(cell: dict) -> str:
    if "covered_at_long_compute" not in cell:
        return "– | –"
    low, high = cell["pi95_at_long_compute"]
    return (f"{cell['predicted_at_long_compute']:.4g} [{low:.4g}, {high:.4g}] | "
            f"{'yes' if cell['covered_at_long_compute'] else 'no'}")


# --synthetic: the bootstrap's calibration where the truth is known. (E, A at the last point, α, relative σ)
SYNTHETIC_LAWS = ((20.0, 80.0, 0.6, 0.03), (5.0, 200.0, 0.4, 0.05), (50.0, 50.0, 1.0, 0.02), (0.5, 3.0, 0.3, 0.01),
                  (1.0, 0.3, 0.5, 0.005))


def synthetic_calibration(repeats: int, points: int = 7, multiple: float = 10.0) -> list[dict]:
    """Coverage of the 95% intervals of E, A, α and of the prediction at ``multiple``× the last compute,
    over ``repeats`` noisy draws of each law in ``SYNTHETIC_LAWS`` (doubling compute, ``points`` points)."""
    x = 2.0 ** np.arange(points)
    u = x / x[-1]
    rows = []
    for E, A, alpha, rel in SYNTHETIC_LAWS:
        rng = np.random.default_rng(0)
        true = E + A * u ** -alpha
        hits, refused = {"E": 0, "A": 0, "alpha": 0, "prediction": 0}, 0
        for r in range(repeats):
            y = true + rel * true * rng.standard_normal(points)
            try:
                fit = fit_power_law(x, y, rel * true, seed=r)
            except ForecastRefused:
                refused += 1
                continue
            for name, value in (("E", E), ("A", A), ("alpha", alpha)):
                low, high = fit.interval(name)
                hits[name] += low <= value <= high
            low, high = fit.prediction(multiple * x[-1], seed=r)["ci95"]
            hits["prediction"] += low <= E + A * multiple ** -alpha <= high
        fitted = repeats - refused
        rows.append({"law": [E, A, alpha, rel], "repeats": repeats, "refused": refused,
                     **{k: v / fitted if fitted else math.nan for k, v in hits.items()}})
    return rows


def synthetic_markdown(rows: list[dict]) -> str:
    lines = ["| E | A | α | σ/L | refused | E covered | A covered | α covered | L(10×C) covered |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['law'][0]:g} | {r['law'][1]:g} | {r['law'][2]:g} | {r['law'][3]:.1%} | {r['refused']} of {r['repeats']} | "
              f"{r['E']:.0%} | {r['A']:.0%} | {r['alpha']:.0%} | {r['prediction']:.0%} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--budget", type=float, default=15.0, help="minutes of the short compare")
    parser.add_argument("--multiple", type=float, default=4.0, help="the long compare runs this many times longer")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--work", default=os.path.join(RESULTS_DIR, "forecast_runs"), help="where the compares are kept")
    parser.add_argument("--out", default=os.path.join(RESULTS_DIR, "bench_forecast.json"))
    parser.add_argument("--cpu-clock", action="store_true", help="budgets in this process's CPU time on one thread (a shared machine)")
    parser.add_argument("--all-snapshots", action="store_true",
                        help="fit every snapshot of the short compare, measured here, not only the points its curves stage measured")
    parser.add_argument("--recipes-at-forecast", action="store_true",
                        help="the short compare trains the recipes of the long one's budget (compare --recipes-at-forecast)")
    parser.add_argument("--switch-margin", type=float, default=None, metavar="SHARE",
                        help="score with this recipe margin instead of forecasts.SWITCH_MARGIN (0: forecast next to a threshold "
                             "too, to see how those forecasts would have done)")
    parser.add_argument("--synthetic", type=int, default=0, metavar="REPEATS",
                        help="only the calibration on known power laws, over this many draws each (no training)")
    args = parser.parse_args()
    if args.synthetic:
        rows = synthetic_calibration(args.synthetic)
        write_json(os.path.join(RESULTS_DIR, "bench_forecast_synthetic.json"), {"rows": rows, "machine": machine_info()})
        print(synthetic_markdown(rows))
        return
    if args.switch_margin is not None:
        forecasts.SWITCH_MARGIN = args.switch_margin
    seeds = [int(s) for s in args.seeds.split(",")]
    target_minutes = args.budget * args.multiple
    report = {"settings": {"data": args.data, "budget": args.budget, "multiple": args.multiple, "seeds": args.seeds,
                           "cpu_clock": args.cpu_clock, "all_snapshots": args.all_snapshots,
                           "recipes_at_forecast": args.recipes_at_forecast, "switch_margin": forecasts.SWITCH_MARGIN},
              "machine": machine_info(), "cells": [], "refused": [], "rankings": []}
    report["machine_line"] = machine_line(report["machine"])
    for seed in seeds:
        work = Path(args.work) / f"{args.data}_s{seed}"
        short = run_compare(args.data, args.budget, seed, work / f"{args.budget:g}min", forecast=target_minutes,
                            cpu_clock=args.cpu_clock, recipes_at_forecast=args.recipes_at_forecast)
        long = run_compare(args.data, target_minutes, seed, work / f"{target_minutes:g}min", cpu_clock=args.cpu_clock)
        measure = snapshot_measure(short["learning_curve_settings"], args.data)
        families = list(short.get("families_requested") or short["learning_curves"])
        if args.all_snapshots:  # the compare's curves stage measures only what its time share allows
            short = {**short, "learning_curves": measure_runs(work / f"{args.budget:g}min", families, measure, final_only=False)}
        report.setdefault("points", {})[seed] = {f: len(p) for f, p in short["learning_curves"].items()}
        forecast = forecast_results(short, parse_target(f"{target_minutes:g}", args.budget), seed=seed)
        finals = measure_runs(work / f"{target_minutes:g}min", families, measure, final_only=True)
        keys = [k for k, _, _ in curve_metrics([p for pts in short["learning_curves"].values() for p in pts])]
        measured = {f: {k: pts[-1].get(k) for k in keys} for f, pts in finals.items()}
        for part, rows in score(forecast, measured, seed, short, long).items():
            report[part] += rows
        report.setdefault("long_compare_minutes", {})[seed] = long.get("elapsed_minutes")
    write_json(args.out, report)
    text = markdown(report)
    Path(args.out).with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")


if __name__ == "__main__":
    main()
