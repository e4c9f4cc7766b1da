"""results["forecast"], its report section and its figure bands, from hand-written results (no training)."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
from scipy.optimize import brentq

from diffvae.compare.forecasts import draw_band, forecast_results, parse_target, section_heading, section_lines
from diffvae.compare.report import render_html, render_markdown, write_report
from diffvae.errors import DiffvaeError
from forecast_fixtures import LAWS, synthetic_results

matplotlib.use("Agg", force=True)
import matplotlib.pyplot as plt  # noqa: E402

SWITCH = {"budget_gflop": 7000.0, "candidates": {"ddpm-small": 0.0, "ddpm-default": 50000.0}, "recipe": "ddpm-small"}


@pytest.mark.parametrize("text, target", [("150", {"kind": "minutes", "value": 150.0}), ("2e5gflop", {"kind": "gflop", "value": 2e5}),
                                          (" 3E4GFLOP ", {"kind": "gflop", "value": 3e4}), ("30min", {"kind": "minutes", "value": 30.0})])
def test_parse_target(text, target):
    assert parse_target(text, budget_minutes=15.0) == target


@pytest.mark.parametrize("text", ["0", "-5", "nan", "inf", "ten", "gflop", "15", "10"])
def test_bad_targets_are_refused(text):
    with pytest.raises(DiffvaeError):
        parse_target(text, budget_minutes=15.0)


def test_forecast_of_known_laws_at_ten_times_the_budget():
    """Each family's prediction interval holds its true law at 10× its training compute; DDPM, whose
    law is lower there, is the decided winner in both metrics."""
    forecast = forecast_results(synthetic_results(), parse_target("20", 2.0), replicates=400)
    for i, fam in enumerate(LAWS):
        E, A, alpha = LAWS[fam]
        truth = E + A * 10.0 ** (-alpha)
        entry = forecast["families"][fam]["fid"]
        assert entry["status"] == "forecast"
        assert entry["target_gflop"] == pytest.approx(10 * 1000.0 * (i + 1))
        assert entry["ci95"][0] <= truth <= entry["ci95"][1]
        assert entry["pi95"][0] <= truth <= entry["pi95"][1]
        assert entry["band"][-1]["gflop"] == pytest.approx(entry["target_gflop"])
    assert forecast["winners"]["fid"]["family"] == "ddpm"
    assert forecast["winners"]["bpd"]["family"] == "ddpm"
    (fid_pair,) = [c for c in forecast["comparisons"] if c["metric"] == "fid"]
    assert fid_pair["decided"] == "ddpm" and fid_pair["ci95"][0] > 0  # vae − ddpm > 0 in every replicate's 95%
    json.dumps(forecast, allow_nan=False)  # results.json holds it as it is


def test_the_crossing_beyond_the_measured_range_is_where_the_laws_cross():
    """Almost noise-free curves: the predicted crossing in budget minutes is the root of the two laws
    (each family's compute is its measured compute × minutes / budget)."""
    forecast = forecast_results(synthetic_results(noise=1e-4), parse_target("20", 2.0), replicates=200)
    (cross,) = [c for c in forecast["crossovers"] if c["metric"] == "fid"]
    (Ev, Av, av), (Ed, Ad, ad) = LAWS["vae"], LAWS["ddpm"]
    root = brentq(lambda m: (Ev + Av * m ** -av) - (Ed + Ad * m ** -ad), 1.0, 10.0)
    assert cross["leader"] == "ddpm" and cross["trailer"] == "vae"
    assert cross["at"] == pytest.approx(2.0 * root, rel=0.02)


def test_no_forecast_across_a_recipe_switch():
    """At 10× the budget the reference GFLOP pass ddpm-default's threshold: DDPM is refused, the VAE forecast."""
    forecast = forecast_results(synthetic_results(recipe=SWITCH), parse_target("20", 2.0), replicates=100)
    assert forecast["families"]["ddpm"]["fid"]["status"] == "refused"
    assert "recipe switch" in forecast["families"]["ddpm"]["fid"]["reason"]
    assert forecast["families"]["vae"]["fid"]["status"] == "forecast"
    assert forecast["winners"]["fid"]["family"] is None  # one family left: nothing to decide
    same = forecast_results(synthetic_results(recipe=SWITCH), parse_target("10", 2.0), replicates=100)  # 35,000 < 50,000
    assert same["families"]["ddpm"]["fid"]["status"] == "forecast"


@pytest.mark.parametrize("target, status", [("14", "refused"), ("16", "refused"), ("12", "forecast")])
def test_a_target_near_a_recipe_threshold_is_refused(target, status):
    """The validation's 60-minute mnist compare could train either DDPM recipe: 4× the 15-minute compare's
    budget was 3% under ddpm-default's threshold, and the longer run measures the machine's speed again.
    Here the threshold is 50,000: 14 min buys 49,000 (2% under), 16 min 56,000 (12% over: a switch), 12 min 42,000."""
    entry = forecast_results(synthetic_results(recipe=SWITCH), parse_target(target, 2.0), replicates=100)["families"]["ddpm"]["fid"]
    assert entry["status"] == status
    if target == "14":
        assert "within 10% of the threshold of 'ddpm-default'" in entry["reason"]


def test_a_gflop_target_inside_a_family_range_is_refused_for_that_family():
    forecast = forecast_results(synthetic_results(), parse_target("1500gflop"), replicates=100)
    assert forecast["families"]["ddpm"]["fid"]["status"] == "refused"  # measured up to 2000
    assert "within the measured range" in forecast["families"]["ddpm"]["fid"]["reason"]
    assert forecast["families"]["vae"]["fid"]["status"] == "forecast"


def test_short_curves_are_refused_with_their_reason():
    results = synthetic_results()
    results["learning_curves"]["vae"] = results["learning_curves"]["vae"][-3:]
    forecast = forecast_results(results, parse_target("20", 2.0), replicates=100)
    assert "only 3 measured points" in forecast["families"]["vae"]["fid"]["reason"]
    assert any("VAE, FID: not forecast — only 3" in line for line in section_lines(forecast))


def test_report_section_and_figure(tmp_path):
    results = synthetic_results()
    results["forecast"] = forecast_results(results, parse_target("20", 2.0), replicates=200)
    heading = section_heading(results["forecast"])
    assert heading.startswith("At 10× this budget (20 CPU-minutes)")
    md = render_markdown(results, [])
    assert f"## {heading}" in md and "DDPM is predicted best" in md and "predicted to pass" in md
    assert 'id="forecast"' in render_html(results, [])
    write_report(tmp_path, results)
    assert (tmp_path / "figures" / "fid_vs_compute.png").exists()


def test_the_band_is_dashed_shaded_and_past_the_last_point():
    results = synthetic_results()
    results["forecast"] = forecast_results(results, parse_target("20", 2.0), replicates=100)
    fig, ax = plt.subplots()
    draw_band(ax, results, "vae", "fid", "gflop", "C0")
    (line,) = ax.get_lines()
    assert line.get_linestyle() == "--" and "forecast" in line.get_label()
    assert np.min(line.get_xdata()) == pytest.approx(results["learning_curves"]["vae"][-1]["gflop"])
    assert np.max(line.get_xdata()) == pytest.approx(10_000.0)
    assert len(ax.collections) == 1 and "forecast" in ax.collections[0].get_label()
    plt.close(fig)


def test_compare_refuses_a_bad_forecast_before_writing(tmp_path, capsys):
    from diffvae.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", "--data", "digits", "--budget", "2", "--out", str(out), "--forecast", "1.5"]) == 2
    assert "within the measured budget" in capsys.readouterr().err and not out.exists()


def test_compare_forecasts_ten_times_its_budget_by_default_and_survives_a_failing_forecast():
    from diffvae.compare.pipeline import CompareConfig, _forecast, forecast_target

    assert forecast_target(CompareConfig(spec="digits", out="x", budget_minutes=3.0)) == {"kind": "minutes", "value": 30.0}
    assert forecast_target(CompareConfig(spec="digits", out="x", budget_minutes=3.0, forecast="1e6gflop"))["kind"] == "gflop"
    broken = {"budget_minutes": 2.0, "learning_curves": {"vae": [1, 2]}}  # points that are not objects
    assert "error" in _forecast(broken, {"kind": "minutes", "value": 20.0}, seed=0)  # the report says so; the compare goes on
    assert section_lines(_forecast(broken, {"kind": "minutes", "value": 20.0}, seed=0))[0].startswith("The forecast failed")
