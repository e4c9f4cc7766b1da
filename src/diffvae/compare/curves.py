"""Learning curves at equal compute: the ``curves`` stage of ``diffvae compare``, its figures and
the crossovers the report states.

``compare`` trains every family with EMA snapshots (:mod:`diffvae.snapshots`). This stage loads
each snapshot into the family's model and measures a cheap FID — ``n_samples`` from the family's
default sampler, the same n and seed for every family and snapshot — with its bootstrap interval,
and the bound (bits/dim) on a fixed subset of held-out images with the cheap options the family's
``bound`` takes (diffusion: the K-draw estimate, reverse variances fitted on a few training images).
It is sized to its time share: the cost of one snapshot is estimated from a pilot batch, the
snapshots that fit are spread over the schedule (the final weights first), and a snapshot whose
measured cost no longer fits is skipped, never started.

``results.json["learning_curves"][family]`` is a list, in training order, of
``{"step", "minutes", "gflop", "fid", "fid_ci95", "bpd"}`` (minutes and GFLOP include earlier
stages: the latent-diffusion autoencoder). Crossovers are read off the shared minutes axis by
linear interpolation between measured points, only where both curves were measured
(:func:`compare_curves`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

import torch

from diffvae.api import load
from diffvae.compare.style import _pyplot, _save, color, title as family_title
from diffvae.compare.verdicts import fmt
from diffvae.contract import BoundOptions, spec_of
from diffvae.device import resolve_device
from diffvae.errors import DiffvaeError
from diffvae.metrics.bootstrap import fid_ci
from diffvae.metrics.distances import fid
from diffvae.runs import load_tensors, split_prefixed
from diffvae.snapshots import read_index, snapshot_folder

SAMPLE_BATCH = 100  # samples per sampler call
PILOT_SAMPLES = 8  # samples timed to estimate a snapshot's cost before the first one is evaluated
PILOT_MARGIN = 2.0  # the estimate from the pilot is scaled by this (the bound, its fit and the features cost too)
METRICS = (("fid", "FID"), ("bpd", "bits/dim"))  # both lower-is-better


@dataclass
class CurveSettings:
    """What every snapshot of every family is measured with."""

    n_samples: int = 100  # samples for the FID (equal for every family: FID is biased by the count)
    bound_images: int = 8  # the first held-out images
    bound_timesteps: int = 16  # diffusion: the K-draw estimate of the bound
    variance_fit_images: int = 8  # training images a family's bound may fit on (diffusion: the reverse variances)
    seed: int = 0
    clock: str = "CPU-minutes"  # what the minutes axis measures


MIN_POINTS = 3  # points per family the sample count is chosen to afford
MIN_CURVE_SAMPLES = 25  # the fewest samples per point (the count halves from curve_samples() down to this)


def clock() -> float:
    """The stage's time source in seconds (tests replace it with a simulated slow clock)."""
    return time.perf_counter()


def curve_samples(budget_minutes: float) -> int:
    """Samples per snapshot for the curves' FID (equal for all families), before the stage sizes it to its time."""
    return 200 if budget_minutes >= 30 else 100


