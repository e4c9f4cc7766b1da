"""The report from a results dict: table rows, self-consistency with results.json, claims."""

import copy
import json
import xml.etree.ElementTree as ET

import pytest

from diffvae.compare.report import ROWS, claims, lookup, when_to_use, write_report


def fake_results():
    fam = lambda **kw: {"fid": 40.0, "kid": 0.03, "precision": 0.6, "recall": 0.4, "sharpness_ratio": 0.9,
                        "confident_fraction": 0.8, "nfe": 20, "ms_per_sample": 12.5, "latent_dims": 784,
                        "data_dims": 784, "latent_ratio": 1.0, "latent_std": 1.01, "roundtrip_psnr_db": 30.0,
                        "path_smoothness": 0.1, "midpoint_fid": 50.0, "bpd": 1.5, "probe_accuracy": 0.5,
                        "probe_chance": 0.1, **kw}
    return {
        "data": "mnist", "image_shape": [1, 28, 28], "train_size": 4500, "test_size": 500, "budget_minutes": 15.0,
        "elapsed_minutes": 14.2, "families_requested": ["vae", "ddpm", "ldm"],
        "families": {
            "vae": fam(fid=80.123456, sharpness_ratio=0.45, nfe=1, ms_per_sample=0.05, latent_dims=16, latent_ratio=16 / 784,
                       roundtrip_psnr_db=18.0, probe_accuracy=0.93, active_units=12, kl_nats=25.5, mutual_info=4.2,
                       iwae_bpd=1.4, kl_per_dim=[3.0, 0.001, 2.0]),
            "ddpm": fam(fid=30.0, bpd_stderr=0.01),
            "ldm": fam(fid=35.0, ms_per_sample=3.0, latent_dims=49, latent_ratio=0.0625, ae_psnr_db=24.0),
        },
        "training": {f: {"objective": "x", "minutes": 3.0, "steps": 100, "final_loss": 0.1, "curve": [[10, 1.0], [20, 0.5]]}
                     for f in ("vae", "ddpm", "ldm")},
        "collapse": {"free_bits": 0.5, "without_free_bits": {"active_units": 0, "kl_nats": 0.1, "mutual_info": 0.01, "kl_per_dim": [0.01] * 4},
                     "with_free_bits": {"active_units": 4, "kl_nats": 8.0, "mutual_info": 2.0, "kl_per_dim": [2.0] * 4}},
        "stages": {"train:vae": {"status": "done"}},
    }


def test_html_is_well_formed_and_every_number_equals_results_json(tmp_path):
    results = fake_results()
    write_report(tmp_path, results)
    root = ET.parse(tmp_path / "report.html").getroot()  # strict XML parser: well-formed or it raises
    table = root.find(".//table[@id='measured']")
    assert [th.text for th in table.findall("./tbody/tr/th")] == ROWS
    on_disk = json.loads(json.dumps(results))
    spans = [s for s in table.iter("span") if "data-key" in s.attrib]
    assert len(spans) > 40
    for span in spans:
        value = lookup(on_disk, span.attrib["data-key"])
        assert value is not None, span.attrib["data-key"]
        assert float(span.text) == pytest.approx(value, rel=5e-4, abs=1e-12), span.attrib["data-key"]
    assert "80.12" in ET.tostring(table, encoding="unicode")
    md = (tmp_path / "report.md").read_text()
    assert all(f"| {row} |" in md for row in ROWS)


def test_figures_are_drawn_and_referenced(tmp_path):
    results = fake_results()
    results["families"]["ddpm"]["sweep"] = [{"sampler": "ddim", "steps": s, "nfe": s, "fid": 50.0 / s, "ms_per_sample": s, "figure": "figures/x.png"}
                                            for s in (10, 20)]
    write_report(tmp_path, results)
    for name in ("quality_vs_nfe", "bpd_bars", "training_curves", "kl_per_dim", "collapse"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 1000, name
    root = ET.parse(tmp_path / "report.html").getroot()
    srcs = [img.attrib["src"] for img in root.iter("img")]
    assert "figures/collapse.png" in srcs and all((tmp_path / s).exists() for s in srcs)
    assert "figures/x.png" not in srcs  # a figure that does not exist is not referenced


def test_claims_follow_the_numbers():
    results = fake_results()
    results["families"]["vae"]["midpoint_fid"] = 20.0
    verdicts = {c["claim"].split(":")[0]: c["verdict"] for c in claims(results)}
    assert verdicts["Interpolation"] == "held"
    assert verdicts["Sample quality"] == "held"
    assert verdicts["VAE samples are often blurry"] == "held"
    assert verdicts["Posterior collapse is a common issue with powerful decoders (VAE only)"] == "held"
    flipped = copy.deepcopy(results)
    flipped["families"]["vae"]["fid"] = 10.0
    flipped["families"]["vae"]["sharpness_ratio"] = 1.2
    flipped["collapse"]["without_free_bits"] = dict(flipped["collapse"]["with_free_bits"])
    flipped["families"]["vae"]["midpoint_fid"] = 500.0
    verdicts = {c["claim"].split(":")[0]: c["verdict"] for c in claims(flipped)}
    assert verdicts["Sample quality"] == "did not hold"
    assert verdicts["VAE samples are often blurry"] == "did not hold"
    assert verdicts["Posterior collapse is a common issue with powerful decoders (VAE only)"] == "did not hold"
    assert verdicts["Interpolation"] == "did not hold"


def test_when_to_use_names_the_measured_winner_and_margin():
    lines = when_to_use(fake_results())
    quality = next(l for l in lines if l.startswith("Best sample quality"))
    assert "Pixel diffusion (DDPM)" in quality.split("(")[0] + quality and "FID 30" in quality and "1.167×" in quality
    speed = next(l for l in lines if l.startswith("Best generation speed"))
    assert speed.startswith("Best generation speed: VAE")
    sharp = next(l for l in lines if l.startswith("Best sharpness"))
    assert sharp.startswith("Best sharpness closest to real data: Pixel diffusion")  # 0.9 beats the VAE's blur (0.45) and ties LDM


def test_a_failed_family_is_reported_not_dropped(tmp_path):
    results = fake_results()
    del results["families"]["ldm"]
    results["stages"]["train:ldm"] = {"status": "failed", "error": "out of memory"}
    write_report(tmp_path, results)
    html = (tmp_path / "report.html").read_text()
    assert "train:ldm failed: out of memory" in html
    assert "Stages that did not finish" in (tmp_path / "report.md").read_text()
