"""The vocabulary of compare's verdicts, below everything that decides: how a figure is printed (:func:`fmt`),
a measured :class:`Figure` with its 95% interval, :func:`decide` (a verdict only where the intervals separate),
:func:`samples_to_decide`, and their texts. Pure functions; the report, the controllability and learning-curve
stages and a family's own claims (the VAE's posterior collapse) read every decision from here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from diffvae.metrics.paired import holm, samples_for_power  # noqa: F401 (holm: re-exported for the claims)

UNDECIDED = "not decided at this budget"
MI_CEILING_TOLERANCE = 0.01  # MI within 1% of log N is at the estimator's ceiling


def fmt(value: Any) -> str:
    """How every number is printed: integers as they are, floats to 3 significant digits (1234.5 → "1230",
    not "1.23e+03"; below 1e-3 in scientific notation, "1.23e-05")."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        rounded = float(f"{value:.3g}")
        if abs(rounded) >= 1000:  # 3 significant digits, written out: 1234.5 → 1230, 999.96 → 1000
            return str(int(rounded))
        return f"{value:.3g}"
    return str(value)


@dataclass(frozen=True)
class Figure:
    """A measured figure: its value, its 95% interval (None = exact, or not measured) and the sample
    size n the interval came from (None = unknown, or a fixed threshold)."""

    value: float
    ci: tuple[float, float] | None = None
    n: int | None = None


