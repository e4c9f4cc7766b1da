"""The vocabulary of compare's verdicts, below everything that decides: how a figure is printed (:func:`fmt`),
a measured :class:`Figure` with its 95% interval, :func:`decide` (a verdict only where the intervals separate),
:func:`samples_to_decide`, and their texts. Pure functions; the report, the controllability and learning-curve
stages and a family's own claims (the VAE's posterior collapse) read every decision from here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

UNDECIDED = "not decided at this budget"
MI_CEILING_TOLERANCE = 0.01  # MI within 1% of log N is at the estimator's ceiling


def fmt(value: Any) -> str:
    """How every number is printed: integers as they are, floats to 4 significant digits."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return f"{value:.4g}"
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
    """Sample size per family at which the intervals would just separate, if the centres stay and
    the half-widths h shrink ∝ 1/√n:  h_a √(n_a / n) + h_b √(n_b / n) = |c_a − c_b|  ⇒

        n = ((h_a √n_a + h_b √n_b) / |c_a − c_b|)²,  rounded up

    (= n · ((h_a + h_b) / |c_a − c_b|)² for equal n). A figure with no interval or no n (a fixed
    threshold) contributes no width. None when the centres coincide or nothing has a size."""
    def width(f: Figure) -> float:
        return 0.0 if f.ci is None or f.n is None else (f.ci[1] - f.ci[0]) / 2.0 * math.sqrt(f.n)

    def centre(f: Figure) -> float:
        return f.value if f.ci is None else (f.ci[0] + f.ci[1]) / 2.0

    gap = abs(centre(a) - centre(b))
    total = width(a) + width(b)
    if gap == 0 or total == 0:
        return None
    return math.ceil((total / gap) ** 2 * (1 - 1e-12))  # the factor: 800.0000000001 is 800, not 801


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
