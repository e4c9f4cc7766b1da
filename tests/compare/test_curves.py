"""Learning curves at equal compute: crossovers (never extrapolated), the choice of snapshots, the
``curves`` stage's results schema on a real tiny run, the equal-time budget split and ``--split``."""

import math

import pytest
import torch

from diffvae.api import DataConfig, load, train_run
from diffvae.cli import main
from diffvae.compare import curves as curves_module
from diffvae.compare.curves import (
    CurveSettings,
    compare_curves,
    crossover_decisions,
    crossover_sentences,
    evaluate_snapshot,
    learning_curves,
    pick_snapshots,
)
from diffvae.compare.pipeline import parse_split, plan
from diffvae.vae.family import COLLAPSE_SHARE
from diffvae.errors import DiffvaeError
from diffvae.forecast import MIN_POINTS as FORECAST_MIN_POINTS
from diffvae.metrics.distances import fid
from diffvae.snapshots import read_index, snapshot_folder
from diffvae.train import TrainConfig
from diffvae.vae.model import VAE, VAEConfig

# ----------------------------------------------------------------------------- crossovers


def test_a_crossing_is_found_by_linear_interpolation_between_measured_points():
    result = compare_curves("ldm", [(1.0, 10.0), (3.0, 2.0)], "vae", [(1.0, 6.0), (2.0, 6.0), (3.0, 6.0)])
    assert result.overlap == (1.0, 3.0)
    assert len(result.crossings) == 1
    crossing = result.crossings[0]
    assert crossing.minutes == pytest.approx(2.0) and (crossing.leader, crossing.trailer) == ("ldm", "vae")
    assert result.leader_throughout is None


def test_no_crossing_is_extrapolated_beyond_either_curve():
    # ldm falls fast, but it was measured only up to 2 min; extended as a line, it would pass the VAE
    # at about 2.3 min, inside the VAE's range but outside its own
    ldm = [(1.0, 10.0), (2.0, 6.0)]
    vae = [(1.5, 5.0), (4.0, 4.5)]
    result = compare_curves("ldm", ldm, "vae", vae)
    assert result.overlap == (1.5, 2.0)
    assert result.crossings == [] and result.leader_throughout == "vae"


def test_curves_measured_on_disjoint_ranges_are_not_compared():
    result = compare_curves("a", [(0.1, 5.0), (0.2, 4.0)], "b", [(0.5, 1.0), (1.0, 0.5)])
    assert result.overlap is None and result.crossings == [] and result.leader_throughout is None


def test_several_crossings_and_a_touch_without_a_change_of_leader():
    a = [(0.0, 1.0), (1.0, 3.0), (2.0, 1.0), (3.0, 2.0), (4.0, 0.0)]
    b = [(0.0, 2.0), (4.0, 2.0)]
    # a − b: −1, +1, −1, 0, −2: b leads from 0.5, a from 1.5; a touches b at 3 and stays ahead
    result = compare_curves("a", a, "b", b)
    assert [(c.minutes, c.leader) for c in result.crossings] == [(pytest.approx(0.5), "b"), (pytest.approx(1.5), "a")]
    touch = compare_curves("a", [(0.0, 1.0), (1.0, 2.0), (2.0, 1.0)], "b", [(0.0, 2.0), (2.0, 2.0)])
    assert touch.crossings == [] and touch.leader_throughout == "a"


def test_higher_is_better_and_missing_points():
    result = compare_curves("a", [(0.0, 0.1), (1.0, None), (2.0, 0.9)], "b", [(0.0, 0.5), (2.0, 0.5)], lower_is_better=False)
    assert [(c.minutes, c.leader) for c in result.crossings] == [(pytest.approx(1.0), "a")]


