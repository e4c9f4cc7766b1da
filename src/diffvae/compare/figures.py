"""The report's plots, drawn from ``results.json`` alone (so a report can be redrawn from it)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffvae.runs import atomic_write_bytes

PARTS_TOLERANCE = 1e-6  # relative: parts that miss their total by more get an explicit remainder


def spec_or_none(fam: str):
    """The family's spec, or None for a name no longer registered (a report redrawn from old results)."""
    from diffvae.errors import DiffvaeError
    from diffvae.families import get_family

    try:
        return get_family(fam).spec()
    except DiffvaeError:
        return None


def color(fam: str) -> str | None:
    spec = spec_or_none(fam)
    return spec.color if spec is not None else None


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
        note = f"parts from {k} of the {n if n is not None else '?'} images (their bound {total:.4g})"
    parts = [(label, sign * float(r[key])) for key, label, sign in _bound_parts(fam) if r.get(key) is not None]
    remainder = total - sum(v for _, v in parts)
    if parts and abs(remainder) > PARTS_TOLERANCE * max(1.0, abs(total)):
        parts.append(("remainder (not itemised)", remainder))
    return BpdStack(parts, total, images, note)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure as a PNG, atomically, and close it."""
    _save(fig, path)


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    return _pyplot()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def draw_all(out: Path, results: dict[str, Any]) -> dict[str, str]:
    """Draw every plot the results allow; returns {name: relative path}."""
    from diffvae.compare.curves import bpd_vs_compute, fid_vs_compute  # the learning curves at equal compute

    drawn = {}
    (out / "figures").mkdir(parents=True, exist_ok=True)
    plots = [("quality_vs_nfe", quality_vs_nfe), ("bpd_bars", bpd_bars), ("training_curves", training_curves)]
    plots += [(extra.name, lambda r, path, extra=extra, fam=fam: extra.draw(r, fam, path)) for fam, extra in _extra_figures(results)]
    plots += [("fid_vs_compute", fid_vs_compute), ("bpd_vs_compute", bpd_vs_compute)]
    if results.get("control"):
        from diffvae.compare.control import guidance_figure

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
    base = {"quality_vs_nfe": "Quality against NFE", "bpd_bars": "Bits/dim and the bound's parts",
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
        text = f"{stack.total:.3f}" + (f"\n{stack.note}" if stack.note else "")
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
