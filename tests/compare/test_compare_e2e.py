"""`diffvae compare` end to end on digits under a 2-minute budget (the slowest test of the suite)."""

import json
import time
import xml.etree.ElementTree as ET

import pytest

from diffvae.cli import main
from diffvae.compare.report import ROWS, lookup
from diffvae.families import FAMILIES
from diffvae.runs import RunDir

BUDGET_MINUTES = 2.0


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "report"
    with pytest.MonkeyPatch.context() as patch:
        # compare's clock (and the engine's) becomes this process's CPU time (one thread: conftest), so other
        # processes on a shared machine (CI) slow the test down but cannot make its budget overrun
        patch.setattr(time, "perf_counter", time.process_time)
        code = main(["compare", "--data", "digits", "--budget", str(BUDGET_MINUTES), "--out", str(out), "--quiet"])
        return out, code


def test_compare_writes_the_three_files_with_every_registered_family(report):
    out, code = report
    assert code == 0
    for name in ("report.html", "report.md", "results.json"):
        assert (out / name).stat().st_size > 500, name
    results = json.loads((out / "results.json").read_text())
    assert set(results["families"]) == set(FAMILIES), results.get("stages")  # every registered family by default
    assert all(v["status"] == "done" for v in results["stages"].values()), results["stages"]
    for fam in FAMILIES:
        for key in ("fid", "kid", "precision", "recall", "sharpness_ratio", "bpd", "nfe", "ms_per_sample",
                    "roundtrip_mse", "path_smoothness", "midpoint_fid", "probe_accuracy"):
            assert results["families"][fam].get(key) is not None, (fam, key)
        psnr = results["families"][fam].get("roundtrip_psnr_db")  # null only for an exact round trip (infinite)
        assert psnr is not None or results["families"][fam]["roundtrip_mse"] == 0, fam
    assert results["families"]["vae"]["nfe"] == 1 and results["families"]["ddpm"]["nfe"] > 1
    assert results["families"]["ddpm"]["latent_ratio"] == 1.0 > results["families"]["vae"]["latent_ratio"]
    assert "without_free_bits" in results["collapse"] and "with_free_bits" in results["collapse"]
    for fam in FAMILIES:  # every family's learning curve, its points in training order
        curve = results["learning_curves"][fam]
        assert isinstance(curve, list), fam
        assert all({"minutes", "gflop", "fid", "fid_ci95", "bpd"} <= set(p) for p in curve), fam
        assert [p["minutes"] for p in curve] == sorted(p["minutes"] for p in curve), fam
    assert any(results["learning_curves"][fam] for fam in FAMILIES)
    assert results["training"]["ldm"]["gflop"] > 0 and results["training"]["vae"]["gflop_per_image"] > 0
    forecast = results["forecast"]  # the default: 10× the budget, every family forecast or refused with a reason
    assert forecast["target"] == {"kind": "minutes", "value": 10 * BUDGET_MINUTES, "label": forecast["target"]["label"]}
    assert all(e["status"] == "forecast" or e["reason"] for fam in forecast["families"].values() for e in fam.values())
    assert f"## {forecast['target']['label']}" in (out / "report.md").read_text()


def test_the_plan_fits_the_budget_and_each_training_stage_stops_at_its_share(report):
    """The budget as the compare keeps it, whatever the machine's speed: the plan's shares fit the budget, the
    feature network is a fixed cost outside them, and each training stage stops itself within its share (the last
    step and checkpoint past it). How long a whole compare takes on a given machine is a benchmark, not a test
    (benchmarks/bench_load.py; this test once asserted the CPU time and failed on a slower CI machine: 159.6 s)."""
    out, _ = report
    results = json.loads((out / "results.json").read_text())
    assert sum(results["plan_seconds"].values()) <= BUDGET_MINUTES * 60
    stages = results["stages"]
    assert stages["features"]["allotted"] == 0.0
    for fam in FAMILIES:
        stage = stages[f"train:{fam}"]
        assert 0 < stage["seconds"] <= stage["allotted"] * 1.10 + 3.0, (fam, stage)
    assert all(stage["allotted"] >= 5.0 for name, stage in stages.items() if name != "features")


def test_html_is_valid_and_matches_results_json(report):
    out, _ = report
    results = json.loads((out / "results.json").read_text())
    root = ET.parse(out / "report.html").getroot()
    table = root.find(".//table[@id='measured']")
    assert [th.text for th in table.findall("./tbody/tr/th")] == ROWS
    spans = [s for s in table.iter("span") if "data-key" in s.attrib]
    assert len(spans) >= 40
    for span in spans:
        value = lookup(results, span.attrib["data-key"])
        assert float(span.text) == pytest.approx(value, rel=5e-3, abs=1e-12), span.attrib["data-key"]  # 3 significant digits
    images = [img.attrib["src"] for img in root.iter("img")]
    assert len(images) >= 6 and all((out / src).stat().st_size > 100 for src in images)
    md = (out / "report.md").read_text()
    assert all(f"| {row} |" in md for row in ROWS)
    assert "## The classic claims" in md and "## When to use each" in md


def test_resume_reuses_finished_stages(report, capsys):
    out, _ = report
    before = (out / "runs" / "vae" / "checkpoint.safetensors").read_bytes()
    stages = json.loads((out / "results.json").read_text())["stages"]
    assert main(["compare", "--data", "digits", "--budget", str(BUDGET_MINUTES), "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert all(f"[{stage}] done earlier, reused" in err for stage in stages), err  # nothing ran again ...
    assert json.loads((out / "results.json").read_text())["stages"] == stages  # ... so no stage recorded a new run
    assert (out / "runs" / "vae" / "checkpoint.safetensors").read_bytes() == before


def test_the_vae_stops_early_on_held_out_training_images(report):
    """compare's VAE keeps its best weights by the bound on a validation part of its training images (diffvae.holdout):
    its run measured them, and its final checkpoint's EMA are the weights of the best row."""
    out, _ = report
    run = RunDir(out / "runs" / "vae")
    rows = [r for r in run.read_metrics() if "holdout_bpd" in r]
    assert rows and run.read_config()["train"]["early_stop_every"] == 200
    best = min(rows, key=lambda r: r["holdout_bpd"])
    assert rows[-1]["best_step"] == best["step"] and run.load_checkpoint()[1]["early_stopping"]["best_step"] == best["step"]
