"""The report's plots, drawn from ``results.json`` alone (so a report can be redrawn from it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffvae.compare.control import guidance_figure
from diffvae.compare.curves import bpd_vs_compute, fid_vs_compute
from diffvae.compare.style import _pyplot, _save, color, pyplot, save_figure, spec_or_none  # noqa: F401 (re-exported)

PARTS_TOLERANCE = 1e-6  # relative: parts that miss their total by more get an explicit remainder


def _bound_parts(fam: str) -> tuple[tuple[str, str, int], ...]:
    """(key, label, sign) of the family's bound: bpd = Σ sign · part (its ``spec.bound_parts``)."""
    spec = spec_or_none(fam)
    return spec.bound_parts if spec is not None else ()


@dataclass
class BpdStack:
    """A family's bound split into signed parts that add up to ``total``, the bound on the same images."""

    parts: list[tuple[str, float]]  # (label, signed bits/dim), Σ = total
    total: float
    images: int | None  # how many held-out images the parts (and total) average over
    note: str | None  # set when the parts are not over all the images of the headline bpd


def bpd_stack(results: dict[str, Any], fam: str) -> BpdStack | None:
    """The signed parts of a family's bound (its ``spec.bound_parts``), over the same images as their total.

    If the evaluation gave the parts on a subset only (``bound_parts_n`` of ``bpd_n`` images, with
    their own total ``bpd_full_subset``), the total is that subset's and ``note`` says so. Parts
    that do not add up to the total (a part not listed here) get a "remainder" part, so the bars
    always sum to the total they are drawn against."""
    r = (results.get("families") or {}).get(fam) or {}
    if r.get("bpd") is None:
        return None
    n, k = r.get("bpd_n"), r.get("bound_parts_n")
    total, images, note = float(r["bpd"]), n, None
    if k is not None and k != n and r.get("bpd_full_subset") is not None:
        total, images = float(r["bpd_full_subset"]), k
        note = f"parts from {k} of the {n if n is not None else '?'} images (their bound {total:.3g})"
    parts = [(label, sign * float(r[key])) for key, label, sign in _bound_parts(fam) if r.get(key) is not None]
    remainder = total - sum(v for _, v in parts)
    if parts and abs(remainder) > PARTS_TOLERANCE * max(1.0, abs(total)):
        parts.append(("remainder (not itemised)", remainder))
    return BpdStack(parts, total, images, note)