def test_crossover_sentences_state_only_crossings_the_intervals_resolve():
    def curve(points, half=1.0):
        return [{"minutes": m, "gflop": 1.0, "fid": f, "fid_ci95": [f - half, f + half], "bpd": b,
                 "bpd_sem": half / 1.959963984540054 / 10} for m, f, b in points]

    results = {"learning_curves": {"vae": curve([(0.5, 20.0, 1.5), (2.0, 18.0, 1.4)]),
                                   "ldm": curve([(1.0, 40.0, 3.0), (3.0, 10.0, 2.5)])},
               "learning_curve_settings": {"clock": "CPU-minutes"}}
    lines = crossover_sentences(results)
    # on [1, 2]: vae 19.33 → 18, ldm 40 → 25: the VAE leads FID there, decided at both times
    assert ("VAE led Latent diffusion in FID throughout the range both measured (both measured over 1–2 CPU-minutes; "
            "decided at every time).") in lines
    assert any(line.startswith("VAE led Latent diffusion in bits/dim throughout") for line in lines)
    results["learning_curves"]["ldm"] = curve([(1.0, 40.0, 3.0), (1.5, 12.0, 1.0), (3.0, 10.0, 0.9)])
    entries, lines = crossover_decisions(results)
    # a − b at 1, 1.5, 2: −20.7, +6.67, +6.67 (each ± 2.83): the crossing lies between 1 and 1.5 minutes
    assert ("Latent diffusion passes VAE in FID between 1 and 1.5 CPU-minutes (the difference's 95% interval excludes 0 "
            "on both sides; both measured over 1–2 CPU-minutes).") in lines
    fid = {e["at_minutes"]: e for e in entries if e["question"] == "crossover:fid:vae-ldm"}
    assert fid[1.0]["decided"] == "a" and fid[1.5]["decided"] == "b"  # the sentence's two sides, in results' entries
    assert fid[1.0]["ci95"][1] < 0 < fid[1.5]["ci95"][0]
    # the same point estimates with wide intervals: the sign change is noise, not a finding
    results["learning_curves"] = {f: [dict(p, fid_ci95=[p["fid"] - 30, p["fid"] + 30]) for p in pts]
                                  for f, pts in results["learning_curves"].items()}
    lines = crossover_sentences(results)
    assert ("VAE vs Latent diffusion in FID: no crossover resolved in the measured range (both measured over "
            "1–2 CPU-minutes; decided at 0 of 3 times).") in lines
    assert not any("passes" in line and "FID" in line for line in lines)
    results["learning_curves"]["ldm"] = curve([(2.5, 40.0, 3.0), (3.0, 10.0, 0.9)])
    assert crossover_sentences(results) == [
        "VAE and Latent diffusion were measured at no common training time (0.5–2 CPU-minutes vs 2.5–3 CPU-minutes): not compared."]


def test_pick_snapshots_spreads_over_the_schedule_and_keeps_the_last():
    entries = [{"step": s} for s in (1, 2, 4, 8, 16, 32, 40)]
    assert pick_snapshots(entries, 0) == []
    assert pick_snapshots(entries, 1) == [{"step": 40}]
    assert [e["step"] for e in pick_snapshots(entries, 3)] == [1, 8, 40]
    assert pick_snapshots(entries, 10) == entries


# ----------------------------------------------------------------------------- the stage on a real run


class PixelFeatures:
    """A stand-in feature network: the pixels themselves."""

    def features(self, images):
        return images.flatten(1).double().numpy()


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("curves")
    train_config = TrainConfig(steps=60, batch_size=32, lr=3e-3, warmup_steps=5, precision="fp32", device="cpu",
                               checkpoint_every=60, log_every=10, seed=0, snapshot_first_minutes=1e-7)
    train_run("vae", DataConfig("digits"), VAEConfig(latent_dim=4, width=16), train_config, out=out / "runs" / "vae",
              progress=False)
    return out


def test_the_curves_stage_writes_one_point_per_snapshot_with_the_schema(vae_run):
    dataset = DataConfig("digits").load()
    results = learning_curves(["vae"], dataset, vae_run, 1e6, PixelFeatures(), budget_minutes=2.0, seed=0, device="cpu")
    entries = read_index(vae_run / "runs" / "vae")["snapshots"]
    points = results["learning_curves"]["vae"]
    assert [p["step"] for p in points] == [e["step"] for e in entries]  # all fit in a practically unlimited time
    assert results["learning_curve_settings"]["skipped_steps"] == {"vae": []}
    for point, entry in zip(points, entries):
        assert set(point) == {"step", "minutes", "gflop", "images", "fid", "fid_ci95", "bpd", "bpd_sem"}
        assert (point["minutes"], point["gflop"]) == (entry["minutes"], entry["gflop"])
        low, high = point["fid_ci95"]
        assert 0 <= low <= high and point["fid"] > 0 and point["bpd"] > 0
    assert points[0]["fid"] != points[-1]["fid"]  # each snapshot's own weights were evaluated