def affordable_samples(start: int, seconds: float, seconds_per_sample: Sequence[float]) -> int:
    """The most samples per point, halving from ``start`` to :data:`MIN_CURVE_SAMPLES`, at which every family
    gets :data:`MIN_POINTS` points within ``seconds`` (costs re-measured on this machine now: a loaded machine
    gets fewer samples per point, not fewer points)."""
    n = start
    while n > MIN_CURVE_SAMPLES and MIN_POINTS * n * sum(seconds_per_sample) > seconds:
        n = max(MIN_CURVE_SAMPLES, n // 2)
    return n


# ----------------------------------------------------------------------------- the stage

def learning_curves(families: Sequence[str], dataset, out: Path, seconds: float, extractor, *, budget_minutes: float,
                    seed: int = 0, device: str = "cpu", quiet: bool = True) -> dict[str, Any]:
    """The ``curves`` stage: every family's curve within ``seconds``; returns
    ``{"learning_curves": ..., "learning_curve_settings": ...}`` for results.json. ``extractor`` is
    the feature network shared with the evaluation stages (its training is not the curves' time).

    The final weights of every family first (cheapest family first), then each family in turn gets an
    equal share of the time left, what one family does not use going to the next."""
    started = clock()
    settings = CurveSettings(n_samples=curve_samples(budget_minutes), seed=seed,
                             clock="CPU-minutes" if resolve_device(device).type == "cpu" else "GPU-minutes")
    measure = SnapshotMeasure(extractor, dataset, settings)
    curves = {f: FamilyCurve(out / "runs" / f, measure) for f in families if read_index(out / "runs" / f) is not None}

    def left() -> float:
        return seconds - (clock() - started)

    _size_samples(settings, list(curves.values()), left())
    for curve in sorted(curves.values(), key=lambda c: c.cost):
        curve.extend(deadline=clock() + left(), most=1)
    for i, curve in enumerate(curves.values()):
        curve.extend(deadline=clock() + left() / (len(curves) - i))
    return {"learning_curves": {f: c.points_in_order() for f, c in curves.items()},
            "learning_curve_settings": {**asdict(settings), "skipped_steps": {f: c.skipped() for f, c in curves.items()}}}


def _size_samples(settings: CurveSettings, curves: list["FamilyCurve"], seconds: float) -> None:
    """Samples per point from the pilots' costs measured now (:func:`affordable_samples`), the same for every family."""
    per_sample = [curve.cost / settings.n_samples for curve in curves]
    n = affordable_samples(settings.n_samples, seconds, per_sample)
    for curve, cost in zip(curves, per_sample):
        curve.cost = cost * n
    settings.n_samples = n


class SnapshotMeasure:
    """What one point of a curve is measured against: the reference features, the held-out images of
    the bound and the training images it may fit on."""

    def __init__(self, extractor, dataset, settings: CurveSettings):
        self.extractor, self.settings = extractor, settings
        self.reference = extractor.features(dataset.test)
        self.held_out = dataset.test[:settings.bound_images]
        self.fit_images = dataset.train[:settings.variance_fit_images]

    def __call__(self, model, path: Path, entry: dict[str, Any]) -> dict[str, Any]:
        return evaluate_snapshot(model, path, entry, self.extractor, self.reference, (self.held_out, self.fit_images),
                                 self.settings)


class FamilyCurve:
    """One run's snapshots, its model, and the points measured so far; ``cost`` is the most one
    point has cost (before the first, an estimate from a pilot batch of samples)."""

    def __init__(self, run_path: Path, measure: SnapshotMeasure):
        self.run_path, self.measure = run_path, measure
        self.model = load(run_path, device="cpu")
        self.entries = read_index(run_path)["snapshots"]
        settings = measure.settings
        self.cost = PILOT_MARGIN * _pilot_seconds(self.model, settings.seed) * settings.n_samples / PILOT_SAMPLES
        self.points: dict[int, dict[str, Any]] = {}

    def extend(self, deadline: float, most: int | None = None) -> None:
        """Measure more snapshots, spread over the schedule and the latest first, while one more fits
        before ``deadline`` (at most ``most``); re-planned after each with the cost measured."""
        for _ in range(len(self.entries) if most is None else most):
            left = deadline - clock()
            chosen = pick_snapshots(self.entries, len(self.points) + int(max(left, 0.0) // max(self.cost, 1e-9)))
            wanted = [e for e in chosen if e["step"] not in self.points]
            if not wanted or self.cost > left:
                return
            entry = max(wanted, key=lambda e: e["step"])
            t0 = clock()
            self.points[entry["step"]] = self.measure(self.model, snapshot_folder(self.run_path) / entry["file"], entry)
            spent = clock() - t0
            self.cost = spent if len(self.points) == 1 else max(self.cost, spent)  # measured costs replace the pilot's

    def points_in_order(self) -> list[dict[str, Any]]:
        return [self.points[s] for s in sorted(self.points)]

    def skipped(self) -> list[int]:
        return [e["step"] for e in self.entries if e["step"] not in self.points]


def pick_snapshots(entries: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """``k`` of the snapshots, evenly spread over the (geometric) schedule, always the last one."""
    if k <= 0 or not entries:
        return []
    if k >= len(entries):
        return list(entries)
    if k == 1:
        return [entries[-1]]
    picks = sorted({round(i * (len(entries) - 1) / (k - 1)) for i in range(k)})
    return [entries[i] for i in picks]


def _pilot_seconds(model, seed: int) -> float:
    """Seconds for PILOT_SAMPLES samples (after a warm-up call)."""
    with torch.inference_mode():
        model.sample(1, generator=torch.Generator().manual_seed(seed))
        t0 = clock()
        model.sample(PILOT_SAMPLES, generator=torch.Generator().manual_seed(seed))
    return clock() - t0


def evaluate_snapshot(model, path: Path, entry: dict[str, Any], extractor, reference,
                      bound_data: tuple[torch.Tensor, torch.Tensor], settings: CurveSettings) -> dict[str, Any]:
    """One point of a learning curve: the snapshot's weights loaded into ``model``, then FID and bits/dim."""
    tensors, _ = load_tensors(path)
    model.load_state_dict(split_prefixed(tensors, "ema"), strict=True)
    model.eval()
    point = {"step": entry["step"], "minutes": entry["minutes"], "gflop": entry["gflop"], "images": entry["images"],
             "fid": None, "fid_ci95": None, "bpd": None}
    g = torch.Generator().manual_seed(settings.seed)  # the same noise for every snapshot: a smoother curve
    n = settings.n_samples
    with torch.inference_mode():
        samples = torch.cat([model.sample(min(SAMPLE_BATCH, n - i), generator=g).cpu() for i in range(0, n, SAMPLE_BATCH)])
    features = extractor.features(samples)
    try:
        point["fid"] = fid(reference, features)
        point["fid_ci95"] = _fid_interval(reference, features, settings.seed)
    except DiffvaeError:  # e.g. non-finite features of a diverged snapshot: the point has no FID
        pass
    point.update(_bound_bpd(model, *bound_data, settings))
    return point


def _fid_interval(reference, features, seed: int) -> list[float] | None:
    """The bootstrap 95% interval of the FID (:func:`diffvae.metrics.bootstrap.fid_ci`)."""
    low, high = fid_ci(reference, features, generator=torch.Generator().manual_seed(seed))
    return [low, high] if math.isfinite(low) and math.isfinite(high) else None


def _bound_bpd(model, held_out: torch.Tensor, fit_images: torch.Tensor, settings: CurveSettings) -> dict[str, Any]:
    """``bpd``: the mean bits/dim of the family's bound on ``held_out`` with the cheap options its
    ``bound`` accepts (a K-draw estimate; reverse variances fitted on ``fit_images``), and the
    ``bpd_variance`` it chose where it names one."""
    options = spec_of(model).bound_kwargs(BoundOptions(timesteps=settings.bound_timesteps, fit_data=fit_images))
    with torch.no_grad():
        bound = model.bound(held_out, generator=torch.Generator().manual_seed(settings.seed), **options)
    value = float(bound["bpd"].double().mean())
    out: dict[str, Any] = {"bpd": value if math.isfinite(value) else None}
    if isinstance(bound.get("variance"), str):
        out["bpd_variance"] = bound["variance"]
    return out


# ----------------------------------------------------------------------------- crossovers

@dataclass(frozen=True)
class Crossing:
    minutes: float  # where the curves cross (linear interpolation between measured points)
    leader: str  # the family ahead after the crossing
    trailer: str


@dataclass
class CurveComparison:
    """Two curves on a shared axis, within the range where both were measured."""

    a: str
    b: str
    overlap: tuple[float, float] | None  # None: no common range
    crossings: list[Crossing] = field(default_factory=list)
    leader_throughout: str | None = None  # without crossings: the family ahead over the whole overlap


def compare_curves(a: str, a_points: Sequence[tuple[float, float | None]], b: str,
                   b_points: Sequence[tuple[float, float | None]], lower_is_better: bool = True) -> CurveComparison:
    """Where curve ``a`` and curve ``b`` (points (x, y)) cross, never beyond what both measured.

    Both curves are linear between their measured points; on the overlap [max of the starts, min
    of the ends] the difference is linear between consecutive x of either curve, so its sign
    changes are found exactly. Points with a missing or non-finite y are dropped.
    """
    pa, pb = _clean(a_points), _clean(b_points)
    if not pa or not pb or max(pa[0][0], pb[0][0]) > min(pa[-1][0], pb[-1][0]):
        return CurveComparison(a, b, None)
    lo, hi = max(pa[0][0], pb[0][0]), min(pa[-1][0], pb[-1][0])
    xs = sorted({lo, hi} | {x for x, _ in pa + pb if lo <= x <= hi})
    sign = 1.0 if lower_is_better else -1.0
    gaps = [sign * (_interpolate(pa, x) - _interpolate(pb, x)) for x in xs]  # < 0: a is ahead
    result = CurveComparison(a, b, (lo, hi))
    last: tuple[float, float] | None = None  # the last point where the gap was not zero
    zero_from = None
    for x, gap in zip(xs, gaps):
        if gap == 0:
            zero_from = x if zero_from is None else zero_from
            continue
        if last is not None and (gap < 0) != (last[1] < 0):
            at = zero_from if zero_from is not None else last[0] + last[1] / (last[1] - gap) * (x - last[0])
            leader, trailer = (a, b) if gap < 0 else (b, a)
            result.crossings.append(Crossing(at, leader, trailer))
        last, zero_from = (x, gap), None
    if not result.crossings and last is not None:
        result.leader_throughout = a if last[1] < 0 else b
    return result


def _clean(points: Sequence[tuple[float, float | None]]) -> list[tuple[float, float]]:
    kept = [(float(x), float(y)) for x, y in points if y is not None and math.isfinite(float(y)) and math.isfinite(float(x))]
    return sorted(kept)


def _interpolate(points: list[tuple[float, float]], x: float) -> float:
    """The piecewise-linear curve through ``points`` at x, inside their range."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if points[0][0] <= x <= points[-1][0]:  # a single point
        return points[0][1]
    raise ValueError(f"{x} is outside the measured range {points[0][0]}..{points[-1][0]}")


def crossover_sentences(results: dict[str, Any]) -> list[str]:
    """The measured crossovers of every pair of learning curves, FID then bits/dim, as sentences."""
    curves = results.get("learning_curves") or {}
    unit = (results.get("learning_curve_settings") or {}).get("clock", "CPU-minutes")
    title = {f: family_title(f) for f in curves}
    lines = []
    for key, label in METRICS:
        for a, b in combinations(curves, 2):
            comparison = compare_curves(a, [(p["minutes"], p.get(key)) for p in curves[a]],
                                        b, [(p["minutes"], p.get(key)) for p in curves[b]])
            if comparison.overlap is None:
                if key == "fid" and curves[a] and curves[b]:  # said once, not per metric
                    lines.append(f"{title[a]} and {title[b]} were measured at no common training time "
                                 f"({_span(curves[a], unit)} vs {_span(curves[b], unit)}): not compared.")
                continue
            lo, hi = comparison.overlap
            measured = f"both measured over {fmt(lo)}–{fmt(hi)} {unit}"
            for c in comparison.crossings:
                lines.append(f"{title[c.leader]} passes {title[c.trailer]} in {label} after {fmt(c.minutes)} {unit} ({measured}).")
            if comparison.leader_throughout:
                other = b if comparison.leader_throughout == a else a
                lines.append(f"{title[comparison.leader_throughout]} led {title[other]} in {label} throughout the "
                             f"range both measured ({fmt(lo)}–{fmt(hi)} {unit}).")
    return lines


def _span(points: list[dict[str, Any]], unit: str) -> str:
    return f"{fmt(points[0]['minutes'])}–{fmt(points[-1]['minutes'])} {unit}"


# ----------------------------------------------------------------------------- figures

def fid_vs_compute(results: dict[str, Any], path: Path) -> bool:
    return _curve_figure(results, path, "fid", "FID (lower is better)", "Sample quality against training compute")


def bpd_vs_compute(results: dict[str, Any], path: Path) -> bool:
    return _curve_figure(results, path, "bpd", "bits/dim bound (lower is better)", "Likelihood bound against training compute")


def _curve_figure(results: dict[str, Any], path: Path, key: str, ylabel: str, title: str) -> bool:
    """``key`` against minutes (left) and GFLOP (right), every family, log x, shared y."""
    curves = {f: [p for p in pts if p.get(key) is not None] for f, pts in (results.get("learning_curves") or {}).items()}
    curves = {f: pts for f, pts in curves.items() if pts}
    if not curves:
        return False
    unit = (results.get("learning_curve_settings") or {}).get("clock", "CPU-minutes")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, axis, xlabel in ((axes[0], "minutes", f"training {unit}"), (axes[1], "gflop", "training GFLOP")):
        for fam, pts in curves.items():
            xs, ys = [p[axis] for p in pts], [p[key] for p in pts]
            ax.plot(xs, ys, marker="o", color=color(fam), label=fam)
            # the interval as a low–high segment: a bias-corrected FID interval can lie wholly below the point
            for x, p in zip(xs, pts):
                if p.get(f"{key}_ci95"):
                    ax.vlines(x, *p[f"{key}_ci95"], color=color(fam), alpha=0.5)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, which="both")
    values = [p[key] for pts in curves.values() for p in pts]
    if min(values) > 0 and max(values) / min(values) > 20:
        axes[0].set_yscale("log")  # early snapshots can be orders of magnitude worse
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path)
    return True
