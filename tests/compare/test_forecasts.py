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


class _RecordingContext:
    """A compare context whose ``train`` records the configs instead of training."""

    def __init__(self, out):
        from diffvae.compare.pipeline import CompareConfig

        self.config, self.out, self.trained = CompareConfig(spec="mnist", out=str(out), device="cpu"), out, {}
        self.dataset = type("Data", (), {"image_shape": (1, 28, 28)})()

    def train(self, family, run_dir, model_config, train_config):
        self.trained[family] = (model_config, train_config)


@pytest.mark.parametrize("multiple, recipe, channels", [(1.0, "ddpm-small", 16), (10.0, "ddpm-default", 32)])
def test_recipes_at_forecast_train_the_targets_recipe_and_forecast_it(tmp_path, monkeypatch, multiple, recipe, channels):
    """2 minutes at 1,000 GFLOP/s buy 120,000 reference GFLOP (ddpm-small, under ddpm-default's 225,000); 20 minutes
    buy 1,200,000. With the forecast's multiple the share trains ddpm-default, records its own 120,000, and the
    forecast at 10× is about the recipe trained; without it the forecast crosses the switch and is refused."""
    import diffvae.recipes
    from diffvae.compare.stages import train_family

    monkeypatch.setattr(diffvae.recipes, "machine_gflops", lambda *args, **kwargs: 1000.0)
    ctx = _RecordingContext(tmp_path)
    summary = train_family("ddpm", ctx, 120.0, recipe_multiple=multiple)
    model_config, train_config = ctx.trained["ddpm"]
    assert (train_config.recipe, model_config.channels) == (recipe, channels)
    assert summary["recipe"]["budget_gflop"] == pytest.approx(120_000.0) and summary["recipe"]["planned_gflop"] == pytest.approx(120_000.0)
    assert summary["recipe"].get("chosen_for_gflop") == (pytest.approx(1_200_000.0) if multiple > 1 else None)
    results = synthetic_results(recipe=summary["recipe"])
    entry = forecast_results(results, parse_target("20", 2.0), replicates=100)["families"]["ddpm"]["fid"]
    assert entry["status"] == ("forecast" if multiple > 1 else "refused")


@pytest.mark.parametrize("forecast, multiple", [(None, 10.0), ("45", 3.0), ("2e5gflop", None)])
def test_recipes_at_forecast_take_the_forecast_multiple_in_minutes(forecast, multiple):
    from diffvae.compare.pipeline import CompareConfig, recipe_multiple

    config = CompareConfig(spec="digits", out="x", budget_minutes=15.0, forecast=forecast, recipes_at_forecast=True)
    if multiple is None:
        with pytest.raises(DiffvaeError, match="needs the forecast in minutes"):
            recipe_multiple(config)
    else:
        assert recipe_multiple(config) == pytest.approx(multiple)
    assert recipe_multiple(CompareConfig(spec="digits", out="x", budget_minutes=15.0, forecast=forecast or "45")) == 1.0


def test_compare_refuses_recipes_at_a_gflop_forecast_before_writing(tmp_path, capsys):
    from diffvae.cli import main

    out = tmp_path / "cmp"
    argv = ["compare", "--data", "digits", "--budget", "2", "--out", str(out), "--forecast", "1e6gflop", "--recipes-at-forecast"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffvae: error:") and "needs the forecast in minutes" in err and not out.exists()


def test_compare_json_keeps_recipes_at_forecast_for_resume(tmp_path):
    from diffvae.compare.pipeline import CompareConfig, read_settings

    settings = {"data": {"spec": "digits"}, "content_hash": "x", "families": ["ddpm"], "budget_minutes": 1.0, "split": None, "seed": 0}
    (tmp_path / "compare.json").write_text(json.dumps(settings))  # written before the flag existed
    stored = read_settings(tmp_path)
    assert stored["recipes_at_forecast"] is False
    assert CompareConfig(spec="digits", out="x").resolved({**stored, "recipes_at_forecast": True}).recipes_at_forecast is True
    assert CompareConfig(spec="digits", out="x", recipes_at_forecast=False).resolved({**stored, "recipes_at_forecast": True}).recipes_at_forecast is False
    (tmp_path / "compare.json").write_text(json.dumps({**settings, "recipes_at_forecast": "yes"}))
    with pytest.raises(DiffvaeError, match="'recipes_at_forecast' must be true or false"):
        read_settings(tmp_path)


def test_a_short_stage_that_got_less_than_its_plan_is_scaled_from_its_plan(tmp_path, monkeypatch):
    """A 15-minute compare's DDPM stage had 1.9 of its planned 2.3 minutes (fixed costs weigh more in a short compare),
    while the 60-minute compare's had 9.2 of 9.3: the recipe a compare 4× longer trains is the one for 4× the plan.
    Here the stage trains 50 of its planned 60 seconds at 1,000 GFLOP/s: 4× what it got is 200,000 reference GFLOP
    (ddpm-small), 4× its plan 240,000 (ddpm-default)."""
    import diffvae.recipes
    from diffvae.compare.stages import train_family

    monkeypatch.setattr(diffvae.recipes, "machine_gflops", lambda *args, **kwargs: 1000.0)
    ctx = _RecordingContext(tmp_path)
    summary = train_family("ddpm", ctx, 50.0, planned_seconds=60.0, recipe_multiple=4.0)
    assert ctx.trained["ddpm"][1].recipe == "ddpm-default" and summary["recipe"]["chosen_for_gflop"] == pytest.approx(240_000.0)
    short = train_family("ddpm", ctx, 50.0, planned_seconds=60.0)  # without the flag: the recipe of the 50 seconds
    assert ctx.trained["ddpm"][1].recipe == "ddpm-small" and short["recipe"]["planned_gflop"] == pytest.approx(60_000.0)
    entry = forecast_results(synthetic_results(recipe=short["recipe"]), parse_target("8", 2.0), replicates=100)["families"]["ddpm"]["fid"]
    assert entry["status"] == "refused" and "240,000" in entry["reason"]  # 4× the plan crosses the switch; 4× 50,000 would not


def test_latent_diffusion_is_refused_for_its_own_reason():
    """Its curve is a longer prior on one autoencoder (FamilySpec.forecast_refusal): refused whatever the fit."""
    results = synthetic_results()
    results["learning_curves"]["ldm"] = results["learning_curves"].pop("ddpm")
    results["training"]["ldm"] = results["training"].pop("ddpm")
    forecast = forecast_results(results, parse_target("20", 2.0), replicates=100)
    for key in ("fid", "bpd"):
        assert forecast["families"]["ldm"][key]["status"] == "refused"
        assert "trains a longer autoencoder too" in forecast["families"]["ldm"][key]["reason"]
    assert forecast["families"]["vae"]["fid"]["status"] == "forecast"
