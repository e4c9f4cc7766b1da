"""Forecasts of a compare's learning curves at a larger budget: ``results["forecast"]``, its report
section and the forecast bands of the curve figures. The fitting math is :mod:`diffvae.forecast`.

A target is a compare budget in minutes (``--forecast 150``: each family trained k = 150 / budget
times as long, so at k times its measured training GFLOP — every stage's share is a fixed fraction of
the budget) or a training compute (``--forecast 2e5gflop``: every family at that many GFLOP). Each
family's curve is fitted on its GFLOP axis; the minutes axis of the figures assumes the GFLOP per
minute of its last point.

A family is not forecast (and the section says why) when its curve cannot be fitted
(:class:`diffvae.forecast.ForecastRefused`), when the target is inside its measured range, or when
:func:`diffvae.recipes.choose` would pick another recipe at the target: the curve measured is that of
the recipe trained, and a forecast must be about the model a run at that budget would train.

What the forecast does not see: the learning rate decays over each run's own length (a longer run
anneals later), so the points of a short run are not those a longer run passes through; and the
latent-diffusion autoencoder is trained longer too. ``benchmarks/bench_forecast.py`` measures how
often the intervals cover what a longer run measures.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import numpy as np

from diffvae.compare.style import short
from diffvae.compare.verdicts import fmt
from diffvae.errors import DiffvaeError
from diffvae.families import FAMILIES, get_family
from diffvae.forecast import REPLICATES, ForecastRefused, fit_power_law, percentile_interval, sigma_from_interval
from diffvae.recipes import Recipe, choose

DEFAULT_MULTIPLE = 10.0  # --forecast's default: 10× the budget
# a target this close to a recipe threshold is refused: the run that trains there measures the machine's speed
# again, and it varies by a few percent between runs (benchmarks/RESULTS.md, the forecast validation)
SWITCH_MARGIN = 0.1
BAND_POINTS = 16  # points of a forecast band in results.json (the figures draw them)
CROSSING_GRID = 200
METHOD = ("L = E + A·(C/C_last)^(−α) by weighted least squares on the learning-curve points (training GFLOP), "
          "α in [0.05, 3], E ≥ 0; 95% intervals from a parametric bootstrap of {n} refits over the points' own "
          "uncertainty (widened by the Birge ratio when they scatter more); differences per bootstrap replicate")


# ----------------------------------------------------------------------------- what is fitted

def curve_metrics(points: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    """(key, label, interval key) of each learning-curve metric the points hold, sample quality first.

    The one place that knows the points' sample-quality key: the first of ``QUALITY_KEYS`` present
    (an estimand at a fixed sample count first), with its ``<key>_ci95`` interval; then bits/dim."""
    present = {k for p in points for k, v in p.items() if v is not None}
    quality = next((k for k in QUALITY_KEYS if k in present), None)
    metrics = [(quality, QUALITY_KEYS[quality], f"{quality}_ci95")] if quality else []
    return metrics + ([("bpd", "bits/dim", None)] if "bpd" in present else [])


QUALITY_KEYS = {"fid_at_n": "FID@N", "fid": "FID"}  # key in a curve point -> label


# ----------------------------------------------------------------------------- the target

def parse_target(text: str | float, budget_minutes: float | None = None) -> dict[str, Any]:
    """``"150"`` (compare minutes) or ``"2e5gflop"`` (training GFLOP) → the target; refused in one line
    when it is not a positive number, or (minutes, with ``budget_minutes``) not beyond the budget."""
    raw = str(text).strip().lower()
    kind = "gflop" if raw.endswith("gflop") else "minutes"
    number = raw[:-len("gflop")] if kind == "gflop" else raw.removesuffix("min")
    try:
        value = float(number)
    except ValueError:
        raise DiffvaeError(f"a forecast budget is MINUTES (e.g. 150) or GFLOP with its unit (e.g. 2e5gflop), got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise DiffvaeError(f"a forecast budget must be a positive number, got {text!r}")
    if kind == "minutes" and budget_minutes is not None and value <= budget_minutes:
        raise DiffvaeError(f"a forecast at {value:g} minutes is within the measured budget ({budget_minutes:g} min): "
                           "forecasts are for larger budgets")
    return {"kind": kind, "value": value}


def default_target(budget_minutes: float) -> dict[str, Any]:
    return {"kind": "minutes", "value": DEFAULT_MULTIPLE * budget_minutes}


def target_label(target: dict[str, Any], budget_minutes: float | None, clock: str) -> str:
    if target["kind"] == "gflop":
        return f"At {target['value']:.3g} training GFLOP per family"
    multiple = target["value"] / budget_minutes if budget_minutes else float("nan")
    return f"At {multiple:.3g}× this budget ({target['value']:.4g} {clock})"


# ----------------------------------------------------------------------------- the forecast

def forecast_results(results: dict[str, Any], target: dict[str, Any], *, seed: int = 0,
                     replicates: int = REPLICATES) -> dict[str, Any]:
    """``results["forecast"]``: each family's fit and prediction per metric (or the reason it is
    refused), the predicted winner per metric, the paired differences and the crossings beyond the
    measured range."""
    curves = {f: pts for f, pts in (results.get("learning_curves") or {}).items() if pts}
    budget = results.get("budget_minutes")
    clock = (results.get("learning_curve_settings") or {}).get("clock", "CPU-minutes")
    metrics = curve_metrics([p for pts in curves.values() for p in pts])
    n = (results.get("learning_curve_settings") or {}).get("n_samples")
    estimand = f"; predictions are of the curves' own estimands (sample quality of {n} samples per snapshot)" if n else ""
    out: dict[str, Any] = {"target": {**target, "label": target_label(target, budget, clock)},
                           "method": METHOD.format(n=replicates) + estimand, "metrics": {k: label for k, label, _ in metrics},
                           "families": {}, "comparisons": [], "winners": {}, "crossovers": []}
    fits: dict[str, dict[str, Any]] = {}
    for i, (fam, pts) in enumerate(curves.items()):
        out["families"][fam] = {}
        for j, (key, label, ci_key) in enumerate(metrics):
            entry, fit = family_forecast(results, fam, pts, key, ci_key, target, seed=seed + 1000 * i + j, replicates=replicates)
            out["families"][fam][key] = entry
            if fit is not None:
                fits.setdefault(key, {})[fam] = (fit, entry)
    for key, label, _ in metrics:
        decided = fits.get(key, {})
        out["comparisons"] += paired_differences(key, decided)
        out["winners"][key] = winner(key, label, decided, out["comparisons"])
        out["crossovers"] += crossings(key, label, decided, target)
    return out


def family_forecast(results: dict[str, Any], fam: str, points: list[dict[str, Any]], key: str, ci_key: str | None,
                    target: dict[str, Any], *, seed: int, replicates: int) -> tuple[dict[str, Any], Any]:
    """(the family's entry for ``key``, its fit or None when refused)."""
    usable = [p for p in points if _finite(p.get(key)) and _finite(p.get("gflop")) and
              (ci_key is None or sigma_from_interval(p.get(ci_key)) is not None)]
    if not usable:
        return {"status": "refused", "reason": f"no measured points with {key}"}, None
    last = max(usable, key=lambda p: p["gflop"])
    trained = (results.get("training") or {}).get(fam) or {}
    x_target = target_gflop(target, trained.get("gflop") or last["gflop"], results.get("budget_minutes"))
    reason = _structural_refusal(fam) or _target_refusal(x_target, last["gflop"]) or recipe_switch(trained.get("recipe"), x_target / (trained.get("gflop") or last["gflop"]))
    if reason:
        return {"status": "refused", "reason": reason, "target_gflop": x_target}, None
    sigma = None if ci_key is None else [sigma_from_interval(p[ci_key]) for p in usable]
    try:
        fit = fit_power_law([p["gflop"] for p in usable], [p[key] for p in usable], sigma, seed=seed, replicates=replicates)
    except ForecastRefused as e:
        return {"status": "refused", "reason": str(e), "target_gflop": x_target}, None
    per_minute = last["minutes"] / last["gflop"] if last["gflop"] > 0 else float("nan")
    entry = {"status": "forecast", "target_gflop": x_target, "target_minutes": x_target * per_minute,
             **fit.prediction(x_target, seed=seed), "fit": fit.summary(),
             "band": band(fit, last["gflop"], x_target, per_minute)}
    return entry, fit


def target_gflop(target: dict[str, Any], trained_gflop: float, budget_minutes: float | None) -> float:
    """A family's training GFLOP at the target: its own ×k for a budget in minutes, else the target's."""
    if target["kind"] == "gflop":
        return float(target["value"])
    if not budget_minutes:
        raise DiffvaeError("the compare's results have no budget_minutes: give the forecast in GFLOP (e.g. 1e5gflop)")
    return float(trained_gflop) * target["value"] / float(budget_minutes)


def _structural_refusal(fam: str) -> str | None:
    """The family's own reason its curve cannot forecast a longer compare (``FamilySpec.forecast_refusal``)."""
    return (get_family(fam).spec().forecast_refusal or None) if fam in FAMILIES else None


def _target_refusal(x_target: float, last_gflop: float) -> str | None:
    if x_target <= last_gflop:
        return (f"the target ({x_target:.4g} GFLOP) is within the measured range (up to {last_gflop:.4g} GFLOP): "
                "read the measured curve")
    return None


def recipe_switch(recipe_info: dict[str, Any] | None, multiple: float) -> str | None:
    """Why a forecast ``multiple`` × the family's training compute crosses a recipe switch, or may (within
    ``SWITCH_MARGIN`` of a threshold), or None. The target's reference GFLOP are ``multiple`` × the family's
    planned share (``planned_gflop``; older results: the share it trained, ``budget_gflop``)."""
    if not recipe_info or not recipe_info.get("candidates"):
        return None
    recipes = tuple(Recipe(name, float(g)) for name, g in sorted(recipe_info["candidates"].items(), key=lambda kv: kv[1]))
    # the share a compare at the target plans for the family (a short compare's stage got less than its plan)
    budget_gflop = float(recipe_info.get("planned_gflop") or recipe_info["budget_gflop"]) * multiple
    trained = recipe_info.get("recipe")
    chosen = choose(recipes, budget_gflop).name
    if chosen != trained:
        return (f"at the target the budget buys {budget_gflop:,.0f} reference GFLOP, so recipes.py would train {chosen!r}, "
                f"not the measured {trained!r}: no forecast across a recipe switch")
    near = {choose(recipes, budget_gflop * (1 + sign * SWITCH_MARGIN)).name for sign in (-1, 1)} - {trained}
    if near:
        return (f"at the target the budget buys {budget_gflop:,.0f} reference GFLOP, within {SWITCH_MARGIN:.0%} of the "
                f"threshold of {sorted(near)[0]!r}: a run there may train either recipe (it measures the machine's speed again)")
    return None


def band(fit, x_last: float, x_target: float, per_minute: float) -> list[dict[str, float]]:
    """The fitted curve and its 95% band from the last point to the target (for the figures)."""
    rows = []
    for x in np.exp(np.linspace(math.log(x_last), math.log(x_target), BAND_POINTS)):
        low, high = percentile_interval(fit.predict_replicates(float(x)))
        rows.append({"gflop": float(x), "minutes": float(x) * per_minute, "value": float(fit.predict(x)), "low": low, "high": high})
    return rows


def paired_differences(key: str, fits: dict[str, tuple[Any, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every pair's predicted difference a − b at the target, replicate by replicate."""
    rows = []
    for a, b in combinations(fits, 2):
        (fa, ea), (fb, eb) = fits[a], fits[b]
        diff = fa.predict_replicates(ea["target_gflop"]) - fb.predict_replicates(eb["target_gflop"])
        low, high = percentile_interval(diff)
        better = None if low <= 0 <= high else (a if high < 0 else b)
        rows.append({"question": f"forecast:{key}", "metric": key, "a": a, "b": b, "difference": ea["value"] - eb["value"],
                     "ci95": [low, high], "decided": better, "lower_is_better": True,
                     "method": "independent parametric bootstraps, difference per replicate"})
    return rows


def winner(key: str, label: str, fits: dict[str, tuple[Any, dict[str, Any]]], comparisons: list[dict[str, Any]]) -> dict[str, Any]:
    """The family predicted best in ``key``, decided only when its difference with every other
    forecast family excludes 0."""
    if not fits:
        return {"family": None, "decided": False, "text": f"{label}: no family could be forecast."}
    ranked = sorted(fits, key=lambda f: fits[f][1]["value"])
    best = ranked[0]
    mine = [c for c in comparisons if c["metric"] == key and best in (c["a"], c["b"])]
    decided = len(ranked) > 1 and all(c["decided"] == best for c in mine)
    value = fits[best][1]
    text = (f"{label}: {short(best)} is predicted best ({_num(value['value'])} [{_num(value['ci95'][0])}, {_num(value['ci95'][1])}])"
            if decided else f"{label}: not decided by the forecast" + (f" (best guess {short(best)}, but the intervals of the "
                                                                       "differences include 0)" if len(ranked) > 1 else " (one family forecast)"))
    return {"family": best if decided else None, "best_guess": best, "decided": decided,
            "runner_up": ranked[1] if len(ranked) > 1 else None, "text": text + "."}


def crossings(key: str, label: str, fits: dict[str, tuple[Any, dict[str, Any]]], target: dict[str, Any]) -> list[dict[str, Any]]:
    """Where two fitted curves cross between the end of both measured ranges and the target, with the
    share of bootstrap replicate pairs whose order differs there and at the target."""
    rows = []
    for a, b in combinations(fits, 2):
        (fa, ea), (fb, eb) = fits[a], fits[b]
        s = _grid(target, [(fa, ea), (fb, eb)])
        xa, xb = _gflop_at(s, ea, target), _gflop_at(s, eb, target)
        gap = fa.predict(xa) - fb.predict(xb)  # < 0: a ahead
        changes = np.nonzero(np.sign(gap[1:]) != np.sign(gap[:-1]))[0]
        if not len(changes):
            continue
        at = changes[0] + 1
        leader, trailer = (a, b) if gap[at] < 0 else (b, a)
        start = fa.predict_replicates(float(xa[0])) - fb.predict_replicates(float(xb[0]))
        end = fa.predict_replicates(float(xa[-1])) - fb.predict_replicates(float(xb[-1]))
        share = float(np.mean(np.sign(start) != np.sign(end)))
        unit = "budget minutes" if target["kind"] == "minutes" else "training GFLOP"
        rows.append({"metric": key, "leader": leader, "trailer": trailer, "at": float(s[at]), "unit": unit,
                     "replicate_share": share,
                     "text": f"{short(leader)} is predicted to pass {short(trailer)} in {label} at about {_num(float(s[at]))} {unit} "
                             f"(beyond the measured range; the order changes there in {share:.0%} of the bootstrap replicates)."})
    return rows


def _grid(target: dict[str, Any], fits: list[tuple[Any, dict[str, Any]]]) -> np.ndarray:
    """Budget minutes (or GFLOP) from where both curves were measured to the target, log-spaced."""
    end = float(target["value"])
    if target["kind"] == "minutes":  # a family's last point sits at this share of its target compute
        start = end * max(fit.x_ref / entry["target_gflop"] for fit, entry in fits)
    else:
        start = max(fit.x_ref for fit, _ in fits)
    return np.exp(np.linspace(math.log(start), math.log(end), CROSSING_GRID))


def _gflop_at(s: np.ndarray, entry: dict[str, Any], target: dict[str, Any]) -> np.ndarray:
    """A family's training GFLOP at budget minutes (or GFLOP) ``s``."""
    return entry["target_gflop"] * s / float(target["value"]) if target["kind"] == "minutes" else s


# ----------------------------------------------------------------------------- text

def section_lines(forecast: dict[str, Any]) -> list[str]:
    """The report section (one line each): predictions with intervals, refusals, winners, crossings."""
    if forecast.get("error"):
        return [f"The forecast failed: {forecast['error']}."]
    lines = [f"Method: {forecast['method']}. Dashed lines and shaded bands in the learning-curve figures are these "
             "forecasts, not measurements."]
    for fam, metrics in forecast.get("families", {}).items():
        for key, e in metrics.items():
            label = forecast["metrics"].get(key, key)
            if e["status"] == "forecast":
                fit = e["fit"]
                lines.append(f"{short(fam)}, {label}: predicted {_num(e['value'])} [{_num(e['ci95'][0])}, {_num(e['ci95'][1])}] "
                             f"at {_num(e['target_gflop'])} GFLOP (a measurement there: [{_num(e['pi95'][0])}, {_num(e['pi95'][1])}]; "
                             f"fit over {fit['points']} points: floor E {_num(fit['E'])} [{_num(fit['E_ci95'][0])}, {_num(fit['E_ci95'][1])}], "
                             f"exponent α {_num(fit['alpha'])} [{_num(fit['alpha_ci95'][0])}, {_num(fit['alpha_ci95'][1])}]).")
            else:
                lines.append(f"{short(fam)}, {label}: not forecast — {e['reason']}.")
    lines += [w["text"] for w in forecast.get("winners", {}).values()]
    lines += [c["text"] for c in forecast.get("crossovers", [])]
    return lines


def _num(value: Any) -> str:
    """A forecast's number as every figure of the report is printed (:func:`diffvae.compare.verdicts.fmt`)."""
    return fmt(float(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------- figures

def draw_band(ax, results: dict[str, Any], fam: str, key: str, axis: str, colour) -> None:
    """On a learning-curve panel: the fitted curve past the last point, dashed, and its 95% band,
    shaded, labelled as a forecast (nothing when the family was not forecast)."""
    entry = ((results.get("forecast") or {}).get("families", {}).get(fam) or {}).get(key) or {}
    rows = entry.get("band") or []
    if entry.get("status") != "forecast" or not rows:
        return
    xs = [r[axis] for r in rows]
    ax.plot(xs, [r["value"] for r in rows], linestyle="--", color=colour, label=f"{fam} forecast")
    ax.fill_between(xs, [r["low"] for r in rows], [r["high"] for r in rows], color=colour, alpha=0.15,
                    label=f"{fam} forecast 95%")


def section_heading(forecast: dict[str, Any]) -> str:
    target = forecast.get("target") or {}
    return f"{target.get('label', 'At a larger budget')}: forecast from the learning curves"