def test_a_snapshot_point_is_the_metric_of_those_weights(vae_run):
    dataset = DataConfig("digits").load()
    run = vae_run / "runs" / "vae"
    final = read_index(run)["snapshots"][-1]
    model = load(run)  # the final EMA weights: the final snapshot holds the same
    settings = CurveSettings(n_samples=50, seed=3)
    expected = fid(PixelFeatures().features(dataset.test), PixelFeatures().features(
        model.sample(50, generator=torch.Generator().manual_seed(3))))
    fresh = load(run)
    first = read_index(run)["snapshots"][0]
    evaluate_snapshot(fresh, snapshot_folder(run) / first["file"], first, PixelFeatures(),
                      PixelFeatures().features(dataset.test), (dataset.test[:8], dataset.train[:8]), settings)  # loads other weights first
    point = evaluate_snapshot(fresh, snapshot_folder(run) / final["file"], final, PixelFeatures(),
                              PixelFeatures().features(dataset.test), (dataset.test[:8], dataset.train[:8]), settings)
    assert point["fid"] == pytest.approx(expected, rel=1e-9)


def test_the_curves_stage_starts_nothing_it_has_no_time_for(vae_run):
    results = learning_curves(["vae"], DataConfig("digits").load(), vae_run, 0.0, PixelFeatures(), budget_minutes=2.0, seed=0,
                              device="cpu")
    entries = read_index(vae_run / "runs" / "vae")["snapshots"]
    assert results["learning_curves"] == {"vae": []}
    assert results["learning_curve_settings"]["skipped_steps"]["vae"] == [e["step"] for e in entries]


# ----------------------------------------------------------------------------- the budget split


def test_the_default_split_gives_every_family_equal_training_time_and_keeps_the_collapse_share():
    p = plan("digits", 15.0, ("vae", "ddpm", "ldm"))
    train = [p.seconds[f"train:{f}"] for f in ("vae", "ddpm", "ldm")]
    assert train[0] == pytest.approx(train[1]) == pytest.approx(train[2])
    assert p.seconds["collapse"] == pytest.approx(COLLAPSE_SHARE * 15 * 60)
    assert sum(p.seconds.values()) == pytest.approx(15 * 60) and p.seconds["curves"] > 0


def test_split_sets_relative_training_time():
    p = plan("digits", 10.0, ("vae", "ddpm", "ldm"), parse_split("vae=1, ddpm=2,ldm=2", ("vae", "ddpm", "ldm")))
    assert p.seconds["train:ddpm"] == pytest.approx(2 * p.seconds["train:vae"]) == pytest.approx(p.seconds["train:ldm"])
    equal = plan("digits", 10.0, ("vae", "ddpm", "ldm"))
    assert sum(p.seconds[f"train:{f}"] for f in ("vae", "ddpm", "ldm")) == \
        pytest.approx(sum(equal.seconds[f"train:{f}"] for f in ("vae", "ddpm", "ldm")))
    assert parse_split(None, ("vae",)) is None


@pytest.mark.parametrize("bad", ["vae=1,ddpm=1", "vae=1,ddpm=1,ldm=1,ldm=1", "vae=1,ddpm=0,ldm=1", "vae=1,ddpm=-2,ldm=1",
                                 "vae=1,ddpm=nan,ldm=1", "vae=1,ddpm=inf,ldm=1", "vae=1,ddpm=x,ldm=1", "vae=1,gan=1,ldm=1",
                                 "vae:1,ddpm=1,ldm=1", ""])
