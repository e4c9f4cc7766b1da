"""The report's figures: the Pareto front and the quality-against-cost figure drawn from results."""

import random

import pytest

from diffvae.compare import figures
from diffvae.compare.figures import pareto_front


def sweep_front(points):
    """Reference: sort by cost (then quality) and keep each point that improves on every cheaper one."""
    order = sorted(range(len(points)), key=lambda i: points[i])
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def test_a_dominated_point_is_not_on_the_front():
    # (ms/sample, FID): C is both slower and worse than B; D is cheapest; A is the best and the slowest
    points = [(100.0, 10.0), (10.0, 30.0), (50.0, 40.0), (1.0, 90.0)]  # A, B, C, D
    assert pareto_front(points) == [3, 1, 0]  # D, B, A by cost; C (index 2) is dominated by B
    # equal cost, worse quality: dominated; equal quality, higher cost: dominated
    assert pareto_front([(1.0, 5.0), (1.0, 6.0), (2.0, 5.0)]) == [0]
    assert pareto_front([(1.0, 5.0)]) == [0] and pareto_front([]) == []


def test_the_front_matches_a_sweep_over_random_points():
    rng = random.Random(0)
    for _ in range(200):
        points = [(rng.lognormvariate(0, 2), rng.uniform(1, 100)) for _ in range(rng.randint(1, 12))]
        assert pareto_front(points) == sweep_front(points)


def pareto_results():
    fam = lambda fid, ms, bpd, **kw: {"fid": fid, "fid_ci95": [fid * 0.9, fid * 1.2], "ms_per_sample": ms,
                                      "ms_per_sample_ci95": [ms * 0.95, ms * 1.1], "bpd": bpd, **kw}
    return {"families": {"vae": fam(80.0, 0.05, 1.5), "ddpm": fam(30.0, 12.0, 1.4),
                         "ldm": fam(35.0, 20.0, 1.6),  # slower and worse than the DDPM: off the front
                         "flow": fam(25.0, 30.0, 1.1)}}


def _drawn(results, monkeypatch, tmp_path):
    captured = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: captured.setdefault("fig", fig))
    assert figures.pareto(results, tmp_path / "pareto.png")
    return captured["fig"].axes[0]


def test_pareto_figure_draws_each_family_with_its_intervals_and_the_front(monkeypatch, tmp_path):
    results = pareto_results()
    ax = _drawn(results, monkeypatch, tmp_path)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    front = next(line for line in ax.get_lines() if line.get_label() == "Pareto front")
    assert list(front.get_xdata()) == [0.05, 12.0, 30.0]  # VAE, DDPM, flow; not the LDM
    assert list(front.get_ydata()) == [80.0, 30.0, 25.0]
    for container in ax.containers:  # one errorbar per family: its point and both intervals
        fam = container.get_label().split(":")[0]
        r = results["families"][fam]
        (x,), (y,) = container.lines[0].get_data()
        assert (x, y) == (r["ms_per_sample"], r["fid"])
        segments = [seg for coll in container.lines[2] for seg in coll.get_segments()]
        ends = sorted(tuple(sorted(v for v in (seg[0][0], seg[1][0]))) for seg in segments if seg[0][1] == seg[1][1])
        assert ends == [tuple(pytest.approx(v) for v in r["ms_per_sample_ci95"])]
        ends = [tuple(sorted((seg[0][1], seg[1][1]))) for seg in segments if seg[0][0] == seg[1][0]]
        assert ends == [tuple(pytest.approx(v) for v in r["fid_ci95"])]
    assert {t.get_text() for t in ax.texts} == set(results["families"])  # each point named
    notes = {c.get_label() for c in ax.containers}  # and its bits/dim in the legend
    assert notes == {"vae: 1.5 bits/dim", "ddpm: 1.4 bits/dim", "ldm: 1.6 bits/dim",
                     "flow: 1.1 bits/dim (ODE estimate)"}  # the flow's likelihood is an ODE estimate, not a bound


def test_pareto_figure_keeps_a_linear_quality_axis_when_an_interval_reaches_zero(monkeypatch, tmp_path):
    results = pareto_results()
    results["families"]["ddpm"]["fid_ci95"] = [-1.0, 40.0]
    ax = _drawn(results, monkeypatch, tmp_path)
    assert ax.get_yscale() == "linear" and ax.get_xscale() == "log"


def test_pareto_figure_uses_the_metric_best_sample_quality_decided_on(monkeypatch, tmp_path):
    results = pareto_results()
    for fam, kid in (("vae", 0.09), ("ddpm", 0.02), ("ldm", 0.01), ("flow", 0.03)):
        results["families"][fam]["kid"] = kid
    results["best"] = {"sample quality": {"metric": "kid", "label": "KID@200"}}
    ax = _drawn(results, monkeypatch, tmp_path)
    front = next(line for line in ax.get_lines() if line.get_label() == "Pareto front")
    assert list(front.get_ydata()) == [0.09, 0.02, 0.01]  # VAE, DDPM, LDM; the flow is now off the front
    assert ax.get_ylabel().startswith("KID@200")


def test_nothing_to_draw_without_speed_and_quality(tmp_path):
    assert not figures.pareto({"families": {"vae": {"fid": 3.0}}}, tmp_path / "p.png")
