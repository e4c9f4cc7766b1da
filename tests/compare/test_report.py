"""The report from a results dict: table rows, self-consistency with results.json, claims."""

import copy
import json
import math
import xml.etree.ElementTree as ET

import pytest
import torch

from diffvae.compare.report import ROWS, claims, lookup, render_report, when_to_use, write_report


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
        assert float(span.text) == pytest.approx(value, rel=5e-3, abs=1e-12), span.attrib["data-key"]  # 3 significant digits
    assert "80.1" in ET.tostring(table, encoding="unicode") and "80.12" not in ET.tostring(table, encoding="unicode")
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
    results = with_intervals(fake_results(), half=0.5)
    results["families"]["vae"].update(midpoint_fid=20.0, midpoint_fid_ci95=[15.0, 25.0])
    results["families"]["vae"]["kl_nats_ci95"] = [24.5, 26.5]  # the VAE's own decoder: KL 25.5 nats
    results["collapse"]["without_free_bits"]["kl_nats_ci95"] = [0.05, 0.15]  # the PixelCNN decoder's: 0.1
    verdicts = {c["claim"].split(":")[0]: c["verdict"] for c in claims(results)}
    assert verdicts["Interpolation"] == "held"
    assert verdicts["Sample quality"] == "held"
    assert verdicts["VAE samples are often blurry"] == "held"
    assert verdicts["Posterior collapse is a common issue with powerful decoders (VAE only)"] == "held"
    flipped = copy.deepcopy(results)
    flipped["families"]["vae"].update(fid=10.0, fid_ci95=[5.0, 15.0])
    flipped["families"]["vae"].update(sharpness_ratio=1.2, sharpness_ratio_ci95=[1.15, 1.25])
    flipped["collapse"]["without_free_bits"].update(kl_nats=40.0, kl_nats_ci95=[39.0, 41.0])  # the PixelCNN keeps more KL
    flipped["families"]["vae"].update(midpoint_fid=500.0, midpoint_fid_ci95=[495.0, 505.0])
    verdicts = {c["claim"].split(":")[0]: c["verdict"] for c in claims(flipped)}
    assert verdicts["Sample quality"] == "did not hold"
    assert verdicts["VAE samples are often blurry"] == "did not hold"
    assert verdicts["Posterior collapse is a common issue with powerful decoders (VAE only)"] == "did not hold"
    assert verdicts["Interpolation"] == "did not hold"


def test_a_sample_quality_verdict_carried_by_one_family_names_it():
    """"Diffusion beats the VAE" held because one iterative family did: the claim says which, and only then."""
    results = with_intervals(fake_results(), half=1.0)
    results["families"]["ddpm"].update(fid=120.0, fid_ci95=[110.0, 130.0])  # worse than the VAE's 80; the LDM (35) better
    claim = next(c for c in claims(results) if c["claim"].startswith("Sample quality"))
    assert claim["verdict"] == "held" and claim["evidence"].endswith("ahead of the VAE: LDM only")
    results["families"]["ddpm"].update(fid=30.0, fid_ci95=[20.0, 40.0])  # both better: nothing to single out
    claim = next(c for c in claims(results) if c["claim"].startswith("Sample quality"))
    assert claim["verdict"] == "held" and "ahead of" not in claim["evidence"]


def test_when_to_use_names_the_measured_winner_and_margin():
    lines = when_to_use(with_intervals(fake_results(), half=0.2))
    quality = next(l for l in lines if l.startswith("Best sample quality"))
    # DDPM 30 ± 2 vs LDM 35 ± 2: the difference 5 ± 2.83 (unpaired, from the intervals) is decided
    assert quality.startswith("Best sample quality: Pixel diffusion (DDPM) (FID@200 30 [28, 32]; Latent diffusion 5 higher")
    speed = next(l for l in lines if l.startswith("Best generation speed"))
    assert speed.startswith("Best generation speed: VAE")
    sharp = next(l for l in lines if l.startswith("Best sharpness"))
    # 0.9 beats the VAE's blur (0.45) and ties LDM exactly: a tie names no winner
    assert sharp.startswith("Best sharpness: not decided at this budget")
    assert "Latent diffusion 0 apart" in sharp


def test_a_failed_family_is_reported_not_dropped(tmp_path):
    results = fake_results()
    del results["families"]["ldm"]
    results["stages"]["train:ldm"] = {"status": "failed", "error": "out of memory"}
    write_report(tmp_path, results)
    html = (tmp_path / "report.html").read_text()
    assert "train:ldm failed: out of memory" in html
    assert "Stages that did not finish" in (tmp_path / "report.md").read_text()


# ----------------------------------------------------------------------------- intervals and verdicts