def _stored_interval(family_results: dict[str, Any], key: str) -> tuple[float, float] | None:
    ci = family_results.get(f"{key}_ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in ci):
        return (float(ci[0]), float(ci[1]))
    return None


def interval_of(family_results: dict[str, Any], key: str) -> tuple[float, float] | None:
    """The 95% interval of ``key``: ``<key>_ci95``, else ``<key>`` ± 1.96 ``<key>_sem``, else None."""
    stored = _stored_interval(family_results, key)
    if stored is not None:
        return stored
    value, sem = family_results.get(key), family_results.get(f"{key}_sem")
    if isinstance(value, (int, float)) and isinstance(sem, (int, float)) and math.isfinite(sem):
        return (value - 1.959963984540054 * sem, value + 1.959963984540054 * sem)
    return None


def separated(a_ci: tuple[float, float], b_ci: tuple[float, float]) -> bool:
    """True when two closed intervals do not overlap."""
    return a_ci[1] < b_ci[0] or b_ci[1] < a_ci[0]


def decide(a: Figure, b: Figure, lower_is_better: bool) -> str:
    """"a" or "b" (the better figure) when the intervals separate — or by value when either figure
    has no interval — else "undecided". With intervals, the better one is the one whose interval
    lies on the better side (for FID that is the bias-corrected one, not always the lower value)."""
    if a.ci is None or b.ci is None:
        if a.value == b.value:
            return "undecided"
        return "a" if (a.value < b.value) == lower_is_better else "b"
    if not separated(a.ci, b.ci):
        return "undecided"
    return "a" if (a.ci[1] < b.ci[0]) == lower_is_better else "b"


def samples_to_decide(a: Figure, b: Figure) -> int | None:
    """Sample size per family at which a two-sided 5% test of the difference of the two figures has 80% power
    (:func:`diffvae.metrics.paired.samples_for_power`), if the true difference is the printed one: each
    interval's half-width h gives one unit's spread σ = h √n / 1.96, and σ² = σ_a² + σ_b² (independent
    figures; a figure with no interval or no n, a fixed threshold, adds none). None when the figures coincide
    or nothing has a size."""
    def variance(f: Figure) -> float:
        return 0.0 if f.ci is None or f.n is None else ((f.ci[1] - f.ci[0]) / 2.0 / 1.959963984540054) ** 2 * f.n

    return samples_for_power(a.value - b.value, math.sqrt(variance(a) + variance(b)))


def figure_text(f: Figure) -> str:
    """"412.3 [380.1, 450.2]" (or just the value without an interval)."""
    return fmt(f.value) + (f" [{fmt(f.ci[0])}, {fmt(f.ci[1])}]" if f.ci is not None else "")


def undecided_text(label: str, names: tuple[str, str], a: Figure, b: Figure, unit: str) -> str:
    """"not decided at this budget (FID: VAE 412 [380, 450] vs DDPM 430 [400, 470]; about 2,400
    samples per family would decide it)"."""
    n = samples_to_decide(a, b)
    need = f"; about {n:,} {unit} would decide it" if n is not None else ""
    return f"{UNDECIDED} ({label}: {names[0]} {figure_text(a)} vs {names[1]} {figure_text(b)}{need})"


def mi_ceiling_note(mutual_info: Any, ceiling: Any) -> str:
    """" (at the log N = 5.30 ceiling of the estimator: a lower bound)" when the MI estimate is within
    1% of its ceiling log N (the He et al. estimator can never exceed it), else ""."""
    if not isinstance(mutual_info, (int, float)) or not isinstance(ceiling, (int, float)) or ceiling <= 0:
        return ""
    if mutual_info < (1.0 - MI_CEILING_TOLERANCE) * ceiling:
        return ""
    return f" (at the log N = {ceiling:.2f} ceiling of the estimator: a lower bound)"


# ----------------------------------------------------------------------------- differences with intervals
# Used where a claim compares two figures that were measured apart (no per-item pairing stored):
# the statistics module's paired tests replace these where the paired data exist.

Z95 = 1.959963984540054


def _halves(f: Figure) -> tuple[float, float] | None:
    """(below, above) half-widths of a figure's 95% interval; None without one, or when the interval
    does not contain its own figure (it is then for another quantity, and cannot be combined)."""
    if f.ci is None or not f.ci[0] <= f.value <= f.ci[1]:
        return None
    return f.value - f.ci[0], f.ci[1] - f.value


def unpaired_difference(a: Figure, b: Figure) -> tuple[float, tuple[float, float], float] | None:
    """a − b with its 95% interval and a two-sided p-value, treating a and b as independent normal
    estimates: each side's half-width is the quadrature sum of the two intervals' half-widths on the
    sides that move the difference that way (below: a's lower and b's upper). The p-value uses the
    half-width on the side of 0. None when either figure has no usable interval."""
    ha, hb = _halves(a), _halves(b)
    if ha is None or hb is None:
        return None
    diff = a.value - b.value
    below, above = math.hypot(ha[0], hb[1]), math.hypot(ha[1], hb[0])
    se = (below if diff > 0 else above) / Z95
    p = 1.0 if diff == 0 else 0.0 if se == 0 else math.erfc(abs(diff) / se / math.sqrt(2.0))
    return diff, (diff - below, diff + above), p


def comparison_entry(question: str, metric: str, names: tuple[str, str], a: Figure, b: Figure, lower_is_better: bool,
                     method: str = "difference of two independent 95% intervals (normal, half-widths in quadrature)",
                     p_adjusted: float | None = None) -> dict[str, Any]:
    """A ``results["comparisons"]`` entry (the shared schema) for figure a − figure b, from
    :func:`unpaired_difference`; ``decided`` names the better one when the (adjusted) p-value is
    below 0.05, else None; without usable intervals the difference has no interval and nothing is decided."""
    found = unpaired_difference(a, b)
    diff, ci, p = found if found is not None else (a.value - b.value, None, None)
    p_used = p if p_adjusted is None else p_adjusted
    decided = None
    if p_used is not None and p_used < 0.05 and diff != 0:
        decided = "a" if (diff < 0) == lower_is_better else "b"
    n = [f.n for f in (a, b) if f.n is not None]
    return {"question": question, "metric": metric, "a": names[0], "b": names[1], "difference": diff,
            "ci95": list(ci) if ci is not None else None, "p_value": p_used, "decided": decided, "method": method,
            "lower_is_better": lower_is_better, "n": min(n) if n else None, "n_to_decide": None}


def store_comparisons(results: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    """Put entries into ``results["comparisons"]``, replacing earlier ones for the same (question, a, b)."""
    keys = {(e["question"], e["a"], e["b"]) for e in entries}
    kept = [e for e in results.get("comparisons") or [] if (e.get("question"), e.get("a"), e.get("b")) not in keys]
    results["comparisons"] = kept + entries


def p_text(p: float) -> str:
    """"p = 0.0123", or "p < 0.001" below that."""
    return "p < 0.001" if p < 0.001 else f"p = {fmt(p)}"


def comparison_text(entry: dict[str, Any]) -> str:
    """"7.8 [2.1, 13.5], p = 0.007": an entry's difference, its interval and p-value ("7.8, no interval" without one)."""
    ci = entry.get("ci95")
    if ci is None:
        return f"{fmt(entry['difference'])}, no interval"
    return f"{fmt(entry['difference'])} [{fmt(ci[0])}, {fmt(ci[1])}], {p_text(entry['p_value'])}"