def test_bad_split_is_one_error_line_before_anything_is_written(bad, tmp_path, capsys):
    with pytest.raises(DiffvaeError):
        parse_split(bad, ("vae", "ddpm", "ldm"))
    out = tmp_path / "report"
    assert main(["compare", "--data", "digits", "--budget", "1", "--split", bad, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffvae: error: --split")
    assert not out.exists()


def test_split_must_name_exactly_the_families_run():
    assert parse_split("vae=1,ldm=3", ("vae", "ldm")) == {"vae": 1.0, "ldm": 3.0}
    with pytest.raises(DiffvaeError, match="vae=1,ldm=1"):
        parse_split("vae=1,ddpm=1,ldm=1", ("vae", "ldm"))
    assert not math.isnan(plan("d", 1.0, ("vae", "ldm"), {"vae": 1.0, "ldm": 3.0}).seconds["train:ldm"])


class VirtualClock:
    """A simulated slow machine: time advances only while samples are drawn, ``per_image`` seconds each."""

    def __init__(self, per_image: float):
        self.now, self.per_image = 0.0, per_image

    def __call__(self) -> float:
        return self.now


def curves_on_a_slow_clock(vae_run, monkeypatch, per_image: float, seconds: float = 150.0):
    """The curves stage on ``vae_run``'s snapshots given ``seconds`` on a :class:`VirtualClock`: (results, clock)."""
    clock = VirtualClock(per_image=per_image)
    real_sample = VAE.sample

    def slow_sample(self, n, *args, **kwargs):
        clock.now += clock.per_image * n
        return real_sample(self, n, *args, **kwargs)

    monkeypatch.setattr(curves_module, "clock", clock)
    monkeypatch.setattr(VAE, "sample", slow_sample)
    results = learning_curves(["vae"], DataConfig("digits").load(), vae_run, seconds, PixelFeatures(), budget_minutes=3.0,
                              seed=0, device="cpu")
    return results, clock


def test_a_loaded_machine_gets_fewer_samples_per_point_not_fewer_points(vae_run, monkeypatch):
    """Issue 27: on a busy machine the curves' first point alone cost more than the stage's time, and a 3-minute
    compare kept 0 snapshots per family. The stage now sizes the samples per point from the costs it measures
    (on a simulated slow clock here: 1 s per sample, the stage given 150 s, one 100-sample point ~200 s)."""
    results, clock = curves_on_a_slow_clock(vae_run, monkeypatch, per_image=1.0)
    points = results["learning_curves"]["vae"]
    assert len(points) >= curves_module.MIN_POINTS and clock.now <= 150.0  # the stage kept to its time
    assert results["learning_curve_settings"]["n_samples"] == 25  # 100 → 50 → 25: 4 points × 2 × 25 s (with margin) fit
    final = read_index(vae_run / "runs" / "vae")["snapshots"][-1]["step"]
    assert points[-1]["step"] == final  # the latest weights are always among them


def test_a_family_short_of_a_forecasts_points_is_topped_up_within_the_overrun(vae_run, monkeypatch):
    """Issue 25's validation: a 15-minute compare on one core measured 3 points per diffusion family (25 samples
    each, the floor) and every forecast was refused ("only 3 measured points"). Here a point costs 50 s on a
    simulated clock and the stage gets 150 s: two points fit its time, the other two are measured within OVERRUN × 150 s."""
    results, clock = curves_on_a_slow_clock(vae_run, monkeypatch, per_image=2.0)
    assert results["learning_curve_settings"]["n_samples"] == 25
    assert len(results["learning_curves"]["vae"]) == FORECAST_MIN_POINTS == curves_module.MIN_POINTS == 4
    assert 150.0 < clock.now <= curves_module.OVERRUN * 150.0  # it ran past its time, within the overrun


def test_affordable_samples_halves_to_the_floor():
    from diffvae.compare.curves import MIN_CURVE_SAMPLES, MIN_POINTS, affordable_samples

    assert affordable_samples(100, 1e9, [1.0, 2.0]) == 100
    assert affordable_samples(100, MIN_POINTS * 50 * 3.0, [1.0, 2.0]) == 50  # exactly MIN_POINTS points each at 50 samples
    assert affordable_samples(100, MIN_POINTS * 50 * 3.0 - 1, [1.0, 2.0]) == 25
    assert affordable_samples(200, 0.0, [1.0]) == MIN_CURVE_SAMPLES
