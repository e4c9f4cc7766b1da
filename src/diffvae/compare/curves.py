"""Learning curves at equal compute: the ``curves`` stage of ``diffvae compare``, its figures and
the crossovers the report states.

``compare`` trains every family with EMA snapshots (:mod:`diffvae.snapshots`). This stage loads
each snapshot into the family's model and measures a cheap FID — ``n_samples`` from the family's
default sampler, the same n and seed for every family and snapshot — with its bootstrap interval,
and the bound (bits/dim) on a fixed subset of held-out images with the cheap options the family's
``bound`` takes (diffusion: the K-draw estimate, reverse variances fitted on a few training images).
It is sized to its time share: the cost of one snapshot is estimated from a pilot batch, the
snapshots that fit are spread over the schedule (the final weights first), and a snapshot whose
measured cost no longer fits is skipped, never started. A forecast needs four points
(:data:`diffvae.forecast.MIN_POINTS`): a family short of them is topped up, the stage running to at most
``OVERRUN`` × its time (the evaluation stages after it then get less).

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
from diffvae.compare.forecasts import draw_band
from diffvae.compare.style import _pyplot, _save, color, title as family_title
from diffvae.compare.verdicts import fmt
from diffvae.contract import BoundOptions, spec_of
from diffvae.device import resolve_device
from diffvae.errors import DiffvaeError
from diffvae.forecast import MIN_POINTS  # per family: the fewest a forecast fits; the sample count is chosen to afford them
from diffvae.metrics.paired import metric_interval, normal_comparison
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


OVERRUN = 1.5  # the stage may run to this many times its time to give each family MIN_POINTS (later stages get less)
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
    for curve in curves.values():  # fewer than MIN_POINTS refuses the forecast: top up within OVERRUN × the time
        curve.extend(deadline=started + OVERRUN * seconds, most=MIN_POINTS - len(curve.points))
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
    """The 95% interval of FID@N against the reference, around the point (:func:`diffvae.metrics.paired.metric_interval`)."""
    low, high = metric_interval("fid", reference, features)[1]
    return [low, high] if math.isfinite(low) and math.isfinite(high) else None


def _bound_bpd(model, held_out: torch.Tensor, fit_images: torch.Tensor, settings: CurveSettings) -> dict[str, Any]:
    """``bpd``: the mean bits/dim of the family's bound on ``held_out`` with the cheap options its
    ``bound`` accepts (a K-draw estimate; reverse variances fitted on ``fit_images``), and the
    ``bpd_variance`` it chose where it names one."""
    options = spec_of(model).bound_kwargs(BoundOptions(timesteps=settings.bound_timesteps, fit_data=fit_images))
    with torch.no_grad():
        bound = model.bound(held_out, generator=torch.Generator().manual_seed(settings.seed), **options)
    per_image = bound["bpd"].double()
    value = float(per_image.mean())
    out: dict[str, Any] = {"bpd": value if math.isfinite(value) else None}
    if per_image.numel() > 1 and math.isfinite(value):
        out["bpd_sem"] = float(per_image.std()) / math.sqrt(per_image.numel())
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
    """The crossovers of every pair of learning curves, FID then bits/dim, as sentences (:func:`crossover_decisions`)."""
    return crossover_decisions(results)[1]


def crossover_decisions(results: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every pair of learning curves, FID then bits/dim: the difference a − b with its 95% interval at each
    measured time of either curve (both interpolated linearly; se² = se_a² + se_b², the points' own intervals,
    independent samples against the fixed reference), as ``results["comparisons"]`` entries
    (question ``crossover:<metric>:<a>-<b>``), and the sentences: a crossover only between two times where the
    interval excludes 0 on opposite sides; otherwise "no crossover resolved in the measured range"."""
    curves = results.get("learning_curves") or {}
    unit = (results.get("learning_curve_settings") or {}).get("clock", "CPU-minutes")
    title = {f: family_title(f) for f in curves}
    entries, lines = [], []
    for key, label in METRICS:
        for a, b in combinations(curves, 2):
            points = [_curve_points(curves[f], key) for f in (a, b)]
            if not points[0] or not points[1] or max(points[0][0][0], points[1][0][0]) > min(points[0][-1][0], points[1][-1][0]):
                if key == "fid" and curves[a] and curves[b]:  # said once, not per metric
                    lines.append(f"{title[a]} and {title[b]} were measured at no common training time "
                                 f"({_span(curves[a], unit)} vs {_span(curves[b], unit)}): not compared.")
                continue
            tests = _difference_along(points[0], points[1], key)
            entries += [{**c.entry(f"crossover:{key}:{a}-{b}", a, b), "at_minutes": x} for x, c in tests]
            lines.append(_crossover_sentence(tests, title[a], title[b], label, unit))
    return entries, lines


