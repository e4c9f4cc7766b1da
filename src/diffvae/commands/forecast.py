"""``diffvae forecast REPORT_DIR --at MINUTES`` (or ``--at 1e5gflop``): re-read a finished compare's
``results.json`` and forecast its learning curves at another budget, without training
(:mod:`diffvae.compare.forecasts`). Prints one line per prediction (``--json``: the forecast object
that ``results.json["forecast"]`` holds). Nothing is written."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from diffvae.commands.options import SEED
from diffvae.compare.forecasts import QUALITY_KEYS, forecast_results, parse_target, section_heading, section_lines
from diffvae.errors import DiffvaeError
from diffvae.runs import read_json

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", metavar="REPORT_DIR", help="the --out folder of a finished diffvae compare")
    parser.add_argument("--at", required=True, metavar="MINUTES|Ngflop",
                        help="the budget to forecast: compare minutes (e.g. 120) or training GFLOP per family (e.g. 1e5gflop)")
    parser.add_argument("--seed", type=SEED.parser(), default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("--json", action="store_true", help="print the forecast as JSON")


def run(args: argparse.Namespace) -> int:
    results = read_results(Path(args.report))
    target = parse_target(args.at, results.get("budget_minutes"))
    check_beyond(results, target)
    forecast = forecast_results(results, target, seed=args.seed)
    if args.json:
        print(json.dumps(forecast, indent=2, sort_keys=True, allow_nan=False))
    else:
        print(section_heading(forecast))
        print("\n".join(f"- {line}" for line in section_lines(forecast)))
    return 0


def read_results(folder: Path) -> dict[str, Any]:
    """The compare's results.json with learning curves whose points have the fields a forecast reads;
    anything else is one error line."""
    if not folder.is_dir():
        raise DiffvaeError(f"{folder} is not a directory (give the --out folder of a diffvae compare)")
    path = folder / "results.json"
    if not path.is_file():
        raise DiffvaeError(f"{folder} is not a finished diffvae compare folder: it has no results.json")
    results = read_json(path)
    if not isinstance(results, dict):
        raise DiffvaeError(f"{path} is not a JSON object")
    budget = results.get("budget_minutes")
    if budget is not None and not (_number(budget) and budget > 0):
        raise DiffvaeError(f"{path}: budget_minutes must be a positive number, got {budget!r}")
    curves = results.get("learning_curves")
    if not isinstance(curves, dict) or not any(isinstance(v, list) and v for v in curves.values()):
        raise DiffvaeError(f"{path} has no learning curves (the compare's curves stage did not run or measured no snapshot)")
    for fam, points in curves.items():
        _check_points(points, f"{path}: learning_curves.{fam}")
    training = results.get("training") or {}
    if not isinstance(training, dict):
        raise DiffvaeError(f"{path}: training is not an object")
    for fam, summary in training.items():
        _check_training(summary, f"{path}: training.{fam}")
    return results


def _check_training(summary: Any, where: str) -> None:
    """The fields of a family's training summary that a forecast reads: its GFLOP and its recipe."""
    if not isinstance(summary, dict):
        raise DiffvaeError(f"{where} is not an object")
    if summary.get("gflop") is not None and not (_number(summary["gflop"]) and summary["gflop"] > 0):
        raise DiffvaeError(f"{where}.gflop must be a positive number, got {summary['gflop']!r}")
    recipe = summary.get("recipe")
    if recipe is None:
        return
    candidates = recipe.get("candidates") if isinstance(recipe, dict) else None
    if not (isinstance(candidates, dict) and all(_number(v) for v in candidates.values()) and _number(recipe.get("budget_gflop"))
            and isinstance(recipe.get("recipe"), str)):
        raise DiffvaeError(f"{where}.recipe needs recipe, budget_gflop and candidates (name: GFLOP), got {recipe!r}"[:300])
    if recipe.get("planned_gflop") is not None and not (_number(recipe["planned_gflop"]) and recipe["planned_gflop"] > 0):
        raise DiffvaeError(f"{where}.recipe.planned_gflop must be a positive number, got {recipe['planned_gflop']!r}")


def _check_points(points: Any, where: str) -> None:
    if not isinstance(points, list):
        raise DiffvaeError(f"{where} is not a list of points")
    for i, p in enumerate(points):
        if not isinstance(p, dict):
            raise DiffvaeError(f"{where}[{i}] is not an object")
        for field in ("gflop", "minutes"):
            if not (_number(p.get(field)) and p[field] >= 0):
                raise DiffvaeError(f"{where}[{i}].{field} must be a non-negative number, got {p.get(field)!r}")
        for field in (*QUALITY_KEYS, "bpd"):  # a metric may be null (a diverged snapshot), never another type
            if (p.get(field) is not None and not isinstance(p[field], (int, float))) or isinstance(p.get(field), bool):
                raise DiffvaeError(f"{where}[{i}].{field} must be a number or null, got {p.get(field)!r}")
            ci = p.get(f"{field}_ci95")
            if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(_number(v) for v in ci)):
                raise DiffvaeError(f"{where}[{i}].{field}_ci95 must be [low, high] or null, got {ci!r}")


def check_beyond(results: dict[str, Any], target: dict[str, Any]) -> None:
    """A GFLOP target below every family's measured range is refused (minutes: by :func:`parse_target`)."""
    if target["kind"] != "gflop":
        return
    ends = [max(p["gflop"] for p in pts) for pts in results["learning_curves"].values() if pts]
    if target["value"] <= min(ends):
        raise DiffvaeError(f"--at {target['value']:g} GFLOP is within the measured range (the shortest curve reaches "
                           f"{min(ends):.4g} GFLOP): forecasts are for larger budgets")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