def with_intervals(results, half=1.0):
    """Give every family 95% intervals of half-width ``half`` (× the FID scale) around its figures."""
    out = copy.deepcopy(results)
    for r in out["families"].values():
        r["n_samples"] = 200
        r["fid_ci95"] = [r["fid"] - 10 * half, r["fid"] + 10 * half]
        r["midpoint_fid_ci95"] = [r["midpoint_fid"] - 10 * half, r["midpoint_fid"] + 10 * half]
        r["ms_per_sample_ci95"] = [r["ms_per_sample"] * (1 - 0.1 * half), r["ms_per_sample"] * (1 + 0.1 * half)]
        r["ms_per_sample_repeats"] = 5
        r["sharpness_ratio_ci95"] = [r["sharpness_ratio"] - 0.05 * half, r["sharpness_ratio"] + 0.05 * half]
    return out


def test_separated_and_decide_follow_the_intervals():
    from diffvae.compare.report import Figure, decide, separated

    assert separated((1.0, 2.0), (2.5, 3.0)) and separated((2.5, 3.0), (1.0, 2.0))
    assert not separated((1.0, 2.0), (1.9, 3.0)) and not separated((1.0, 3.0), (1.5, 2.0))  # overlap, nested
    a, b = Figure(10.0, (9.0, 11.0), 100), Figure(13.0, (12.0, 14.0), 100)
    assert decide(a, b, lower_is_better=True) == "a" and decide(a, b, lower_is_better=False) == "b"
    wide = Figure(13.0, (10.5, 15.5), 100)
    assert decide(a, wide, True) == "undecided"
    # the interval, not the value, says which is better (FID's intervals are bias-corrected)
    assert decide(Figure(30.0, (5.0, 10.0)), Figure(28.0, (15.0, 20.0)), True) == "a"
    # without intervals (exact figures): a plain comparison; an exact tie decides nothing
    assert decide(Figure(1.0), Figure(2.0), True) == "a" and decide(Figure(2.0), Figure(2.0), True) == "undecided"


def test_samples_to_decide_is_an_80_percent_power_sample_size():
    from scipy.stats import norm

    from diffvae.compare.report import Figure, samples_to_decide

    # half-widths 2 and 2 at n = 100: one unit's sd σ = 2·√100/1.96 on each side, the difference's σ√2
    a, b = Figure(10.0, (8.0, 12.0), 100), Figure(12.0, (10.0, 14.0), 100)
    sigma = math.sqrt(2) * 2 * 10 / norm.ppf(0.975)
    n = samples_to_decide(a, b)
    assert n == math.ceil(((norm.ppf(0.975) + norm.ppf(0.8)) * sigma / 2) ** 2)
    # at that n the test has 80% power (normal approximation, independent references)
    se = sigma / math.sqrt(n)
    assert norm.sf(norm.ppf(0.975) - 2 / se) == pytest.approx(0.8, abs=0.005)
    assert samples_to_decide(Figure(1.0, (0.0, 2.0), 10), Figure(1.0, (0.5, 1.5), 10)) is None  # same value


def test_a_verdict_flips_to_not_decided_when_the_intervals_overlap_and_back():
    # FID: DDPM 30, LDM 35, VAE 80 (fake_results). Narrow intervals separate VAE from diffusion.
    narrow = with_intervals(fake_results(), half=0.5)
    verdicts = {c["claim"].split(":")[0]: c for c in claims(narrow)}
    assert verdicts["Sample quality"]["verdict"] == "held"
    assert "VAE 80.1 [75.1, 85.1]" in verdicts["Sample quality"]["evidence"]
    quality = next(l for l in when_to_use(narrow) if l.startswith("Best sample quality"))
    assert quality.startswith("Best sample quality: not decided at this budget")  # DDPM 30 ± 5 vs LDM 35 ± 5: p = 0.17
    assert "(Pixel diffusion (DDPM) leads: FID@200 30 [25, 35]; Latent diffusion 5 higher" in quality
    assert "would decide it" not in quality  # FID@N's difference depends on N: no honest sample size
    # widen the intervals until the VAE overlaps the diffusion families: no verdict
    wide = with_intervals(fake_results(), half=5.0)
    verdicts = {c["claim"].split(":")[0]: c for c in claims(wide)}
    assert verdicts["Sample quality"]["verdict"] == "not decided at this budget"
    # and narrow enough for DDPM vs LDM to separate: the winner is named again
    tight = with_intervals(fake_results(), half=0.2)
    quality = next(l for l in when_to_use(tight) if l.startswith("Best sample quality"))
    assert quality.startswith("Best sample quality: Pixel diffusion (DDPM) (FID@200 30 [28, 32]; Latent diffusion 5 higher")