def _curve_points(points: list[dict[str, Any]], key: str) -> list[tuple[float, float, float | None]]:
    """(minutes, value, standard error or None) of the points with a finite value, in order of time; the
    standard error from the stored interval ``<key>_ci95`` (FID) or ``<key>_sem`` (bits/dim)."""
    out = []
    for p in points:
        x, y = p.get("minutes"), p.get(key)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (x, y)):
            continue
        ci, sem = p.get(f"{key}_ci95"), p.get(f"{key}_sem")
        se = (ci[1] - ci[0]) / 2 / 1.959963984540054 if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci else sem
        out.append((float(x), float(y), float(se) if isinstance(se, (int, float)) and math.isfinite(se) else None))
    return sorted(out)


def _difference_along(pa, pb, key: str):
    """[(x, Comparison of a − b at x)] at every measured x of either curve inside their common range."""
    lo, hi = max(pa[0][0], pb[0][0]), min(pa[-1][0], pb[-1][0])
    out = []
    for x in sorted({lo, hi} | {p[0] for p in pa + pb if lo <= p[0] <= hi}):
        (ya, sa), (yb, sb) = _at(pa, x), _at(pb, x)
        se = math.hypot(sa, sb) if sa is not None and sb is not None else math.nan
        out.append((x, normal_comparison(key, ya - yb, se, 0, "unpaired normal test at this time (the curves "
                                         "interpolated linearly, each point's own interval); a crossover needs "
                                         "two opposite rejections", n_scales=False)))
    return out


def _at(points, x: float) -> tuple[float, float | None]:
    """Value and standard error of the piecewise-linear curve at x (inside its range)."""
    for (x0, y0, s0), (x1, y1, s1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            w = 0.0 if x1 == x0 else (x - x0) / (x1 - x0)
            se = None if s0 is None or s1 is None else (1 - w) * s0 + w * s1
            return y0 + w * (y1 - y0), se
    return points[0][1], points[0][2]  # a single point


def _crossover_sentence(tests, title_a: str, title_b: str, label: str, unit: str) -> str:
    """The resolved crossings (sign changes between rejections), or who led where every time was decided, or
    "no crossover resolved in the measured range"."""
    xs = [x for x, _ in tests]
    measured = f"both measured over {fmt(xs[0])}–{fmt(xs[-1])} {unit}"
    signs = [(x, -1 if c.ci95[1] < 0 else 1) for x, c in tests if c.decided() is not None]  # −1: a lower (ahead)
    names = {-1: (title_a, title_b), 1: (title_b, title_a)}
    crossings = [(x0, x1, s1) for (x0, s0), (x1, s1) in zip(signs, signs[1:]) if s0 != s1]
    if crossings:
        return " ".join(f"{names[s][0]} passes {names[s][1]} in {label} between {fmt(x0)} and {fmt(x1)} {unit} "
                        f"(the difference's 95% interval excludes 0 on both sides; {measured})." for x0, x1, s in crossings)
    if signs and len(signs) == len(tests):
        leader, other = names[signs[0][1]]
        return f"{leader} led {other} in {label} throughout the range both measured ({measured}; decided at every time)."
    return (f"{title_a} vs {title_b} in {label}: no crossover resolved in the measured range ({measured}; "
            f"decided at {len(signs)} of {len(tests)} times).")


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
            band = [(x, p[1] - 1.96 * p[2], p[1] + 1.96 * p[2]) for x, p in zip(xs, _curve_points(pts, key)) if p[2] is not None]
            if len(band) >= 2:  # each point's 95% interval, as a band (crossovers are stated only where they separate)
                ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band], color=color(fam), alpha=0.15)
            draw_band(ax, results, fam, key, axis, color(fam))  # the fitted curve past the last point, if forecast
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
