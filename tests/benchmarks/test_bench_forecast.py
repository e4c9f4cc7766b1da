"""The scoring of benchmarks/bench_forecast.py on a hand-written forecast (no training)."""

from __future__ import annotations

import sys
from pathlib import Path

from diffvae.compare.forecasts import forecast_results, parse_target
from forecast_fixtures import LAWS, synthetic_results

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_forecast import command_line, markdown, score  # noqa: E402

SWITCH = {"budget_gflop": 7000.0, "candidates": {"ddpm-small": 0.0, "ddpm-default": 50000.0}, "recipe": "ddpm-small"}


def _truth(fam: str, multiple: float) -> float:
    E, A, alpha = LAWS[fam]
    return E + A * multiple ** (-alpha)


def test_cells_rankings_and_refusals_are_scored():
    forecast = forecast_results(synthetic_results(), parse_target("20", 2.0), replicates=300)
    measured = {"vae": {"fid": _truth("vae", 10.0), "bpd": 50.0}, "ddpm": {"fid": _truth("ddpm", 10.0), "bpd": 1 + _truth("ddpm", 10.0) / 100}}
    scored = score(forecast, measured, seed=3)
    cells = {(c["family"], c["metric"]): c for c in scored["cells"]}
    assert cells[("vae", "fid")]["covered"] and cells[("ddpm", "fid")]["covered"]
    assert not cells[("vae", "bpd")]["covered"]  # 50 bits/dim is far outside
    fid = next(r for r in scored["rankings"] if r["metric"] == "fid")
    assert fid["predicted_order"] == ["ddpm", "vae"] == fid["measured_order"] and fid["winner_held"] is True
    flipped = score(forecast, {"vae": {"fid": 1.0}, "ddpm": {"fid": 90.0}}, seed=3)
    fid = next(r for r in flipped["rankings"] if r["metric"] == "fid")
    assert fid["ranking_held"] is False and fid["winner_held"] is False
    report = {"settings": {"data": "synthetic", "budget": 2.0, "multiple": 10.0, "seeds": "3"}, "machine_line": "test",
              **scored}
    assert "**3 of 4**" in markdown(report)


def test_refused_forecasts_are_listed_not_counted():
    forecast = forecast_results(synthetic_results(recipe=SWITCH), parse_target("20", 2.0), replicates=100)
    scored = score(forecast, {"vae": {"fid": _truth("vae", 10.0)}, "ddpm": {"fid": _truth("ddpm", 10.0)}}, seed=0)
    assert [c["family"] for c in scored["cells"]] == ["vae"]
    assert {r["family"] for r in scored["refused"]} == {"ddpm"} and "recipe switch" in scored["refused"][0]["reason"]


def test_the_report_names_the_command_that_measured_it_with_every_flag():
    """The validation's reports once printed the command without --recipes-at-forecast, the flag its numbers rest on."""
    settings = {"data": "colours", "budget": 15.0, "multiple": 3.0, "seeds": "0", "cpu_clock": True, "all_snapshots": False,
                "recipes_at_forecast": True, "switch_margin": 0.1}
    assert command_line(settings) == ("python benchmarks/bench_forecast.py --data colours --budget 15 --multiple 3 --seeds 0 "
                                      "--cpu-clock --recipes-at-forecast --switch-margin 0.1")
    plain = {**settings, "cpu_clock": False, "recipes_at_forecast": False, "switch_margin": None}
    assert command_line(plain).endswith("--seeds 0")
    assert command_line(settings) in markdown({"settings": settings, "machine_line": "test", "cells": [], "refused": [], "rankings": []})