def test_every_claim_with_intervals_is_decided_only_when_they_separate():
    results = with_intervals(fake_results(), half=0.5)
    # generation speed: VAE 0.05 ± 5% vs DDPM 12.5 ± 5%: separate → held
    verdicts = {c["claim"].split(":")[0]: c["verdict"] for c in claims(results)}
    assert verdicts["Generation"] == "held"
    results["families"]["ddpm"]["ms_per_sample"] = 0.051  # now 0.051 ± 5% overlaps 0.05 ± 5%
    results["families"]["ddpm"]["ms_per_sample_ci95"] = [0.048, 0.054]
    verdicts = {c["claim"].split(":")[0]: c for c in claims(results)}
    assert verdicts["Generation"]["verdict"] == "not decided at this budget"
    assert "timed sampling batches per family would decide it" in verdicts["Generation"]["evidence"]
    assert verdicts["Latent dimension"]["verdict"] == "held"  # exact figures keep a plain verdict


def test_table_cells_show_the_intervals_and_tag_them_in_html(tmp_path):
    results = with_intervals(fake_results(), half=0.5)
    results["families"]["ldm"]["fid"], results["families"]["ldm"]["fid_ci95"] = 412.0, [380.0, 450.0]
    write_report(tmp_path, results)
    md = (tmp_path / "report.md").read_text()
    assert "FID 412 [380, 450]" in md
    root = ET.parse(tmp_path / "report.html").getroot()
    keys = {s.attrib["data-key"]: s.text for s in root.iter("span") if "data-key" in s.attrib}
    assert keys["families.ldm.fid_ci95.0"] == "380" and keys["families.ldm.fid_ci95.1"] == "450"
    assert "families.vae.ms_per_sample_ci95.1" in keys


def test_an_exact_round_trip_is_written_as_exact_not_as_a_missing_number(tmp_path):
    """An invertible family's round trip can be exact: its PSNR is infinite (null in JSON) beside an MSE of 0."""
    results = fake_results()
    results["families"]["ddpm"].update(roundtrip_psnr_db=None, roundtrip_mse=0.0)
    write_report(tmp_path, results)
    row = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| Interpolation |"))
    cells = row.split("|")[2:-1]  # vae, ddpm, ldm
    assert "round trip exact (MSE 0)" in cells[1] and "dB" not in cells[1]
    assert "round trip PSNR 18 dB" in cells[0] and "round trip PSNR 30 dB" in cells[2]


# ----------------------------------------------------------------------------- the report bugs

def _ldm_results_from_the_bound():
    """A results entry for the LDM built by the real bound function (means over images)."""
    from diffvae.latent.bound import latent_diffusion_bound

    g = torch.Generator().manual_seed(0)
    n = 16
    per_image = latent_diffusion_bound(50 + torch.rand(n, generator=g, dtype=torch.float64),
                                       300 + 10 * torch.rand(n, generator=g, dtype=torch.float64),  # H: large
                                       400 + torch.rand(n, generator=g, dtype=torch.float64), -20.0, 784)
    return {k: float(v.mean()) for k, v in per_image.items()}


def test_bpd_stack_adds_up_to_the_total_with_the_entropy_subtracted():
    from diffvae.compare.figures import bpd_stack

    results = fake_results()
    results["families"]["ldm"].update(_ldm_results_from_the_bound())
    stack = bpd_stack(results, "ldm")
    parts = dict(stack.parts)
    assert sum(parts.values()) == pytest.approx(results["families"]["ldm"]["bpd"], rel=1e-12)
    assert parts["−entropy H[q(z|x)]"] == pytest.approx(-results["families"]["ldm"]["entropy_bpd"])
    assert "remainder (not itemised)" not in parts and stack.note is None


def _bar_sums(results, monkeypatch, tmp_path, markers=False):
    """Signed sum of the bar heights drawn for each family in the bits/dim figure (and the height of
    the total's marker drawn over each family)."""
    from matplotlib.collections import PathCollection

    from diffvae.compare import figures

    captured = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: captured.setdefault("fig", fig))
    assert figures.bpd_bars(results, tmp_path / "bars.png")
    ax = captured["fig"].axes[0]
    names = [t.get_text() for t in ax.get_xticklabels()]
    sums = dict.fromkeys(names, 0.0)
    for rect in ax.patches:
        sums[names[round(rect.get_x() + rect.get_width() / 2)]] += rect.get_height()
    tops = {names[round(x)]: y for c in ax.collections if isinstance(c, PathCollection) for x, y in c.get_offsets()}
    return (sums, tops) if markers else sums


