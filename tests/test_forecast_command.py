"""``diffvae forecast REPORT_DIR --at ...`` on a compare folder written by hand (no training)."""

from __future__ import annotations

import json

import pytest

from diffvae.cli import main
from forecast_fixtures import synthetic_results


@pytest.fixture
def report(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(synthetic_results()))
    return tmp_path


def test_forecast_prints_predictions_with_intervals(report, capsys):
    assert main(["forecast", str(report), "--at", "20"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("At 10× this budget (20 CPU-minutes)")
    assert "VAE, FID: predicted" in out and "DDPM, bits/dim: predicted" in out
    assert not any(p.name != "results.json" for p in report.iterdir())  # nothing written


def test_json_output_matches_the_forecast(report, capsys):
    assert main(["forecast", str(report), "--at", "4e4gflop", "--json"]) == 0
    forecast = json.loads(capsys.readouterr().out)
    assert forecast["target"] == {"kind": "gflop", "value": 4e4, "label": "At 4e+04 training GFLOP per family"}
    for fam in ("vae", "ddpm"):
        entry = forecast["families"][fam]["fid"]
        assert entry["target_gflop"] == 4e4 and entry["ci95"][0] <= entry["value"] <= entry["ci95"][1]


def _damage(report, change):
    results = synthetic_results()
    change(results)
    (report / "results.json").write_text(json.dumps(results))


@pytest.mark.parametrize("at, setup, message", [
    ("0", None, "positive"),
    ("-4", None, "positive"),
    ("1.5", None, "within the measured budget"),
    ("500gflop", None, "within the measured range"),
    ("lots", None, "MINUTES"),
    ("20", lambda r: r.update(learning_curves={"vae": [], "ddpm": []}), "no learning curves"),
    ("20", lambda r: r.pop("learning_curves"), "no learning curves"),
    ("20", lambda r: r["learning_curves"]["vae"][0].update(gflop="many"), "learning_curves.vae[0].gflop"),
    ("20", lambda r: r.update(budget_minutes=-1), "budget_minutes"),
    ("20", lambda r: r["learning_curves"]["ddpm"][2].update(fid="bad"), "learning_curves.ddpm[2].fid"),
    ("20", lambda r: r["learning_curves"]["ddpm"][1].update(fid_ci95=[1.0]), "learning_curves.ddpm[1].fid_ci95"),
    ("20", lambda r: r["training"]["vae"].update(gflop=-3), "training.vae.gflop"),
    ("20", lambda r: r["training"]["ddpm"].update(recipe={"recipe": "x", "budget_gflop": "lots", "candidates": {}}), "training.ddpm.recipe"),
    ("20", lambda r: r.update(training=[1]), "training is not an object"),
])
def test_bad_arguments_are_one_line(report, capsys, at, setup, message):
    if setup is not None:
        _damage(report, setup)
    assert main(["forecast", str(report), "--at", at]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffvae: error:") and message in err[0]


def test_a_bad_seed_is_one_line(report, capsys):
    assert main(["forecast", str(report), "--at", "20", "--seed", "-1"]) == 2
    assert capsys.readouterr().err.startswith("diffvae: error:")


def test_a_damaged_or_missing_results_json_is_one_line(tmp_path, capsys):
    assert main(["forecast", str(tmp_path), "--at", "20"]) == 2
    (tmp_path / "results.json").write_text('{"learning_curves": {')
    assert main(["forecast", str(tmp_path), "--at", "20"]) == 2
    (tmp_path / "results.json").write_text("[1, 2]")
    assert main(["forecast", str(tmp_path), "--at", "20"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0:2] for line in err] == [["diffvae", " error"]] * 3
    assert "no results.json" in err[0] and "not valid JSON" in err[1] and "not a JSON object" in err[2]