def draw_all(out: Path, results: dict[str, Any]) -> dict[str, str]:
    """Draw every plot the results allow; returns {name: relative path}."""
    drawn = {}
    (out / "figures").mkdir(parents=True, exist_ok=True)
    plots = [("pareto", pareto), ("quality_vs_nfe", quality_vs_nfe), ("bpd_bars", bpd_bars), ("training_curves", training_curves)]
    plots += [(extra.name, lambda r, path, extra=extra, fam=fam: extra.draw(r, fam, path)) for fam, extra in _extra_figures(results)]
    plots += [("fid_vs_compute", fid_vs_compute), ("bpd_vs_compute", bpd_vs_compute)]
    if results.get("control"):
        plots.append(("guidance", guidance_figure))
    for name, fn in plots:
        rel = f"figures/{name}.png"
        try:
            if fn(results, out / rel):
                drawn[name] = rel
        except Exception as e:  # a figure that cannot be drawn is reported; the report and the other figures are written
            import traceback

            results.setdefault("figure_errors", {})[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            with (out / "errors.log").open("a") as log:
                log.write(f"[figure {name}]\n{traceback.format_exc()}\n")
    return drawn


def _extra_figures(results: dict[str, Any]) -> list[tuple[str, Any]]:
    """(family, ExtraFigure) of every registered family in the results, in their order."""
    names = list(dict.fromkeys([*(results.get("families_requested") or []), *results.get("families", {})]))
    specs = [(fam, spec_or_none(fam)) for fam in names]
    return [(fam, extra) for fam, spec in specs if spec is not None for extra in spec.extra_figures]


def captions(results: dict[str, Any]) -> dict[str, str]:
    """Figure name -> caption for the report."""
    base = {"pareto": "Sample quality against generation cost (log–log): each family with its 95% intervals, "
                      "the Pareto front (no family both better and cheaper) drawn, bits/dim annotated",
            "quality_vs_nfe": "Quality against NFE", "bpd_bars": "Bits/dim and the bound's parts",
            "training_curves": "Training curves", "fid_vs_compute": "Learning curves: FID against training compute",
            "bpd_vs_compute": "Learning curves: bits/dim against training compute",
            "guidance": "Controllability: conditional accuracy and FID against the guidance scale w"}
    if (results.get("forecast") or {}).get("families"):  # diffvae.compare.forecasts draws its bands on the curves
        for name in ("fid_vs_compute", "bpd_vs_compute"):
            base[name] += " (dashed lines and shaded bands past the last point: forecasts, not measurements)"
    return {**base, **{extra.name: extra.caption for _, extra in _extra_figures(results)}}


def quality_vs_nfe(results: dict[str, Any], path: Path) -> bool:
    """FID against NFE: each sampler of every swept family as a curve (stochastic samplers dotted),
    and each family sampled in one pass as a star."""
    fams = results.get("families", {})
    curves = {f: r.get("sweep") for f, r in fams.items() if r.get("sweep")}
    one_pass = {f: r for f, r in fams.items() if spec_or_none(f) is not None and not spec_or_none(f).iterative}
    if not curves and not one_pass:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for fam, rows in curves.items():
        spec = spec_or_none(fam)
        samplers = spec.samplers if spec is not None else ()
        stochastic = spec.stochastic_samplers if spec is not None else ()
        for sampler in sorted({r["sampler"] for r in rows}):
            pts = sorted((r["nfe"], r["fid"]) for r in rows if r["sampler"] == sampler and r.get("fid") is not None)
            if pts:
                marker = MARKERS[samplers.index(sampler) % len(MARKERS)] if sampler in samplers else "o"
                ax.plot(*zip(*pts), marker=marker, color=color(fam), label=f"{fam} {sampler}",
                        linestyle=":" if sampler in stochastic else "-")
    for fam, r in one_pass.items():
        if r.get("fid") is not None:
            nfe = r.get("nfe") or 1
            ax.scatter([nfe], [r["fid"]], color=color(fam), marker="*", s=150,
                       label=f"{fam} (1 decode)" if nfe == 1 else f"{fam} ({nfe} NFE)", zorder=5)
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per sample (NFE)")
    ax.set_ylabel(f"FID ({results.get('feature_space', 'diffvae features')})")
    ax.set_title("Sample quality against generation cost")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


MARKERS = ("o", "s", "^", "D", "v", "P")  # by the sampler's place in the family's spec.samplers


def bpd_bars(results: dict[str, Any], path: Path) -> bool:
    """Per family: the positive parts stacked up from 0 (left), the negative ones stacked down from
    there (right, hatched), ending at the total; the bound's 95% interval as an error bar."""
    stacks = {f: bpd_stack(results, f) for f in results.get("families", {})}
    stacks = {f: st for f, st in stacks.items() if st is not None}
    if not stacks:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(stacks)
    for i, fam in enumerate(names):
        stack, r = stacks[fam], results["families"][fam]
        top = 0.0
        for label, value in [p for p in stack.parts if p[1] >= 0] + [p for p in stack.parts if p[1] < 0]:
            negative = value < 0
            ax.bar(i + (0.18 if negative else -0.18), value, width=0.36, bottom=top, label=f"{fam}: {label}" + (" (−)" if negative else ""),
                   alpha=0.85, hatch="//" if negative else None)
            top += value
        ax.scatter([i], [stack.total], color="black", marker="_", s=600, zorder=5)
        ci = r.get("bpd_ci95")
        if stack.note is None and isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
            ax.errorbar([i], [r["bpd"]], yerr=[[r["bpd"] - ci[0]], [ci[1] - r["bpd"]]], color="black", capsize=4, zorder=6)
        text = f"{stack.total:.3g}" + (f"\n{stack.note}" if stack.note else "")
        ax.annotate(text, (i, stack.total), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    totals = [stacks[f].total for f in names]
    if min(totals) > 0 and max(totals) / min(totals) > 20:
        ax.set_yscale("log")  # an undertrained bound can be orders of magnitude above the others
    ax.margins(y=0.15)
    ax.set_ylabel("bits/dim (upper bound on −log₂ p(x) / D)")
    ax.set_title("Likelihood bounds and their parts (held-out; hatched parts are subtracted)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    _save(fig, path)
    return True


def training_curves(results: dict[str, Any], path: Path) -> bool:
    curves = {f: t.get("curve") for f, t in results.get("training", {}).items() if t.get("curve")}
    if not curves:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    for ax, (fam, curve) in zip(axes[0], curves.items()):
        steps, losses = zip(*curve)
        ax.plot(steps, losses, color=color(fam))
        ax.set_title(f"{fam}: {results['training'][fam].get('objective', '')}", fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    _save(fig, path)
    return True


# ----------------------------------------------------------------------------- the Pareto figure

def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, both coordinates to be minimised (cost, loss):
    p is dominated when some q has q ≤ p in both and q < p in one. Sorted by cost (then loss); a point
    repeated exactly is on the front once per copy."""
    def dominated(i: int) -> bool:
        (c, l) = points[i]
        return any(qc <= c and ql <= l and (qc < c or ql < l) for qc, ql in points)

    return sorted((i for i in range(len(points)) if not dominated(i)), key=lambda i: points[i])


def _quality_metric(results: dict[str, Any]) -> tuple[str, str]:
    """(key, axis label) of the quality figure: the one "best sample quality" decided on, else FID."""
    entry = (results.get("best") or {}).get("sample quality") or {}
    key = entry.get("metric") if isinstance(entry, dict) else None
    fams = results.get("families", {}).values()
    if not key or not any(r.get(key) is not None for r in fams):
        key = "fid"
    label = entry.get("label") if isinstance(entry, dict) and entry.get("metric") == key and entry.get("label") else key.upper()
    return key, label


def _error(value: float, ci: Any) -> tuple[float, float] | None:
    """(below, above) of a stored interval around value, or None without one that contains it."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or None in ci or not ci[0] <= value <= ci[1]:
        return None
    return value - ci[0], ci[1] - value


def _bpd_note(r: dict[str, Any], fam: str) -> str:
    spec = spec_or_none(fam)
    if r.get("bpd") is None:
        return ""
    return f"{r['bpd']:.3g} bits/dim" + ("" if spec is None or spec.bpd_is_bound else " (ODE estimate)")


def pareto_points(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per family with a quality figure and ms/sample: {x, y, xerr, yerr, note} (errors None without an interval)."""
    key, _ = _quality_metric(results)
    points = {}
    for fam, r in results.get("families", {}).items():
        x, y = r.get("ms_per_sample"), r.get(key)
        if x is None or y is None:
            continue
        points[fam] = {"x": float(x), "y": float(y), "xerr": _error(x, r.get("ms_per_sample_ci95")),
                       "yerr": _error(y, r.get(f"{key}_ci95")), "note": _bpd_note(r, fam)}
    return points


def pareto(results: dict[str, Any], path: Path) -> bool:
    """Quality (lower is better) against ms/sample on log axes: each family a point with its 95%
    intervals as error bars and its bits/dim annotated, and the Pareto front (the families no other is
    both better and cheaper than) as a dashed step line. The quality axis is linear when a figure or an
    interval end is not positive (a log axis could not show it)."""
    points = pareto_points(results)
    if len(points) < 1:
        return False
    key, label = _quality_metric(results)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (fam, p) in enumerate(points.items()):
        xerr = None if p["xerr"] is None else [[p["xerr"][0]], [p["xerr"][1]]]
        yerr = None if p["yerr"] is None else [[p["yerr"][0]], [p["yerr"][1]]]
        ax.errorbar([p["x"]], [p["y"]], xerr=xerr, yerr=yerr, fmt="o", color=color(fam), capsize=3, markersize=7,
                    label=f"{fam}: {p['note']}" if p["note"] else fam)  # bits/dim in the legend: it never overlaps
        ax.annotate(fam, (p["x"], p["y"]), textcoords="offset points", xytext=(8, 6 - 11 * (i % 4)), fontsize=8)
    names = list(points)
    front = [names[i] for i in pareto_front([(points[f]["x"], points[f]["y"]) for f in names])]
    ax.step([points[f]["x"] for f in front], [points[f]["y"] for f in front], where="post", linestyle="--", color="black",
            alpha=0.6, label="Pareto front")
    ax.set_xscale("log")
    lows = [p["y"] - (p["yerr"][0] if p["yerr"] else 0.0) for p in points.values()]
    if min(lows) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("generation cost, ms/sample (log)")
    ax.set_ylabel(f"{label} ({results.get('feature_space', 'diffvae features')}; lower is better)")
    ax.set_title("Which family to pick: quality against cost")
    ax.legend(fontsize=7, title="family: bits/dim", title_fontsize=7)
    ax.grid(alpha=0.3, which="both")
    ax.margins(0.15)
    _save(fig, path)
    return True