def test_bpd_bars_add_up_to_each_familys_total(monkeypatch, tmp_path):
    """Bug: the LDM's entropy part (+H, subtracted in the bound) was stacked with a + sign, so its
    bars overshot the total by 2H."""
    results = fake_results()
    results["families"]["ldm"].update(_ldm_results_from_the_bound())
    results["families"]["vae"].update(recon_bpd=1.2, kl_bpd=0.3, bpd=1.5)
    results["families"]["ddpm"].update(decoder_bpd=0.5, diffusion_bpd=0.9, prior_bpd=0.1, bpd=1.5)
    sums = _bar_sums(results, monkeypatch, tmp_path)
    for fam in ("vae", "ddpm", "ldm"):
        assert sums[fam] == pytest.approx(results["families"][fam]["bpd"], rel=1e-9), fam


def test_bits_per_dim_shows_the_interval_of_the_mean_for_ddpm_and_ldm_not_the_mc_error(tmp_path):
    """Bugs: the table read ``bpd_stderr`` (the LDM wrote ``stderr_bpd``, so its ± never showed),
    and that key was the mean per-image Monte-Carlo error, not the error of the mean over images."""
    results = fake_results()
    for fam in ("ddpm", "ldm"):
        results["families"][fam].update(bpd=1.5, bpd_n=200, bpd_sem=0.02, bpd_ci95=[1.4608, 1.5392])
    results["families"]["ddpm"]["bpd_stderr"] = 0.0123  # per-image MC error (old name)
    results["families"]["ldm"]["stderr_bpd"] = 0.0123  # the same, as the LDM wrote it
    write_report(tmp_path, results)
    md = (tmp_path / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| Bits/dim"))
    cells = row.split(" | ")
    for cell in cells[2:]:  # DDPM, LDM
        assert "1.5 [1.46, 1.54] over 200 held-out images" in cell, cell
        assert "0.0123" not in cell, cell


def test_bits_per_dim_interval_from_the_sem_when_no_interval_is_stored(tmp_path):
    results = fake_results()
    results["families"]["ldm"].update(bpd=2.0, bpd_sem=0.05, bpd_n=100)
    write_report(tmp_path, results)
    md = (tmp_path / "report.md").read_text()
    assert "LSGM bound 2 [1.9, 2.1] over 100 held-out images" in md  # 2 ± 1.96·0.05


def test_parts_from_a_subset_of_the_images_are_labelled_and_add_up_to_their_own_total(monkeypatch, tmp_path):
    """Bug: the bound's parts came from 8 images while the total came from 200, drawn as one stack
    whose bars did not reach the total marked on them."""
    results = fake_results()
    results["families"]["ddpm"].update(bpd=1.5, bpd_n=200, bound_parts_n=8, bpd_full_subset=1.62,
                                       decoder_bpd=0.52, diffusion_bpd=1.0, prior_bpd=0.1)
    write_report(tmp_path, results)
    assert "parts from 8 of the 200 images (their bound 1.62)" in (tmp_path / "report.md").read_text()
    sums, tops = _bar_sums(results, monkeypatch, tmp_path, markers=True)
    assert sums["ddpm"] == pytest.approx(tops["ddpm"]) and tops["ddpm"] == pytest.approx(1.62)

    from diffvae.compare.figures import bpd_stack

    stack = bpd_stack(results, "ddpm")
    assert stack.total == 1.62 and stack.images == 8 and sum(v for _, v in stack.parts) == pytest.approx(1.62)


def test_mutual_information_at_its_ceiling_is_reported_as_a_lower_bound(tmp_path):
    """Bug: MI = log N = 5.30 nats (the estimator's ceiling at N = 200) was printed as if measured."""
    results = fake_results()
    results["families"]["vae"].update(mutual_info=math.log(200), mutual_info_max=math.log(200))
    write_report(tmp_path, results)
    md = (tmp_path / "report.md").read_text()
    assert "MI 5.3 nats (at the log N = 5.30 ceiling of the estimator: a lower bound)" in md
    results["families"]["vae"].update(mutual_info=2.0)  # well below the ceiling: no note
    write_report(tmp_path, results)
    md = (tmp_path / "report.md").read_text()
    assert "MI 2 nats" in md and "ceiling" not in md


def test_collapse_evidence_labels_free_bits_in_nats_per_latent_dimension_and_the_mi_ceiling():
    """Bug: free bits was printed as "free bits/dim" but λ is nats per latent dimension."""
    results = fake_results()
    results["collapse"]["without_free_bits"].update(mutual_info=math.log(500), mutual_info_max=math.log(500))
    evidence = next(c["evidence"] for c in claims(results) if c["claim"].startswith("Posterior collapse"))
    assert "free bits λ = 0.5 nats per latent dimension" in evidence
    assert "bits/dim" not in evidence
    assert "MI 6.21 (at the log N = 6.21 ceiling of the estimator: a lower bound) nats" in evidence


def test_a_collapse_study_that_trained_too_little_decides_nothing():
    """Both runs collapsed: the free-bits run's KL (0.05 nats) is far below its floor λ·L = 2 nats,
    so the study cannot show the cure (a 15-minute compare on a slow CPU gets ~17 PixelCNN steps)."""
    results = fake_results()
    for arm in ("without_free_bits", "with_free_bits"):
        results["collapse"][arm] = {"active_units": 0, "kl_nats": 0.05, "mutual_info": 0.01, "kl_per_dim": [0.0125] * 4}
    verdict = next(c for c in claims(results) if c["claim"].startswith("Posterior collapse"))
    assert verdict["verdict"] == "not decided at this budget"
    assert "trained too little" in verdict["evidence"]


# ----------------------------------------------------------------------------- three significant digits

def test_fmt_prints_three_significant_digits():
    from diffvae.compare.report import fmt

    assert [fmt(v) for v in (0.08899, 0.05634, 38.57, 80.123456, 1.5, 2.0)] == ["0.089", "0.0563", "38.6", "80.1", "1.5", "2"]
    assert fmt(1234.5) == "1230" and fmt(999.96) == "1000" and fmt(123456.0) == "123000"  # no "1.23e+03"
    assert fmt(7) == "7" and fmt(None) == "—" and fmt(float("nan")) == "—" and fmt(True) == "True"
    rng = torch.Generator().manual_seed(0)
    for v in (10 ** (8 * torch.rand(500, generator=rng, dtype=torch.float64) - 4)).tolist():
        text = fmt(v)
        assert float(text) == pytest.approx(v, rel=5e-3)  # rounded to 3 significant digits, no further
        mantissa = text.split("e")[0].replace(".", "").lstrip("0").rstrip("0")  # its significant digits
        assert len(mantissa) <= 3, (v, text)


# ----------------------------------------------------------------------------- at a glance

def with_best(results):
    """results["best"] in the shared schema: quality and likelihood decided, speed decided, representation not."""
    out = copy.deepcopy(results)
    out["best"] = {
        "sample quality": {"family": "ddpm", "metric": "kid", "label": "KID@200", "value": 0.0123, "ci95": [0.00812, 0.0165],
                           "runner_up": "ldm", "decided": True, "p_value": 0.003, "confidence": "decided, p = 0.003 (Holm over 3)",
                           "text": "DDPM"},
        "generation speed": {"family": "vae", "metric": "ms_per_sample", "label": "ms/sample", "value": 0.05,
                             "ci95": [0.045, 0.055], "runner_up": "ldm", "decided": True, "p_value": 1e-6,
                             "confidence": "decided, p < 0.001", "text": "VAE"},
        "likelihood": {"family": "vae", "metric": "bpd", "label": "bits/dim (bound)", "value": 1.4, "ci95": [1.35, 1.45],
                       "runner_up": "ddpm", "decided": True, "p_value": 0.01, "confidence": "decided, p = 0.01", "text": "VAE"},
        "representation": {"family": None, "metric": "probe_accuracy", "label": "probe accuracy", "value": 0.93,
                           "ci95": [0.9, 0.96], "runner_up": "ldm", "decided": False, "p_value": 0.2,
                           "confidence": "not decided: about 900 samples would decide it", "text": "-"},
    }
    return out


def _glance(tmp_path, results):
    render_report(tmp_path, results)  # the report as results say it (write_report would decide afresh first)
    root = ET.parse(tmp_path / "report.html").getroot()  # well-formed, or it raises
    table = root.find(".//table[@id='at-a-glance']")
    rows = {tr.find("th").text: [td for td in tr.findall("td")] for tr in table.findall("./tbody/tr")}
    return root, table, rows


def test_the_report_opens_with_the_family_to_pick_for_each_use(tmp_path):
    results = with_best(fake_results())
    root, table, rows = _glance(tmp_path, results)
    assert list(rows) == ["Sample quality", "Generation speed", "Likelihood", "Representation", "Editing / interpolation"]
    text = lambda td: "".join(td.itertext())
    assert [text(rows[u][0]) for u in rows] == ["Pixel diffusion (DDPM)", "VAE", "VAE", "not decided", "not decided"]
    assert text(rows["Sample quality"][1]) == "KID@200" and text(rows["Sample quality"][2]) == "0.0123 [0.00812, 0.0165]"
    assert text(rows["Sample quality"][4]) == "decided, p = 0.003 (Holm over 3)"
    assert text(rows["Representation"][4]) == "not decided: about 900 samples would decide it"
    assert text(rows["Editing / interpolation"][4]) == "not decided: not measured"  # no entry: said, not invented
    on_disk = json.loads(json.dumps(results))
    spans = [s for s in table.iter("span") if "data-key" in s.attrib]
    assert len(spans) == 4 * 3
    for span in spans:
        assert float(span.text) == pytest.approx(lookup(on_disk, span.attrib["data-key"]), rel=5e-3), span.attrib["data-key"]
    # it comes first, before the measured table; the Pareto figure sits under it, not again in the list of figures
    headings = [h.text for h in root.iter("h2")]
    assert headings[0].startswith("At a glance") and headings.index("Measured comparison") == 1
    srcs = [img.attrib["src"] for img in root.iter("img")]
    assert srcs[0] == "figures/pareto.png" and srcs.count("figures/pareto.png") == 1 and (tmp_path / srcs[0]).exists()
    md = (tmp_path / "report.md").read_text()
    assert md.index("## At a glance") < md.index("![") < md.index("## Measured comparison")
    assert "| Sample quality | Pixel diffusion (DDPM) | KID@200 | 0.0123 [0.00812, 0.0165] | Latent diffusion |" in md


def test_controllability_is_a_use_only_when_the_compare_was_conditional(tmp_path):
    results = with_best(fake_results())
    _, _, rows = _glance(tmp_path, results)
    assert "Controllability" not in rows
    results["conditional"] = True
    results["best"]["controllability"] = {"family": "ddpm", "metric": "conditional_accuracy", "label": "accuracy", "value": 0.9,
                                          "ci95": [0.85, 0.94], "runner_up": "vae", "decided": True, "p_value": 0.001,
                                          "confidence": "decided, p = 0.001", "text": "-"}
    _, _, rows = _glance(tmp_path, results)
    assert "".join(rows["Controllability"][0].itertext()) == "Pixel diffusion (DDPM)"


def test_without_best_entries_the_glance_decides_only_on_separate_intervals(tmp_path):
    """An older results.json has no results["best"]: a use is decided only where the best's and the runner-up's
    intervals do not overlap, else "not decided"; nothing is ranked without a second family."""
    results = with_intervals(fake_results(), half=0.5)  # FID: DDPM 30 ± 5 vs LDM 35 ± 5 overlap; speed: VAE far ahead
    assert "best" not in results
    _, _, rows = _glance(tmp_path, results)
    text = lambda td: "".join(td.itertext())
    assert text(rows["Sample quality"][0]) == "not decided" and "overlap" in text(rows["Sample quality"][4])
    assert text(rows["Generation speed"][0]) == "VAE" and text(rows["Generation speed"][2]) == "0.05 [0.0475, 0.0525]"
    assert text(rows["Generation speed"][3]) == "Latent diffusion"


def test_likelihood_ranks_bounds_and_shows_ode_estimates_apart(tmp_path):
    from diffvae.compare.report import best_from_separate_intervals, likelihood_figures

    results = fake_results()
    results["families_requested"].append("flow")
    results["families"]["flow"] = dict(results["families"]["ddpm"], bpd=0.9, bpd_ci95=[0.85, 0.95])  # an ODE estimate, lowest
    results["families"]["vae"].update(bpd=1.2, bpd_ci95=[1.15, 1.25])
    results["families"]["ddpm"].update(bpd=1.5, bpd_ci95=[1.45, 1.55], ode_bpd=1.1, ode_bpd_sem=0.01)
    results["families"]["ldm"].update(bpd=1.7, bpd_ci95=[1.65, 1.75])
    bounds, estimates = likelihood_figures(results)
    assert set(bounds) == {"vae", "ddpm", "ldm"} and set(estimates) == {"flow", "ddpm:ode"}
    best = best_from_separate_intervals(results)["likelihood"]
    assert best["family"] == "vae" and best["runner_up"] == "ddpm"  # not the flow's lower estimate
    write_report(tmp_path, results)
    md = (tmp_path / "report.md").read_text()
    note = next(line for line in md.splitlines() if line.startswith("Likelihood ranks variational bounds only"))
    assert "flow matching (its ODE likelihood) 0.9 [0.85, 0.95]" in note
    assert "DDPM (probability-flow ODE) 1.1 [1.08, 1.12]" in note  # 1.1 ± 1.96·0.01


# ----------------------------------------------------------------------------- differences of two figures

def test_unpaired_difference_matches_the_normal_reference():
    from scipy import stats

    from diffvae.compare.report import Figure, unpaired_difference

    a, b = Figure(10.0, (8.0, 12.0)), Figure(13.0, (12.0, 14.0))  # standard errors 2/1.96 and 1/1.96
    diff, ci, p = unpaired_difference(a, b)
    se = math.hypot(2.0, 1.0) / stats.norm.ppf(0.975)
    assert diff == -3.0 and ci == pytest.approx((-3.0 - 1.96 * se, -3.0 + 1.96 * se), rel=1e-4)
    assert p == pytest.approx(2 * stats.norm.sf(3.0 / se), rel=1e-9)
    # asymmetric intervals: each side combines the halves that move the difference that way
    diff, ci, _ = unpaired_difference(Figure(5.0, (4.0, 8.0)), Figure(1.0, (0.5, 3.0)))
    assert ci == pytest.approx((4.0 - math.hypot(1.0, 2.0), 4.0 + math.hypot(3.0, 0.5)))
    # no interval, or one that does not contain its own figure: nothing to combine
    assert unpaired_difference(Figure(1.0), b) is None and unpaired_difference(Figure(30.0, (5.0, 10.0)), b) is None


def test_holm_matches_its_step_down_definition():
    from diffvae.compare.report import holm

    rng = torch.Generator().manual_seed(1)
    for _ in range(50):
        p = torch.rand(int(torch.randint(1, 7, (1,), generator=rng)), generator=rng).tolist()
        m, order = len(p), sorted(range(len(p)), key=lambda i: p[i])
        expected = [0.0] * m
        for rank, i in enumerate(order):  # max over the earlier steps of (m − k)·p_(k), capped at 1
            expected[i] = min(1.0, max((m - k) * p[order[k]] for k in range(rank + 1)))
        assert holm(p) == pytest.approx(expected)


# ----------------------------------------------------------------------------- claims about families, not defaults

def ldm_sweep_results():
    """DDPM and LDM with sampler sweeps. At their default samplers the LDM looks worse (FID 60 vs 30), but its
    dpm++ setting at 2 ms/sample beats the DDPM's best (FID 30 at 10 ms/sample)."""
    results = with_intervals(fake_results(), half=0.2)
    ddpm, ldm = results["families"]["ddpm"], results["families"]["ldm"]
    ddpm.update(fid=30.0, fid_ci95=[28.0, 32.0], ms_per_sample=10.0, ms_per_sample_ci95=[9.5, 10.5], sampler="dpm++2m", nfe=20)
    ldm.update(fid=60.0, fid_ci95=[57.0, 63.0], ms_per_sample=40.0, ms_per_sample_ci95=[38.0, 42.0], sampler="ancestral", nfe=100)
    ddpm["sweep"] = [{"sampler": "ddim", "steps": 10, "nfe": 10, "n": 200, "fid": 45.0, "fid_ci95": [42.0, 48.0], "ms_per_sample": 5.0,
                      "figure": "figures/x.png"}]
    ldm["sweep"] = [{"sampler": "dpm++2m", "steps": 10, "nfe": 10, "n": 200, "fid": 20.0, "fid_ci95": [18.0, 22.0], "ms_per_sample": 2.0,
                     "figure": "figures/y.png"},
                    {"sampler": "dpm++2m", "steps": 40, "nfe": 40, "n": 200, "fid": 15.0, "fid_ci95": [13.0, 17.0], "ms_per_sample": 12.0,
                     "figure": "figures/z.png"}]  # better still, but costs more than the DDPM's best: not matched
    return results


def _ldm_claim(results):
    return next(c for c in claims(results) if c["claim"] == "Latent diffusion combines the strengths of both")


def test_latent_diffusion_is_judged_at_matched_cost_on_the_sweeps_not_the_default_samplers():
    from scipy import stats

    results = ldm_sweep_results()
    claim = _ldm_claim(results)
    assert claim["verdict"] == "held"
    assert "LDM (dpm++2m, 10 steps) FID 20 [18, 22] at 2 ms/sample vs DDPM (dpm++2m, 20 NFE, main evaluation) 30 [28, 32]" in claim["evidence"]
    entry = next(e for e in results["comparisons"] if e["question"] == "claim:Latent diffusion combines the strengths of both")
    se = math.hypot(2.0, 2.0) / stats.norm.ppf(0.975)
    assert (entry["a"], entry["b"], entry["metric"], entry["decided"]) == ("ldm", "ddpm", "fid_at_matched_cost", "a")
    assert entry["difference"] == -10.0 and entry["ci95"] == pytest.approx([-10 - 1.96 * se, -10 + 1.96 * se], rel=1e-4)
    assert entry["p_value"] == pytest.approx(2 * stats.norm.sf(10 / se)) and entry["lower_is_better"] is True
    assert entry["ci95"][0] <= entry["difference"] <= entry["ci95"][1]


def test_latent_diffusion_claim_fails_or_stays_open_by_the_matched_difference():
    results = ldm_sweep_results()
    results["families"]["ldm"]["sweep"][0].update(fid=40.0, fid_ci95=[38.0, 42.0])  # worse than the DDPM at matched cost
    assert _ldm_claim(results)["verdict"] == "did not hold"
    results = ldm_sweep_results()
    results["families"]["ldm"]["sweep"][0].update(fid=29.0, fid_ci95=[26.0, 32.0])  # the intervals allow either
    assert _ldm_claim(results)["verdict"] == "not decided at this budget"
    results = ldm_sweep_results()
    for row in results["families"]["ldm"]["sweep"]:
        row["ms_per_sample"] = 50.0  # no LDM setting as cheap as the DDPM's best: better, but only at a higher cost
    claim = _ldm_claim(results)
    assert claim["verdict"] == "not decided at this budget" and "no LDM setting is as cheap as DDPM's best" in claim["evidence"]
    entry = next(e for e in results["comparisons"] if e["question"] == f"claim:{claim['claim']}")
    assert entry["metric"] == "fid_ldm_costlier" and entry["decided"] == "a"  # the LDM's 15 at 50 ms beats 30 at 10 ms
    for row in results["families"]["ldm"]["sweep"]:
        row.update(fid=45.0, fid_ci95=[43.0, 47.0])  # costlier and worse everywhere: dominated
    assert _ldm_claim(results)["verdict"] == "did not hold"
    results = ldm_sweep_results()
    del results["families"]["ldm"]["sweep"][0]["fid_ci95"]  # a sweep FID without an interval decides nothing
    assert _ldm_claim(results)["verdict"] == "not decided at this budget"


def test_latent_diffusion_against_two_pixel_families_controls_the_familywise_error():
    from diffvae.compare.report import holm

    results = ldm_sweep_results()
    results["families_requested"].append("flow")
    results["families"]["flow"] = dict(results["families"]["ddpm"], fid=21.5, fid_ci95=[19.0, 24.0], sweep=[])
    claim = _ldm_claim(results)
    entries = [e for e in results["comparisons"] if e["question"] == "claim:Latent diffusion combines the strengths of both"]
    assert [e["b"] for e in entries] == ["ddpm", "flow"] and all("Holm over 2" in e["method"] for e in entries)
    from diffvae.compare.report import Figure, unpaired_difference

    raw = [unpaired_difference(Figure(20.0, (18.0, 22.0)), Figure(f, ci))[2] for f, ci in ((30.0, (28.0, 32.0)), (21.5, (19.0, 24.0)))]
    assert [e["p_value"] for e in entries] == pytest.approx(holm(raw))
    assert entries[1]["decided"] is None and claim["verdict"] == "not decided at this budget"  # 20 vs 21.5: open


def test_class_coverage_shows_a_collapse_as_a_number(tmp_path):
    """Issue 24: on labelled data the Sample quality cell carries each family's class entropy / its maximum (with
    its interval, tagged with its results.json path) and the share of classes under half their expected frequency,
    and a note under the at-a-glance table lists them side by side; unlabelled data has neither."""
    results = fake_results()
    results["families"]["ldm"].update(class_entropy_ratio=0.30103, class_entropy_ratio_ci95=[0.29, 0.312], classes_below_half=0.8)
    results["families"]["vae"].update(class_entropy_ratio=0.98, classes_below_half=0.0)
    render_report(tmp_path, results)
    md = (tmp_path / "report.md").read_text()
    quality = next(line for line in md.splitlines() if line.startswith("| Sample quality | FID")).split(" | ")  # the measured table
    assert "class entropy / max 0.301 [0.29, 0.312], share of classes under half their expected frequency 0.8" in quality[3]  # LDM
    assert "class entropy / max 0.98, share of classes under half their expected frequency 0" in quality[1]  # VAE
    assert "class entropy" not in quality[2]  # DDPM: not measured, nothing invented
    note = next(line for line in md.splitlines() if line.startswith("Class coverage"))
    assert note.endswith(": VAE 0.98 (0 below half), LDM 0.301 (0.8 below half).")
    root = ET.parse(tmp_path / "report.html").getroot()
    keys = {s.attrib["data-key"]: s.text for s in root.iter("span") if "data-key" in s.attrib}
    assert keys["families.ldm.class_entropy_ratio"] == "0.301" and keys["families.ldm.class_entropy_ratio_ci95.1"] == "0.312"
    assert keys["families.ldm.classes_below_half"] == "0.8"
    assert any((p.text or "").startswith("Class coverage") for p in root.iter("p"))
    render_report(tmp_path, fake_results())
    assert "Class coverage" not in (tmp_path / "report.md").read_text()
